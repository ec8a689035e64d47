"""Verdicts per language: the two-process Python check on real HumanEval tasks, MBPP/CRUXEval-style asserts, the
plain-data codec, and MultiPL-E programs built and run in the sandbox for every installed toolchain."""
import gzip
import json
import math

import pytest

from dscoder.errors import UserError
from dscoder.eval import _pydriver as drv
from dscoder.eval.runners import LANGS, _body_end, check_program, check_python, toolchain_available


@pytest.fixture(scope="module")
def humaneval(benchmarks_dir):
    with gzip.open(benchmarks_dir / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def _he(p, body):
    return check_python(p["prompt"] + body, p["test"] + f"\ncheck({p['entry_point']})\n", p["entry_point"],
                        prelude=p["prompt"])


@pytest.mark.parametrize("task", [0, 32, 38])  # 32 uses the prompt's `poly`, 38 unseeded random inputs
def test_humaneval_canonical_passes_and_broken_fails(humaneval, task):
    p = humaneval[task]
    v = _he(p, p["canonical_solution"])
    assert v.passed, (v.status, v.details)
    assert _he(p, "    return None\n").status == "failed"


def test_codec_round_trip_keeps_types_and_specials():
    vals = [None, True, 0, -(10 ** 5000), 1.5, math.inf, -0.0, 1 + 2j, "é\x00", b"\xff", bytearray(b"a"),
            [1, (2, 3)], {"a": {1, 2}}, frozenset({3}), range(1, 9, 2), {(1, 2): [None]}]
    for v in vals:
        back = drv.decode(json.loads(json.dumps(drv.encode(v))))
        assert back == v and type(back) is type(v), v
    nan = drv.decode(drv.encode(float("nan")))
    assert math.isnan(nan)
    with pytest.raises(drv.Unserializable):
        drv.encode(object())
    loop = []
    loop.append(loop)
    with pytest.raises((drv.Unserializable, RecursionError)):
        drv.encode(loop)


def test_mbpp_cruxeval_exceptions_and_generators():
    prog = ("def add(a, b):\n    return a + b\ndef sq(n):\n    return (i * i for i in range(n))\n"
            "def pick(d, k):\n    if k not in d:\n        raise ValueError(k)\n    return d[k]\n")
    test = ("assert add(1, 2) == 3\nassert add('a', 'b') == 'ab'\nassert list(sq(4)) == [0, 1, 4, 9]\n"
            "assert pick({'x': 1}, 'x') == 1\ntry:\n    pick({}, 'y')\n    assert False\nexcept ValueError:\n    pass\n")
    v = check_python(prog, test, ["add", "sq", "pick"])
    assert v.passed, v.details
    assert check_python("def f(s):\n    return s[::-1]\n", "assert f('abc') == 'cba'", "f").passed
    assert not check_python("def f(s):\n    return s\n", "assert f('abc') == 'cba'", "f").passed
    assert not check_python("def f(:\n", "assert f(1) == 1", "f").passed  # a syntax error fails
    with pytest.raises(UserError):
        check_python("x = 1", "assert True", "not an identifier")


def test_body_end_skips_strings_and_comments():
    src = 'int main() {\n  f("}{"); // }\n  char c = \'}\'; /* } */\n  if (x) { y(); }\n}\n'
    assert _body_end(src, r"int\s+main\s*\(") == len(src) - 2


SOLUTIONS = {  # HumanEval/0 (has_close_elements) completed by hand for each MultiPL-E language
    "cpp": "    for (size_t i = 0; i < numbers.size(); i++)\n        for (size_t j = i + 1; j < numbers.size(); j++)\n"
           "            if (std::abs(numbers[i] - numbers[j]) < threshold) return true;\n    return false;\n",
    "java": "        for (int i = 0; i < numbers.size(); i++)\n            for (int j = i + 1; j < numbers.size(); j++)\n"
            "                if (Math.abs(numbers.get(i) - numbers.get(j)) < threshold) return true;\n"
            "        return false;\n",
    "js": "  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
          "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}\n",
    "ts": "  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
          "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}\n",
    "php": "    for ($i = 0; $i < count($numbers); $i++)\n        for ($j = $i + 1; $j < count($numbers); $j++)\n"
           "            if (abs($numbers[$i] - $numbers[$j]) < $threshold) return true;\n    return false;\n}\n",
    # the stored C# prompt comments out its own signature line, so the completion restates it
    "cs": "    public static bool HasCloseElements(List<float> numbers, float threshold) {\n"
          "        for (int i = 0; i < numbers.Count; i++)\n            for (int j = i + 1; j < numbers.Count; j++)\n"
          "                if (Math.Abs(numbers[i] - numbers[j]) < threshold) return true;\n        return false;\n",
    "sh": "    local -a a=($1)\n    for ((i=0; i<${#a[@]}; i++)); do for ((j=i+1; j<${#a[@]}; j++)); do\n"
          "        if awk -v x=${a[i]} -v y=${a[j]} -v t=$2 'BEGIN{d=x-y; if(d<0)d=-d; exit !(d<t)}'; then\n"
          "            echo true; return; fi\n    done; done\n    echo false\n",
    "go": "    for i := range numbers {\n        for j := i + 1; j < len(numbers); j++ {\n"
          "            d := numbers[i] - numbers[j]\n            if d < 0 { d = -d }\n"
          "            if d < threshold { return true }\n        }\n    }\n    return false\n}\n",
    "rs": "    for i in 0..numbers.len() {\n        for j in (i + 1)..numbers.len() {\n"
          "            if (numbers[i] - numbers[j]).abs() < threshold { return true; }\n        }\n    }\n    false\n",
}


@pytest.mark.parametrize("lang", list(LANGS))
def test_multipl_e_correct_solution_passes(benchmarks_dir, lang):
    if not toolchain_available(lang):
        v = check_program(lang, "")
        assert v.status == "skipped" and LANGS[lang].package in v.details
        pytest.skip(f"{lang} toolchain not installed")
    with gzip.open(benchmarks_dir / "multipl-e" / f"humaneval-{lang}-reworded.jsonl.gz", "rt") as f:
        rec = json.loads(f.readline())
    v = check_program(lang, rec["prompt"] + SOLUTIONS[lang] + rec["tests"])
    assert v.passed, (v.status, v.details)
    if lang in ("js", "rs"):  # a wrong answer fails, and so does exiting 0 before the checks
        wrong = SOLUTIONS[lang].replace("return true", "return false")
        assert check_program(lang, rec["prompt"] + wrong + rec["tests"]).status == "failed"
        early = {"js": "process.exit(0);\n", "rs": "std::process::exit(0);\n"}[lang]
        v = check_program(lang, rec["prompt"] + early + SOLUTIONS[lang] + rec["tests"])
        assert v.status == "failed" and "nonce" in v.details


def test_unknown_language_and_python_redirect():
    with pytest.raises(UserError):
        check_program("cobol", "")
    with pytest.raises(UserError):
        check_program("python", "")
