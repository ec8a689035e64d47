"""`dscoder data web` end to end on the embedded default crawl, as a user runs it (real subprocesses): iteration 2
recovers the code domain the first classifier missed; dedup, decontamination, shards, stats and report; rerun and
SIGKILL + rerun give the same bytes; bad input is one error line, exit 2, nothing written."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dscoder.data.web.default_corpus import CODE_GROUPS
from dscoder.data.web.pages import plan_inputs, read_pages

BENCH_WORDS = "zeta omega kappa sigma lambda theta epsilon gamma delta alpha beta iota"
FAST = ["--buckets", "200000", "--workers", "2"]


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dscoder.cli", "data", "web", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def extra_pool(tmp_path_factory, web_corpus) -> tuple[Path, Path]:
    """A JSONL pool beside the WARC: an exact copy, a near copy and a contaminated copy of Python pages, and the
    benchmark file the contaminated one matches."""
    (unit,) = plan_inputs([web_corpus["pool"]], "--pool")
    py = [p for p in read_pages(unit)[0] if web_corpus["labels"][p.url] == "python"]
    words = py[1].text.split(" ")
    words[len(words) // 2] = "changed"
    half_and_half = py[2].text[: len(py[2].text) // 2] + "\n" + BENCH_WORDS + "\n" + py[3].text[len(py[3].text) // 2:]
    rows = [{"url": "https://docs.pylib.test/library/copy-of-0.html", "text": py[0].text},
            {"url": "https://docs.pylib.test/library/near-copy-of-1.html", "text": " ".join(words)},
            {"url": "https://docs.pylib.test/library/leak.html", "text": half_and_half}]   # near copy of neither
    d = tmp_path_factory.mktemp("extra")
    (d / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "bench.jsonl").write_text(json.dumps({"task_id": "Leak/0", "prompt": BENCH_WORDS}) + "\n")
    return d / "extra.jsonl", d / "bench.jsonl"


def _args(web_corpus, extra_pool, out) -> list:
    return [web_corpus["pool"], extra_pool[0], "--seed-pages", web_corpus["seed"], "--out", out,
            "--decontaminate", extra_pool[1], *FAST]


@pytest.fixture(scope="module")
def run(tmp_path_factory, web_corpus, extra_pool) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("web") / "out"
    proc = _cli(*_args(web_corpus, extra_pool, out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_end_to_end_recovers_the_missed_code_domain_in_iteration_two(run, web_corpus):
    out, proc = run
    assert sorted(p.name for p in out.iterdir()) == ["_done", "drops.jsonl", "part-00000.parquet", "report.md",
                                                    "report.png", "stats.json"]
    assert "iteration 1:" in proc.stderr and "iteration 2:" in proc.stderr
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column_names == ["url", "domain", "text", "score", "iteration"]
    rows = table.to_pylist()
    code = {u for u, g in web_corpus["labels"].items() if g in CODE_GROUPS}
    assert {r["url"] for r in rows} == code                       # every code page, nothing else
    by_group = {}
    for r in rows:
        by_group.setdefault(web_corpus["labels"][r["url"]], set()).add(r["iteration"])
        assert r["domain"] == r["url"].split("/")[2] and r["score"] >= 0.5
    assert by_group["python"] == {1} and 2 in by_group["rust-std"] and 2 in by_group["rust-book"]
    stats = json.loads((out / "stats.json").read_text())
    it1, it2 = stats["iterations"]
    assert it1["domains_marked"] == 2 and "rustlang.test/book/" in it1["annotated"] and it1["added_to_seed"] > 0
    assert it2["recalled"] > it1["recalled"] and it2["positives"] == it1["positives"] + it1["added_to_seed"]
    assert stats["read"]["pool"]["dropped"] == {"http_status": 1, "no_text": 1, "not_html": 1}
    assert stats["stages"]["dedup"]["dropped"] == {"exact_duplicate": 1}
    assert stats["stages"]["near_dedup"]["dropped"] == {"near_duplicate": 1}
    assert stats["stages"]["decontam"]["dropped"] == {"benchmark:bench": 1}
    assert stats["output"]["pages"] == len(rows) == 160 and stats["settings"]["recall"]["fasttext"]["dim"] == 256
    drops = [json.loads(line) for line in (out / "drops.jsonl").read_text().splitlines()]
    assert {(d["stage"], d["reason"]) for d in drops} >= {
        ("read", "http_status"), ("dedup", "exact_duplicate"), ("near_dedup", "near_duplicate"),
        ("decontam", "benchmark:bench")}
    leak = [d for d in drops if d["stage"] == "decontam"]
    assert leak[0]["path"].endswith("/leak.html") and leak[0]["detail"] == "bench Leak/0"
    report = (out / "report.md").read_text()
    assert "## Iterations" in report and "rustlang.test/book/" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_is_a_corpus_pretraining_reads(run):
    from dscoder.data.corpus import iter_documents

    out, _ = run
    texts = list(iter_documents([out]))             # the folder, as `dscoder pretrain web/` reads it
    assert len(texts) == 160 and all(t.strip() for t in texts)


def test_rerun_skips_done_shards_and_writes_the_same_bytes(run, web_corpus, extra_pool):
    out, _ = run
    shard = out / "part-00000.parquet"
    before, mtime = shard.read_bytes(), shard.stat().st_mtime_ns
    proc = _cli(*_args(web_corpus, extra_pool, out))
    assert proc.returncode == 0, proc.stderr
    assert shard.read_bytes() == before and shard.stat().st_mtime_ns == mtime


def test_sigkill_then_rerun_gives_the_uninterrupted_bytes(tmp_path, run, web_corpus, extra_pool):
    clean = (run[0] / "part-00000.parquet").read_bytes()
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dscoder.cli", "data", "web",
                             *map(str, _args(web_corpus, extra_pool, out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while "iteration 1:" not in (line := proc.stderr.readline()) and time.monotonic() < deadline and line:
        pass
    os.killpg(proc.pid, signal.SIGKILL)                  # the driver and its worker processes
    proc.wait()
    assert not (out / "stats.json").exists()
    again = _cli(*_args(web_corpus, extra_pool, out))
    assert again.returncode == 0, again.stderr
    assert (out / "part-00000.parquet").read_bytes() == clean
    assert not (out / ".work").exists() and not (out / ".lock").exists()


def _bad_inputs(tmp: Path, corpus: dict) -> list[tuple[list, str]]:
    (tmp / "fake.warc.gz").write_bytes(b"not a warc at all\n" * 10)
    (tmp / "notes.txt").write_text("x")
    (tmp / "pooldir").mkdir()
    (tmp / "pooldir" / "p.warc.gz").write_bytes((Path(corpus["pool"])).read_bytes())
    seed, pool = corpus["seed"], corpus["pool"]
    return [
        ([pool, "--seed-pages", tmp / "fake.warc.gz"], f"--seed-pages: no usable page in {tmp / 'fake.warc.gz'}"),
        ([tmp / "fake.warc.gz", "--seed-pages", seed], "SRC: no usable page"),
        ([tmp / "missing.warc", "--seed-pages", seed], "does not exist"),
        (["--pool", tmp / "notes.txt", "--seed-pages", seed], "not a crawl file"),
        ([pool, "--seed-pages", seed, "--domain-threshold", "2"], "--domain-threshold"),
        ([pool, "--seed-pages", seed, "--epoch", "nan"], "--epoch"),
        ([pool, "--seed-pages", seed, "--seed", "-1"], "--seed"),
        ([pool, "--seed-pages", seed, "--decontaminate", tmp / "nobench.jsonl"], "benchmark file not found"),
        ([pool, "--seed-pages", seed, "--tokenizer", tmp / "notok"], "tokenizer folder"),
        (["--seed-pages", seed], "required: SRC"),
    ]


def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, web_corpus):
    for args, msg in _bad_inputs(tmp_path, web_corpus):
        out = tmp_path / "out"
        proc = _cli(*args, "--out", out, *FAST)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and msg in lines[0], \
            (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not out.exists(), args
    proc = _cli(tmp_path / "pooldir", "--seed-pages", web_corpus["seed"], "--out", tmp_path / "pooldir" / "o")
    assert proc.returncode == 2 and "inside the input folder" in proc.stderr


def test_a_locked_output_folder_is_refused(tmp_path, web_corpus):
    from dscoder.durable import lock_run_folder

    out = tmp_path / "out"
    lock = lock_run_folder(out)
    try:
        proc = _cli(web_corpus["pool"], "--seed-pages", web_corpus["seed"], "--out", out, *FAST)
    finally:
        lock.release()
    assert proc.returncode == 2 and f"in use by pid {os.getpid()}" in proc.stderr
    assert list(out.iterdir()) == []


def test_a_pool_with_nothing_to_recall_gives_one_empty_shard(tmp_path, web_corpus):
    from dscoder.data.web.classify import FastTextParams
    from dscoder.data.web.pipeline import WebConfig, build_web
    from dscoder.data.web.recall import RecallConfig

    prose = tmp_path / "prose.jsonl"
    words = "the council voted on the budget and the market closed higher after the storm passed the coast " * 6
    prose.write_text("".join(json.dumps({"url": f"https://news.test/{i}", "text": f"{i} {words}"}) + "\n"
                             for i in range(40)))
    cfg = WebConfig(RecallConfig(fasttext=FastTextParams(buckets=100_000)))
    stats = build_web([web_corpus["seed"]], [prose], tmp_path / "out", cfg, workers=1, log=lambda m: None)
    assert stats["output"]["pages"] == 0 and len(stats["iterations"]) == 1
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 0


def test_one_worker_in_process_writes_the_bytes_of_two_workers(tmp_path, run, web_corpus, extra_pool):
    from dscoder.data.web.classify import FastTextParams
    from dscoder.data.web.pipeline import WebConfig, build_web
    from dscoder.data.web.recall import RecallConfig

    cfg = WebConfig(RecallConfig(fasttext=FastTextParams(buckets=200_000)), benchmarks=(str(extra_pool[1]),))
    build_web([web_corpus["seed"]], [web_corpus["pool"], extra_pool[0]], tmp_path / "out", cfg, workers=1,
              log=lambda m: None)
    assert (tmp_path / "out" / "part-00000.parquet").read_bytes() == (run[0] / "part-00000.parquet").read_bytes()


def test_text_spool_reads_back_by_index_and_slice(tmp_path):
    from dscoder.data.web.pipeline import TextSpool

    spool = TextSpool(tmp_path / "s")
    texts = ["héllo", "", "wörld\n", "\U0001f600 x"]
    for t in texts:
        spool.append(t)
    assert len(spool) == 4 and list(spool) == texts and spool[1:3] == texts[1:3] and spool[-1] == texts[-1]
    with pytest.raises(IndexError):
        spool[4]
