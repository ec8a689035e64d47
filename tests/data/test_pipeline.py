"""`dscoder data build` end to end: ordering, near-dedup, decontamination, bad inputs, crash safety,
worker-count independence and Ray == local. Everything runs on real files, real processes."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dscoder.cli import main as cli_main
from dscoder.data.pipeline import main

ROOT = Path(__file__).resolve().parents[2]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _py(name: str, seed: int, imports: str = "", lines: int = 30) -> str:
    """A plausible Python module whose body is unique to (name, seed)."""
    rng = random.Random(f"{name}{seed}")
    body = "\n".join(f"    total{i} = value * {rng.randrange(1000)} + len('{name}{rng.randrange(10**6)}')"
                     for i in range(lines))
    return f'{imports}"""Module {name}."""\n\n\ndef {name}_fn(value):\n    """Compute {name}."""\n{body}\n    return value\n'


def _app_repo(seed: int = 0) -> dict[str, str]:
    """Known graph: main -> service -> {models <-> repo_db} (a cycle), main -> util; C: app.c -> app.h."""
    return {
        "pkg/__init__.py": f'"""The pkg package, variant {seed}."""\n',
        "pkg/main.py": _py("main", seed, "from pkg import service\nfrom pkg.util import helper\n"),
        "pkg/service.py": _py("service", seed, "from pkg.models import Model\n"),
        "pkg/models.py": _py("models", seed, "from pkg import repo_db\n"),
        "pkg/repo_db.py": _py("repo_db", seed, "from pkg.models import Model\n"),
        "pkg/util.py": _py("util", seed),
        "native/app.c": '#include "app.h"\n' + "".join(f"int fn{i}(int x) {{ return x * {i + seed}; }}\n"
                                                      for i in range(12)),
        "native/app.h": "".join(f"int fn{i}(int x);\n" for i in range(12)),
        "docs/guide.md": f"# Guide {seed}\n\nThis guide explains how the service layer uses the models.\n",
    }


def _rows(out: Path) -> list[dict]:
    rows = []
    for shard in sorted(out.glob("part-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def _build(src, out: Path, *extra: str) -> dict:
    assert main([*map(str, src if isinstance(src, list) else [src]), "--out", str(out), "--workers", "1",
                 "--no-decontaminate", *extra]) == 0
    return json.loads((out / "stats.json").read_text())


def test_dependency_order_components_and_path_comments(tmp_path):
    _write(tmp_path / "src" / "app", _app_repo())
    stats = _build(tmp_path / "src", tmp_path / "out")
    rows = _rows(tmp_path / "out")
    groups = sorted(sorted(r["paths"]) for r in rows)
    assert groups == [["docs/guide.md"], ["native/app.c", "native/app.h"],
                      ["pkg/__init__.py", "pkg/main.py", "pkg/models.py", "pkg/repo_db.py", "pkg/service.py",
                       "pkg/util.py"]]
    py = next(r for r in rows if "pkg/main.py" in r["paths"])
    pos = {p: i for i, p in enumerate(py["paths"])}
    for before, after in [("pkg/service.py", "pkg/main.py"), ("pkg/util.py", "pkg/main.py"),
                          ("pkg/models.py", "pkg/service.py"), ("pkg/__init__.py", "pkg/main.py")]:
        assert pos[before] < pos[after], (before, after)      # every edge outside the models<->repo_db cycle
    for r in rows:
        assert r["text"].startswith(f"# {r['paths'][0]}\n")
        assert all(f"# {p}\n" in r["text"] for p in r["paths"])
        assert r["bytes"] == len(r["text"].encode())
        assert len(r["languages"]) == len(r["paths"])
    assert stats["stages"]["repo_order"] == {"in": 9, "samples": 3, "dropped": {},
                                             "unit": "files read in (screened out or not), components out"}
    assert stats["output"]["files_per_language"] == {"c": 2, "markdown": 1, "python": 6}
    assert (tmp_path / "out" / "report.png").stat().st_size > 1000
    assert "| repo_order | 9 | 3 |" in (tmp_path / "out" / "report.md").read_text()


def test_near_duplicate_repo_dropped_original_kept(tmp_path):
    orig = _app_repo()
    copy = {p: t.replace("total3 ", "renamed3 ").replace("total17 ", "x17 ") for p, t in orig.items()}
    copy["pkg/util.py"] += "\n# a comment only the copy has\n"
    _write(tmp_path / "src" / "a_original", orig)
    _write(tmp_path / "src" / "b_copy", copy)
    _write(tmp_path / "src" / "c_other", _app_repo(seed=5))
    stats = _build(tmp_path / "src", tmp_path / "out")
    rows = _rows(tmp_path / "out")
    py = sorted(r["repo"] for r in rows if "pkg/main.py" in r["paths"])
    assert py == ["a_original", "c_other"]
    assert stats["stages"]["near_dedup"]["dropped"]["near_duplicate"] >= 1
    drops = [json.loads(x) for x in (tmp_path / "out" / "drops.jsonl").read_text().splitlines()]
    near = [d for d in drops if d["stage"] == "near_dedup"]
    assert near and all(d["repo"] == "b_copy" and d["detail"].startswith("kept a_original:") for d in near)


def test_humaneval_solution_is_decontaminated(tmp_path, benchmarks_dir):
    he = benchmarks_dir / "humaneval" / "HumanEval.jsonl.gz"
    with gzip.open(he, "rt") as f:
        task = [json.loads(line) for line in f][33]
    _write(tmp_path / "src" / "r", {"solutions/sort_third.py": task["prompt"] + task["canonical_solution"],
                                    "clean.py": _py("clean", 0)})
    out = tmp_path / "out"
    assert main([str(tmp_path / "src"), "--out", str(out), "--workers", "1", "--decontaminate", str(he)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["decontam"]["dropped"] == {"benchmark:HumanEval": 1}
    assert stats["decontaminated"] == [{"repo": "r", "path": "solutions/sort_third.py",
                                        "match": f"HumanEval {task['task_id']}"}]
    assert [r["paths"] for r in _rows(out)] == [["clean.py"]]
    assert task["task_id"] in (out / "report.md").read_text()


def test_bad_inputs_are_counted_and_nothing_crashes(tmp_path):
    src = tmp_path / "src"
    repo = src / "messy"
    _write(repo, {"good.py": _py("good", 1), "lib/ok.js": "export const answer = (a, b) => a + b + 42;\n" * 3})
    (repo / "image.py").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (repo / "latin1.py").write_bytes("x = 'caf\xe9 cr\xe8me br\xfbl\xe9e'\n".encode("latin-1") * 5)
    (repo / "huge.py").write_text("x = 1\n" * 40_000)                     # 240 kB > --max-file-bytes 100000
    (repo / "empty.py").write_text("")
    (repo / "model.py").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64
                                   + "\nsize 12345\n")
    (repo / "loop").mkdir()
    os.symlink("..", repo / "loop" / "up")                                  # a symlink loop
    os.symlink("/etc/passwd", repo / "passwd.py")                           # escapes the repository
    good_tar = tmp_path / "tarball.tar.gz"
    _write(tmp_path / "t" / "proj", {"main.py": _py("tarred", 2)})
    with tarfile.open(good_tar, "w:gz") as tf:
        tf.add(tmp_path / "t" / "proj", arcname="proj")
    data = good_tar.read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: len(data) // 2])                              # truncated archive
    stats = _build([src, broken], tmp_path / "out", "--max-file-bytes", "100000")
    read = stats["stages"]["read"]["dropped"]
    for reason in ("binary", "encoding", "too_large", "empty", "lfs_pointer", "symlink_loop", "symlink_escape",
                   "truncated_archive"):
        assert read.get(reason, 0) >= 1, (reason, read)
    kept = sorted(p for r in _rows(tmp_path / "out") for p in r["paths"])
    assert kept == ["good.py", "lib/ok.js"]
    assert "root:" not in json.dumps(_rows(tmp_path / "out"))


def test_output_independent_of_worker_count_and_readable_by_datasets(tmp_path):
    for i in range(4):
        # drops while listing (unknown language) and while reading (a minified line), in every repository
        _write(tmp_path / "src" / f"r{i}", {**_app_repo(seed=i), "notes.xyz": "x\n", "gen.js": "x=1;" * 400})
    _build(tmp_path / "src", tmp_path / "one", "--shard-size", "3")
    assert main([str(tmp_path / "src"), "--out", str(tmp_path / "two"), "--workers", "2", "--no-decontaminate",
                 "--shard-size", "3"]) == 0
    names = sorted(p.name for p in (tmp_path / "one").glob("*.parquet"))
    assert names == [f"part-{i:05d}.parquet" for i in range(4)]              # 12 samples, 3 per shard
    for n in names + ["stats.json", "drops.jsonl"]:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n
    assert len((tmp_path / "one" / "drops.jsonl").read_text().splitlines()) == 8 + 6     # + near and exact dups
    import datasets
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "one" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 12 and set(ds.column_names) == {"repo", "id", "text", "paths", "languages", "bytes"}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    """Killed as soon as the first shard is marked done (over 100 one-sample shards, each fsynced twice, keep the
    build writing long after that), then rerun: same bytes as an uninterrupted build, no leftovers. The killed
    build runs forked workers (a single-threaded driver, OMP_NUM_THREADS=1), which hold its open files, the lock
    on --out among them: they must die with it, or the rerun would find the folder in use."""
    for i in range(40):
        _write(tmp_path / "src" / f"r{i:02d}", _app_repo(seed=i))
    _build(tmp_path / "src", tmp_path / "ref", "--shard-size", "1", "--no-syntax-check")
    cmd = [sys.executable, "-m", "dscoder.cli", "data", "build", str(tmp_path / "src"), "--out",
           str(tmp_path / "out"), "--workers", "2", "--no-decontaminate", "--shard-size", "1", "--no-syntax-check"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = tmp_path / "out" / "_done"
    deadline = time.monotonic() + 120
    while not (done.is_dir() and any(done.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.001)
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and (_proc_stat(int(p)) or ("", 0))[1] == proc.pid]
    assert len(workers) == 2 and all(b"spawn_main" not in Path(f"/proc/{w}/cmdline").read_bytes() for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any((_proc_stat(w) or ("Z",))[0] != "Z" for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    alive = [w for w in workers if (_proc_stat(w) or ("Z",))[0] != "Z"]    # else gone, or dead and not yet reaped
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers outlived their driver"
    assert not (tmp_path / "out" / "stats.json").exists()                     # the run really was cut short
    n_done = len(list(done.glob("*.json")))
    assert 1 <= n_done < 100, n_done                                          # killed early in the shard phase
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"garbage from a torn write")
    rerun = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    ref = sorted(p.name for p in (tmp_path / "ref").glob("*.parquet"))
    assert ref == sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) and len(ref) > 100
    for n in ref + ["stats.json", "drops.jsonl"]:
        assert (tmp_path / "ref" / n).read_bytes() == (tmp_path / "out" / n).read_bytes(), n
    assert not list((tmp_path / "out").glob(".*tmp")) and not (tmp_path / "out" / ".work").exists()


def test_ray_executor_matches_local(tmp_path):
    import ray      # in the test extras: an import error must fail this test, not skip it
    for i in range(3):
        _write(tmp_path / "src" / f"r{i}", _app_repo(seed=i))
    _build(tmp_path / "src", tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert main([str(tmp_path / "src"), "--out", str(tmp_path / "ray"), "--executor", "ray",
                     "--no-decontaminate"]) == 0
    finally:
        ray.shutdown()
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert (tmp_path / "ray" / "stats.json").read_text() == (tmp_path / "local" / "stats.json").read_text()


@pytest.mark.parametrize("args, message", [
    (["--languages", "pyhton"], "unknown language"),
    (["--shard-size", "0"], "--shard-size"),
    (["--workers", "0"], "--workers"),
    (["--decontaminate", "/nonexistent/bench.jsonl"], "benchmark file not found"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    _write(tmp_path / "src" / "r", {"a.py": _py("a", 0)})
    out = tmp_path / "out"
    assert cli_main(["data", "build", str(tmp_path / "src"), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_source_is_a_user_error(tmp_path, capsys):
    assert cli_main(["data", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shard_table_from_buffers_equals_arrow_from_lists():
    import pyarrow as pa

    from dscoder.data.document import Sample
    from dscoder.data.shards import _schema, _shard_table
    samples = [Sample("r", "r:0", "héllo\nworld", ["a.py", "b/é.py"], ["python", "python"]),
               Sample("q", "q:1", "", [], []), Sample("s", "s:2", "x", ["c.rs"], ["rust"])]
    texts = [s.text.encode() for s in samples]
    ref = pa.table({"repo": [s.repo for s in samples], "id": [s.id for s in samples],
                    "text": [s.text for s in samples], "paths": [s.paths for s in samples],
                    "languages": [s.languages for s in samples], "bytes": [s.nbytes for s in samples]},
                   schema=_schema())
    table = _shard_table(samples, texts)
    table.validate(full=True)
    assert table.equals(ref)


@pytest.mark.parametrize("where", ["src", "src/r", "src/r/corpus"])
def test_out_inside_a_source_is_refused(tmp_path, capsys, where):
    _write(tmp_path / "src" / "r", {"a.py": _py("a", 0)})
    out = tmp_path / where
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli_main(["data", "build", str(tmp_path / "src"), "--out", str(out), "--no-decontaminate"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is inside the source {tmp_path / 'src'}" in err and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before         # nothing written


def test_no_usable_text_exits_2_and_writes_nothing(tmp_path, capsys):
    repo = tmp_path / "src" / "r"
    _write(repo, {"notes.unknownext": "text\n", "data.json": "{}"})
    (repo / "blob.py").write_bytes(b"\x00\x01binary")
    out = tmp_path / "out"
    assert cli_main(["data", "build", str(tmp_path / "src"), "--out", str(out), "--no-decontaminate",
                     "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "no usable text in" in err and "read: binary 1" in err and "filter: json_yaml_size 1" in err
    assert not out.exists()
    out.mkdir()                                             # an existing (empty) folder is left as it was
    assert cli_main(["data", "build", str(tmp_path / "src"), "--out", str(out), "--no-decontaminate"]) == 2
    assert list(out.iterdir()) == []


def test_size_cap_names_the_sizes(tmp_path):
    _write(tmp_path / "src" / "r", {"big.py": "x = 1\n" * 2000, "ok.py": _py("ok", 0)})
    _build(tmp_path / "src", tmp_path / "out", "--max-file-bytes", "5000")
    drops = [json.loads(x) for x in (tmp_path / "out" / "drops.jsonl").read_text().splitlines()]
    big = next(d for d in drops if d["path"] == "big.py")
    assert (big["reason"], big["detail"]) == ("too_large", "over the size cap (12000 bytes > 5000)")
