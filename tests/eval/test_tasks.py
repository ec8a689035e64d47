"""Benchmark tasks on real rows (tests/fixtures/benchmarks; the full sets only where a test needs every row):
DeepSeek's prompts and post-processing, data lookup (--data, $DSCODER_BENCHMARKS, the hub, one clear error), and
verdicts from the real sandbox (reference solutions pass, wrong ones fail) for HumanEval, MBPP, MultiPL-E,
HumanEval-Infilling and CRUXEval."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dscoder.errors import UserError
from dscoder.eval.runners import toolchain_available
from dscoder.eval.tasks import get_task
from dscoder.eval.tasks.base import truncate_at, with_py_imports
from dscoder.eval.tasks.cruxeval import parse_answer
from dscoder.eval.tasks.fim import SUBSETS
from dscoder.eval.tasks.humaneval import align_base, extract_instruct


def score_all(task, pairs):
    with ThreadPoolExecutor(2) as ex:
        return list(ex.map(lambda pc: task.score(*pc), pairs))


@pytest.fixture(scope="module")
def humaneval(fixture_benchmarks):
    rows = get_task("humaneval").load(fixture_benchmarks)
    return {r["task_id"]: r for r in rows}


# ---------------------------------------------------------------- HumanEval
def test_humaneval_base_prompt_and_postprocess(humaneval):
    task, p = get_task("humaneval"), humaneval["HumanEval/2"]
    pr = task.prompt(p)
    assert pr.kind == "completion" and pr.text == p["prompt"].strip() and pr.max_new_tokens == 500
    assert pr.stop == ("\ndef", "\nclass", "\nif", "\n#", "\nprint")
    raw = "\n    return number % 1.0\n\n\ndef unrelated():\n    pass\n"
    comp = task.postprocess(p, raw)
    assert comp == "    return number % 1.0\n\n"  # the newline strip() removed is taken back out
    assert p["prompt"] + comp == p["prompt"].rstrip() + truncate_at(raw, pr.stop)
    assert align_base("x\n", "y") == "\ny"  # DeepSeek's prompt + "\n" + completion when the text does not fit
    good, bad = score_all(task, [(p, comp), (p, "    return number\n")])
    assert good.passed and good.status == "passed"
    assert not bad.passed and bad.status == "failed"


def test_humaneval_instruct_reattaches_prompt_prefix(humaneval):
    task, p = get_task("humaneval-instruct"), humaneval["HumanEval/38"]  # decode_cyclic needs its helper
    pr = task.prompt(p)
    assert pr.kind == "chat" and pr.text.startswith("Please continue to complete the function. You are not allowed")
    assert f"```python\n{p['prompt']}\n```" in pr.text and task.timeout == 3.0
    reply = ("Sure:\n```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n\n"
             "print(decode_cyclic('abc'))\n```\nDone.\n```python\nother()\n```")
    program = task.postprocess(p, reply)
    assert program.startswith("def encode_cyclic") and "def decode_cyclic" in program and "other()" not in program
    assert not task.postprocess(p, "no code here").count("```")
    assert extract_instruct("def f(x):\n", "nothing") == "def f(x):\n\nnothing"
    good, bad = score_all(task, [(p, program), (p, program.replace("encode_cyclic(encode", "(encode"))])
    assert good.passed, good.details
    assert not bad.passed


def test_py_imports_are_added_only_when_named():
    prog = with_py_imports("def f(x):\n    return math.floor(np.sum(x)) + len(Counter(x))\n")
    assert "import math\n" in prog and "import numpy as np\n" in prog and "from collections import *" in prog
    assert "import heapq" not in with_py_imports("def f():\n    return 1\n")


# ---------------------------------------------------------------- MBPP
@pytest.fixture(scope="module")
def mbpp(fixture_benchmarks):
    task = get_task("mbpp")
    return task, {r["task_id"]: r for r in task.load(fixture_benchmarks)}


def test_mbpp_rows_and_base_prompt(mbpp):
    task, rows = mbpp
    assert sorted(rows) == [11, 12, 17, 56, 101, 245, 367, 510]  # the fixture's test rows (shots excluded)
    assert [s["task_id"] for s in task.shots] == [2, 3, 4]
    pr = task.prompt(rows[11])
    assert pr.text.count("[DONE]") == 3 and pr.text.endswith("[BEGIN]") and pr.stop == ("[DONE]",)
    assert pr.text.startswith("You are an expert Python programmer, and here is your task: " + task.shots[0]["text"])
    assert "\r" not in pr.text and "\t" not in pr.text.split(rows[11]["text"])[0]
    assert task.postprocess(rows[11], "\ndef f():\n    return 1\n[DONE]\nYou are") == "def f():\n    return 1"


def test_mbpp_instruct_prompt(fixture_benchmarks):
    task = get_task("mbpp-instruct")
    rows = task.load(fixture_benchmarks)
    pr = task.prompt(rows[0])
    assert pr.kind == "chat" and pr.text.startswith("Please refer the given examples and generate a python function")
    assert "- Example 3:\n>>> Problem:" in pr.text and pr.text.endswith(">>> Test Cases:\n" +
                                                                         "\n".join(rows[0]["test_list"]) + "\n")
    assert task.postprocess(rows[0], "x\n```python\ndef a():\n    pass\n```") == "def a():\n    pass\n"


def test_mbpp_reference_solutions_pass_and_wrong_fail(mbpp):
    task, rows = mbpp
    ids = [11, 12, 17, 56, 101, 245, 367, 510]  # 367: its test setup builds trees of the solution's Node class
    good = score_all(task, [(rows[i], rows[i]["code"]) for i in ids])
    assert [v.passed for v in good] == [True] * len(ids), [v.details for v in good]
    bad = score_all(task, [(rows[11], "def remove_Occ(s, ch):\n    return s"), (rows[12], "syntax error here"),
                           (rows[367], rows[367]["code"].replace("<= 1", "<= 9"))])
    assert [v.passed for v in bad] == [False] * 3


# ---------------------------------------------------------------- MultiPL-E
ADD = {"cpp": "    return x + y;\n", "java": "        return x + y;\n", "js": "  return x + y;\n}\n",
       "ts": "  return x + y;\n}\n", "php": "    return $x + $y;\n}\n", "cs": "        return x + y;\n",
       "sh": "    echo $(( $1 + $2 ))\n", "py": "    return x + y\n", "go": "    return x + y\n}\n",
       "rs": "    x + y\n"}


def test_multipl_e_hand_written_solutions(fixture_benchmarks):
    task = get_task("multipl-e")
    installed = [lang for lang in ADD if toolchain_available(lang)]
    assert "py" in installed
    probs = {p["task_id"]: p for p in task.load(fixture_benchmarks / "multipl-e") if p["lang"] in installed}
    jobs = []
    for lang in installed:
        p = probs[f"{lang}/HumanEval_53_add"]
        wrong = ADD[lang].replace("+ y", "- y").replace("+ $y", "- $y").replace("+ $2", "- $2")
        jobs += [(p, ADD[lang]), (p, wrong)]
    verdicts = score_all(task, jobs)
    for (p, _), v, want in zip(jobs, verdicts, [True, False] * len(installed)):
        assert v.passed is want, (p["task_id"], want, v.status, v.details)
        assert want or v.status == "failed", (p["task_id"], v.status)  # wrong answers fail at runtime, not build


def test_multipl_e_prompts_and_repairs(fixture_benchmarks):
    task = get_task("multipl-e", languages=["ts", "cs"])
    probs = {p["task_id"]: p for p in task.load(fixture_benchmarks)}
    assert sorted(probs) == ["cs/HumanEval_0_has_close_elements", "cs/HumanEval_53_add",
                             "ts/HumanEval_0_has_close_elements", "ts/HumanEval_53_add"]
    one = task.load(fixture_benchmarks / "multipl-e" / "humaneval-java-reworded.jsonl.gz")  # a file: its language
    assert {p["lang"] for p in one} == {"java"} and len(one) == 2
    ts = probs["ts/HumanEval_53_add"]
    assert task.prompt(ts).text == ts["prompt"] and "\nconsole.log" in task.prompt(ts).stop
    assert task.postprocess(ts, "  return x + y;\n}\nconsole.log(add(1, 2));") == "  return x + y;\n}"
    cs = probs["cs/HumanEval_53_add"]  # the shipped C# prompt comments out its own signature; repaired on load
    assert cs["prompt"].rstrip().splitlines()[-1] == "    public static long Add(long x, long y) {"
    with pytest.raises(UserError, match="unknown MultiPL-E language"):
        get_task("multipl-e", languages=["cobol"])
    with pytest.raises(UserError, match="multipl-e only"):
        get_task("humaneval", languages=["cpp"])


# ---------------------------------------------------------------- HumanEval-Infilling
@pytest.mark.parametrize("benchmark", list(SUBSETS))
def test_infilling_official_rows_reference_passes_and_wrong_fails(benchmark, fixture_benchmarks):
    task = get_task(benchmark)
    rows = task.load(fixture_benchmarks)
    prefix = {"fim-single-line": "SingleLineInfilling", "fim-multi-line": "MultiLineInfilling",
              "fim-random-span": "RandomSpanInfilling", "fim-random-span-light": "RandomSpanInfillingLight"}[benchmark]
    assert rows and all(r["task_id"].startswith(prefix + "/HumanEval/") for r in rows)
    r = rows[0]
    pr = task.prompt(r)
    assert pr.kind == "fim" and pr.prefix == r["prompt"] and pr.suffix == r["suffix"]
    wrong = r["canonical_solution"].replace("return", "return not", 1) if "return" in r["canonical_solution"] \
        else "    return None\n"
    verdicts = score_all(task, [(r, r["canonical_solution"]), (r, wrong), (r, "")])
    assert [v.passed for v in verdicts] == [True, False, False], [v.details for v in verdicts]


def test_single_line_layout_postprocess_and_exact_match(fixture_benchmarks):
    task = get_task("fim-single-line")
    rows = {r["task_id"]: r for r in task.load(fixture_benchmarks)}
    r = rows["SingleLineInfilling/HumanEval/0/L1"]
    # the official layout: the middle is a whole line WITH its newline; the suffix starts on the next line
    assert r["canonical_solution"] == "        for idx2, elem2 in enumerate(numbers):\n"
    assert r["prompt"].endswith("\n") and not r["suffix"].startswith("\n")
    assert task.prompt(r).stop == ("\n",) and task.timeout == 3.0
    raw = "        for idx2, elem2 in enumerate(numbers):\n            junk that is cut\n"
    comp = task.postprocess(r, raw)
    assert comp == r["canonical_solution"] and task.exact_match(r, comp) is True
    assert task.exact_match(r, "  for idx2, elem2 in enumerate(numbers):  \n") is True  # whitespace ignored
    assert task.exact_match(r, "        for idx2, e2 in enumerate(numbers):\n") is False
    assert task.exact_match(r, task.postprocess(r, "\n" + raw)) is False  # the FIRST generated line counts
    assert get_task("fim-multi-line").exact_match(r, comp) is None  # exact match is a single-line metric
    equivalent = "        for idx2, elem2 in enumerate(list(numbers)):\n"  # not an exact match, yet it runs right
    verdict = task.score(r, equivalent)
    assert verdict.passed and task.exact_match(r, equivalent) is False


def test_infilling_full_sets_have_the_official_counts(benchmarks_dir):
    counts = {b: len(get_task(b).load(benchmarks_dir)) for b in SUBSETS}
    assert counts == {"fim-single-line": 1033, "fim-multi-line": 5815, "fim-random-span": 1640,
                      "fim-random-span-light": 164}
    ids = [r["task_id"] for r in get_task("fim-single-line").load(benchmarks_dir)]
    assert ids[0] == "SingleLineInfilling/HumanEval/0/L0" and len(set(ids)) == 1033


# ---------------------------------------------------------------- CRUXEval
@pytest.fixture(scope="module")
def crux(fixture_benchmarks):
    rows = get_task("cruxeval-o").load(fixture_benchmarks)
    return {r["task_id"]: r for r in rows}


def test_cruxeval_output_prediction(crux):
    task = get_task("cruxeval-o")
    ids = ["sample_0", "sample_1", "sample_2", "sample_100", "sample_799"]
    pr = task.prompt(crux["sample_0"])
    assert pr.text.endswith(f"[PYTHON]\n{crux['sample_0']['code']}\nassert f({crux['sample_0']['input']}) == ??\n"
                            "[/PYTHON]\n[ANSWER]\n") and pr.stop == ("[/ANSWER]",)
    answers = [task.postprocess(crux[i], f"assert f({crux[i]['input']}) == {crux[i]['output']}\n[/ANSWER]")
               for i in ids]
    assert answers == [crux[i]["output"] for i in ids]
    forged = "type('Eq', (), {'__eq__': lambda s, o: True})()"  # an always-equal object must not pass
    verdicts = score_all(task, [(crux[i], a) for i, a in zip(ids, answers)]
                         + [(crux["sample_0"], "[(4, 1)]"), (crux["sample_1"], forged), (crux["sample_2"], "")])
    assert [v.passed for v in verdicts] == [True] * len(ids) + [False] * 3, [v.details for v in verdicts]


def test_cruxeval_input_prediction(crux):
    task = get_task("cruxeval-i")
    ids = ["sample_0", "sample_1", "sample_3"]
    pr = task.prompt(crux["sample_1"])
    assert pr.text.endswith(f"assert f(??) == {crux['sample_1']['output']}\n[/PYTHON]\n[ANSWER]\n")
    answers = [task.postprocess(crux[i], f"assert f({crux[i]['input']}) == {crux[i]['output']}") for i in ids]
    assert answers == [crux[i]["input"] for i in ids]
    verdicts = score_all(task, [(crux[i], a) for i, a in zip(ids, answers)] + [(crux["sample_0"], "[1, 2]")])
    assert [v.passed for v in verdicts] == [True, True, True, False], [v.details for v in verdicts]
    assert parse_answer("assert f(1, 'a)') == 3", "input") == "1, 'a)'"
    assert parse_answer("garbage == 5", "output") == "5"


def test_data_from_env_folder(fixture_benchmarks, monkeypatch):
    monkeypatch.setenv("DSCODER_BENCHMARKS", str(fixture_benchmarks))
    assert [r["task_id"] for r in get_task("humaneval").load()] == ["HumanEval/0", "HumanEval/2", "HumanEval/38",
                                                                     "HumanEval/53"]
    assert len(get_task("multipl-e", languages=["py", "go"]).load()) == 4


def test_missing_data_is_one_clear_error_without_waiting_for_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("DSCODER_BENCHMARKS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        get_task("cruxeval-o").load()
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "cruxeval/cruxeval.jsonl" in msg and "--data DIR" in msg and "DSCODER_BENCHMARKS=DIR" in msg
    assert "cruxeval-org/cruxeval" in msg and "not reachable" in msg
    monkeypatch.setenv("DSCODER_BENCHMARKS", str(tmp_path))  # a folder without the file: same error, says so
    with pytest.raises(UserError, match="lacks it"):
        get_task("humaneval").load()


def test_full_sets_load_with_deepseeks_rows(benchmarks_dir):
    assert len(get_task("humaneval").load(benchmarks_dir)) == 164
    mbpp = get_task("mbpp")
    assert [r["task_id"] for r in mbpp.load(benchmarks_dir)] == list(range(11, 511))
    assert [s["task_id"] for s in mbpp.shots] == [2, 3, 4]
    assert len(get_task("cruxeval-o").load(benchmarks_dir)) == 800
    assert len(get_task("multipl-e", languages=["cpp"]).load(benchmarks_dir)) == 161


def test_bad_data_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_task("humaneval").load(tmp_path / "nope.jsonl")
    bad = tmp_path / "HumanEval.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    with pytest.raises(UserError, match="lacks field"):
        get_task("humaneval").load(bad)
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        get_task("humaneval").load(tmp_path)
    bad.write_bytes(b'{"task_id": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(UserError, match="cannot read"):
        get_task("humaneval").load(bad)
    with pytest.raises(UserError, match="cannot find HumanEval.jsonl.gz under"):
        get_task("humaneval").load(tmp_path / "..")
    with pytest.raises(UserError, match="unknown benchmark"):
        get_task("apps")
