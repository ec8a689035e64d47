"""Near-dedup sees whole repositories: a fork cannot escape through exact dedup or a sample-size cut, and the
output does not depend on how repositories are cut into work units or on the worker count."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dscoder.data.pipeline import BuildConfig, build

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str, seed: int, imports: str = "", lines: int = 40) -> str:
    rng = random.Random(f"{name}/{seed}")
    body = "\n".join(f"    acc{i} = acc{i - 1 if i else ''}value * {rng.randrange(10**6)} + {rng.randrange(10**6)}"
                     .replace("accvalue", "value") for i in range(lines))
    return f'{imports}"""Module {name}."""\n\n\ndef {name}(value):\n{body}\n    return acc{lines - 1}\n'


def _project(seed: int) -> dict[str, str]:
    """A Python package (one dependency component) plus a README (a sample of its own)."""
    files = {"proj/__init__.py": f'"""Project {seed}."""\n', "README.md": f"# Project {seed}\n\nIt computes.\n"}
    for i in range(8):
        imp = f"from proj.m{i - 1} import m{i - 1}\n" if i else ""
        files[f"proj/m{i}.py"] = _module(f"m{i}", seed, imp)
    return files


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dscoder.cli", "data", "build", *args, "--no-decontaminate"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def _fork(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    original = _project(1)
    fork = dict(original)
    fork["proj/m5.py"] = original["proj/m5.py"] + "# the one line the fork added\n"
    _write(src / "a_original", original)
    _write(src / "b_fork", fork)
    _write(src / "c_other", _project(2))
    return src


def test_fork_with_one_added_line_is_removed_whole(tmp_path):
    src = _fork(tmp_path)
    out = tmp_path / "out"
    run = _cli(str(src), "--out", str(out), "--workers", "2")
    assert run.returncode == 0, run.stderr
    rows = _rows(out)
    assert sorted({r["repo"] for r in rows}) == ["a_original", "c_other"]
    assert not any("the one line the fork added" in r["text"] for r in rows)
    # the original keeps its import chain whole: one sample, in dependency order
    pkg = next(r for r in rows if r["repo"] == "a_original" and "proj/m0.py" in r["paths"])
    assert pkg["paths"] == [f"proj/m{i}.py" for i in range(8)]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["near_dedup"]["dropped"] == {"near_duplicate": 3}      # the fork's chain, __init__, README
    drops = [json.loads(x) for x in (out / "drops.jsonl").read_text().splitlines()]
    near = [d for d in drops if d["stage"] == "near_dedup"]
    assert {d["repo"] for d in near} == {"b_fork"} and all(d["detail"].startswith("kept a_original:") for d in near)
    # exact dedup ran after near-dedup: nothing was left for it to remove
    assert stats["stages"]["dedup"]["dropped"] == {}


def test_fork_cut_by_max_sample_bytes_is_still_removed(tmp_path):
    """--max-sample-bytes cuts after near-dedup: the fork's longer file would shift every cut after it."""
    src = _fork(tmp_path)
    sizes = sorted(len(t.encode()) for t in _project(1).values())
    out = tmp_path / "out"
    run = _cli(str(src), "--out", str(out), "--workers", "1", "--max-sample-bytes", str(2 * sizes[-1] + 10))
    assert run.returncode == 0, run.stderr
    rows = _rows(out)
    assert sorted({r["repo"] for r in rows}) == ["a_original", "c_other"]
    pieces = [r for r in rows if r["repo"] == "a_original" and r["paths"][0].startswith("proj/")]
    assert len(pieces) >= 3 and [p for r in pieces for p in r["paths"]][-1] == "proj/m7.py"


@pytest.mark.parametrize("edit, stage", [("def broken(:\n", "quality"), ("x = '" + "y" * 1200 + "'\n", "filter")])
def test_fork_whose_edit_fails_a_screen_is_still_removed(tmp_path, edit, stage):
    """The edited file leaves the fork (syntax error, 1200-character line), which would cut the fork's chain in
    two; near-dedup must still see the chain whole."""
    src = tmp_path / "src"
    original = _project(1)
    fork = {p: t + "# fork\n" for p, t in original.items()}      # no file is an exact duplicate
    fork["proj/m4.py"] += edit
    _write(src / "a_original", original)
    _write(src / "b_fork", fork)
    out = tmp_path / "out"
    run = _cli(str(src), "--out", str(out), "--workers", "1")
    assert run.returncode == 0, run.stderr
    fork_paths = {p for r in _rows(out) if r["repo"] == "b_fork" for p in r["paths"]}
    assert not fork_paths & {f"proj/m{i}.py" for i in range(8)}, fork_paths     # no piece of its chain survives
    drops = [json.loads(x) for x in (out / "drops.jsonl").read_text().splitlines()]
    assert [(d["repo"], d["path"]) for d in drops if d["stage"] == stage] == [("b_fork", "proj/m4.py")]
    near = [d for d in drops if d["stage"] == "near_dedup"]
    assert [(d["repo"], d["detail"]) for d in near] == [("b_fork", "kept a_original:a_original:2")]


def test_shared_file_is_removed_from_the_later_repository_only(tmp_path):
    """Exact dedup still works at file level on what near-dedup kept: first occurrence in build order wins."""
    src = tmp_path / "src"
    shared = _module("vendored_helper", 7)
    _write(src / "a", {**_project(3), "tools/helper.py": shared})
    b = _project(4)
    b["proj/m3.py"] = "from lib.helper import vendored_helper\n" + b["proj/m3.py"]     # in b's import chain
    _write(src / "b", {**b, "lib/helper.py": shared})
    out = tmp_path / "out"
    run = _cli(str(src), "--out", str(out), "--workers", "1")
    assert run.returncode == 0, run.stderr
    paths = {(r["repo"], p) for r in _rows(out) for p in r["paths"]}
    assert ("a", "tools/helper.py") in paths and ("b", "lib/helper.py") not in paths
    drops = [json.loads(x) for x in (out / "drops.jsonl").read_text().splitlines()]
    assert [(d["repo"], d["path"]) for d in drops if d["stage"] == "dedup"] == [("b", "lib/helper.py")]
    chain = next(r for r in _rows(out) if r["repo"] == "b" and "proj/m3.py" in r["paths"])
    assert chain["paths"] == [f"proj/m{i}.py" for i in range(8)]      # the rest of its component, in order


def test_output_is_independent_of_chunking_and_worker_count(tmp_path):
    """One repository cut into many work units gives the bytes of one unit, for 1 and 2 workers."""
    src = tmp_path / "src"
    _write(src / "big", {**_project(5), **{f"extra/e{i}.py": _module(f"e{i}", 5) for i in range(30)}})
    _write(src / "small", _project(6))
    outs = {}
    for name, chunk, workers in [("whole", 1 << 30, 1), ("cut_1", 4096, 1), ("cut_2", 4096, 2)]:
        outs[name] = tmp_path / name
        build([src], outs[name], BuildConfig(shard_size=4, chunk_bytes=chunk), workers=workers)
    names = sorted(p.name for p in outs["whole"].glob("part-*.parquet"))
    assert len(names) >= 3
    for name in ("cut_1", "cut_2"):
        assert sorted(p.name for p in outs[name].glob("part-*.parquet")) == names
        for n in names + ["stats.json", "drops.jsonl", "report.md"]:
            assert (outs[name] / n).read_bytes() == (outs["whole"] / n).read_bytes(), (name, n)
