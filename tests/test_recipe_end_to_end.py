"""The whole recipe at toy scale, each stage as a user runs it (a real `dscoder` subprocess per verb):

    data build -> tokenizer train -> pretrain -> eval (sandboxed HumanEval on the fixture rows)

Each stage reads only what the previous one wrote, so a change that breaks a hand-off between verbs fails here even
when every verb's own tests pass.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
from safetensors import safe_open

import dscoder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"


def _dscoder(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUTF8": "1"}
    r = subprocess.run([sys.executable, "-m", "dscoder.cli", *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert r.returncode == 0, f"dscoder {' '.join(args[:2])} exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r


def _write_repos(root: Path, n_repos: int = 6) -> None:
    """Small multi-file Python repositories whose files import each other (so dependency order matters)."""
    for r in range(n_repos):
        repo = root / f"repo{r}" / f"pkg{r}"
        repo.mkdir(parents=True)
        (repo / "__init__.py").write_text("")
        (repo / "shapes.py").write_text(textwrap.dedent(f"""\
            import math


            class Circle{r}:
                def __init__(self, radius):
                    self.radius = radius

                def area(self):
                    return math.pi * self.radius ** 2 + {r}

                def scaled(self, k):
                    return Circle{r}(self.radius * k)
            """))
        (repo / "report.py").write_text(textwrap.dedent(f"""\
            from pkg{r}.shapes import Circle{r}


            def total_area(radii):
                shapes = [Circle{r}(x) for x in radii]
                return sum(s.area() for s in shapes)


            def describe(radii, label="run {r}"):
                lines = [f"{{label}}: {{len(radii)}} circles"]
                for x in sorted(radii):
                    lines.append(f"  radius={{x:.2f}} area={{Circle{r}(x).area():.3f}}")
                return "\\n".join(lines)
            """))


def test_data_tokenizer_pretrain_eval(tmp_path):
    src, data, tok, run, ev = (tmp_path / n for n in ("src", "data", "tok", "run", "eval"))
    _write_repos(src)

    _dscoder("data", "build", str(src), "--out", str(data), "--workers", "1", "--no-decontaminate")
    rows = [r for f in sorted(data.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 6                                            # one sample per repository
    sample = rows[0]["text"]
    # Algorithm 1: shapes.py (imported) comes before report.py (importer), each under its path comment
    assert sample.index("shapes.py") < sample.index("report.py") and sample.index("class Circle") < sample.index(
        "def total_area")

    _dscoder("tokenizer", "train", str(data), "--out", str(tok), "--vocab-size", "320")
    tokenizer = dscoder.load_tokenizer(tok)
    assert len(tokenizer) == 320 + 9                                 # learned vocabulary + DeepSeek's 9 specials

    _dscoder("pretrain", "--preset", "tiny", "--tokenizer", str(tok), str(data), "--out", str(run),
             "--steps", "3", "--seq-len", "64", "--batch-size", "2", "--save-every", "3", "--eval-every", "3",
             "--eval-batches", "1", "--heldout-every", "3", "--workers", "1", "--set", "num_hidden_layers=1")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 3
    with safe_open(run / "final" / "model.safetensors", "pt") as f:
        rows_ = f.get_tensor("model.embed_tokens.weight").shape[0]
    assert len(tokenizer) <= rows_ < len(tokenizer) + 64 and rows_ % 64 == 0     # padded as DeepSeek's 32256

    _dscoder("eval", "--benchmark", "humaneval", "--model", str(run / "final"), "--data", str(FIXTURES),
             "--limit", "2", "--max-new-tokens", "8", "--workers", "1", "--out", str(ev), "--device", "cpu")
    summary = json.loads((ev / "summary.json").read_text())
    results = [json.loads(line) for line in (ev / "results.jsonl").read_text().splitlines()]
    assert summary["n_tasks"] == 2 and len(results) == 2
    # a 3-step model writes no correct function: every sample ran in the sandbox and failed there
    assert summary["pass@1"] == 0.0 and summary["statuses"] == {"failed": 2}
    assert all(r["passed"] is False and r["result"].startswith("failed") for r in results)
