"""Executors for the data pipeline: the same stage functions, run inline, on a local process pool, or on Ray.

An executor has one method that matters, `imap(fn, items)`: apply a picklable module-level function to each item
and yield the results **in input order**, pulling items lazily and keeping at most `window` of them in flight.
Ordered results are what make the output independent of the worker count; the bounded window is what keeps
memory flat when `items` is a generator over a large corpus (`multiprocessing.Pool.imap` reads its whole input
ahead). Several `imap`s can be chained from one thread: each pulls its items from the previous one's results.

    with make_executor("local", workers=4) as ex:
        for result in ex.imap(stage, units):
            ...

Ray is optional (`pip install dscoder[ray]`): imported only when `--executor ray` is asked for. When Ray is
already initialised (a cluster address, or a test's `ray.init(num_cpus=2)`) it is used as is; otherwise it is
started locally with `num_cpus=workers` and shut down on close.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from ..errors import UserError


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not Linux
        return os.cpu_count() or 1


class InlineExecutor:
    """Runs everything in the calling process: workers=1, debugging, and the reference for the others."""
    workers = 1

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        return (fn(x) for x in items)

    def close(self) -> None:
        pass

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_method() -> str:
    """How local workers start: "fork" when this process runs a single thread (Linux), else "spawn".

    Forked workers start in milliseconds with the driver's imports and benchmark index already in memory; a
    spawned one starts a fresh interpreter and imports and builds them again (about 0.2 CPU-s each). Forking a
    process whose other threads may hold locks can deadlock the child (Python 3.12 warns about it), so any second
    thread means spawn: numpy's BLAS starts threads at import unless OMP_NUM_THREADS=1 (or
    OPENBLAS_NUM_THREADS=1), and the data stages never use BLAS."""
    try:
        single = len(os.listdir("/proc/self/task")) == 1
    except OSError:                  # not Linux
        single = False
    return "fork" if single and "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _die_with_driver(driver: int) -> None:
    """Worker initializer: the kernel kills this worker when the driver dies (Linux PR_SET_PDEATHSIG). An idle
    worker otherwise waits for work forever, and a forked one would keep the driver's files open, among them
    the lock on --out that a rerun needs."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)          # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):                      # no prctl: not Linux
        return
    if os.getppid() != driver:                             # the driver died before prctl took effect
        os._exit(1)


class LocalExecutor(InlineExecutor):
    """N worker processes, forked or spawned (`start_method`); they die with the driver."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method()),
                                         initializer=_die_with_driver, initargs=(os.getpid(),))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        window = window or 2 * self.workers
        pending: collections.deque[Future] = collections.deque()
        for x in items:
            pending.append(self._pool.submit(fn, x))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(InlineExecutor):
    """The same ordered, windowed map over Ray tasks."""

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'dscoder[ray]' (or `pip install ray`)") from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
        self.workers = int(ray.cluster_resources().get("CPU", workers))
        self._remote: dict[Callable, Any] = {}

    def _remote_fn(self, fn: Callable[[Any], Any]) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._remote[fn]

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], window: int = 0) -> Iterator[Any]:
        window = window or 2 * self.workers
        remote = self._remote_fn(fn)
        pending: collections.deque = collections.deque()
        for x in items:
            pending.append(remote.remote(x))
            if len(pending) >= window:
                yield self._ray.get(pending.popleft())
        while pending:
            yield self._ray.get(pending.popleft())

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def make_executor(kind: str, workers: int | None = None) -> InlineExecutor:
    """"local" (workers=1 runs inline) or "ray"; UserError for anything else or a bad worker count."""
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers!r}")
    if kind == "local":
        return InlineExecutor() if workers == 1 else LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers)
    raise UserError(f"unknown executor {kind!r}; use 'local' or 'ray'")
