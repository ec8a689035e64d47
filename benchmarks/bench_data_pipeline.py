"""Whole-pipeline throughput of `dscoder data build`: MB/s per core and peak memory.

Corpus: the Python standard library plus this venv's site-packages, each top-level package folder one
repository (so Algorithm 1 sees real import graphs), largest first until `--max-mb` of source text. All stages
run, with the default decontamination (HumanEval). MB counts the decoded text that passed the reader.

Target >= 5 MB/s of wall-clock throughput per core with every core busy. The largest repository holds most of
the text, so this measures how well a repository is cut into work units (`data.stages`). Wall-clock figures
count every other process on the machine; the CPU line does not. datatrove is not installed here, so no peer
figure is measured.

    .venv/bin/python benchmarks/bench_data_pipeline.py --workers 2 --max-mb 40
"""
from __future__ import annotations

import argparse
import os
import resource
import sysconfig
import tempfile
import time
from pathlib import Path

from dscoder.data.languages import detect_language
from dscoder.data.pipeline import BuildConfig, build
from dscoder.data.decontam import default_benchmarks


def text_bytes(folder: Path) -> int:
    """Bytes of files the reader would consider (known language), not following symlinks."""
    total = 0
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if detect_language(f):
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


def corpus(max_mb: float) -> tuple[list[Path], int]:
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    folders = [d for r in roots for d in sorted(r.iterdir())
               if d.is_dir() and not d.is_symlink() and d.name not in ("site-packages", "__pycache__")
               and not d.name.endswith((".dist-info", ".egg-info"))]
    sized = sorted(((text_bytes(d), str(d)) for d in folders), reverse=True)
    chosen, total = [], 0
    for size, d in sized:
        if size == 0 or total + size > max_mb * 1e6:
            continue
        chosen.append(Path(d))
        total += size
    return sorted(chosen), total


def _cpu_seconds() -> tuple[float, float]:
    """(driver, joined workers) CPU seconds so far."""
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return ru[0].ru_utime + ru[0].ru_stime, ru[1].ru_utime + ru[1].ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--max-mb", type=float, default=40.0, help="cap on source text (whole corpus: ~300)")
    ap.add_argument("--no-syntax-check", action="store_true", help="skip the tree-sitter screen (quality stage)")
    args = ap.parse_args()
    sources, planned = corpus(args.max_mb)
    cfg = BuildConfig(benchmarks=tuple(str(p) for p in default_benchmarks()), check_syntax=not args.no_syntax_check)
    with tempfile.TemporaryDirectory() as out:
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        stats = build(sources, Path(out), cfg, "local", args.workers)
        wall = time.perf_counter() - t0
        cpu1 = _cpu_seconds()
    driver, kids = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    cpu = driver + kids                      # driver + (joined) workers: immune to other load on the machine
    mb = stats["output"]["input_bytes"] / 1e6
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    st = stats["stages"]
    print(f"corpus: {len(sources)} repositories (stdlib + site-packages folders), {planned / 1e6:.1f} MB planned, "
          f"{st['read']['in']} files read, {mb:.1f} MB decoded text")
    print(f"kept: {stats['output']['samples']} samples, {stats['output']['bytes'] / 1e6:.1f} MB; "
          f"dropped: " + ", ".join(f"{k} {st[k]['in'] - st[k].get('kept', st[k]['in'])}"
                                    for k in ("read", "filter", "dedup", "quality", "decontam", "near_dedup")))
    print(f"syntax check: {'off' if args.no_syntax_check else 'on (tree-sitter)'}")
    print(f"wall {wall:.1f}s with {args.workers} worker(s): {mb / wall:.2f} MB/s, "
          f"{mb / wall / args.workers:.2f} MB/s per core (target >= 5)")
    print(f"CPU time {cpu:.1f}s (driver {driver:.1f}s + workers {kids:.1f}s): {mb / cpu:.2f} MB per CPU-second "
          f"(= MB/s per core on an otherwise idle machine; wall figures suffer when cores are shared)")
    print(f"cores busy: {cpu / (wall * args.workers):.0%} of {args.workers} x wall (driver included)")
    print(f"peak RSS: driver {peak_self:.0f} MiB, largest worker {peak_kids:.0f} MiB")


if __name__ == "__main__":
    main()
