"""Run untrusted programs (model-written code) in a kernel-enforced sandbox: DeepSeek-Coder evaluation (paper
2401.14196 §4.1: HumanEval, MBPP, MultiPL-E executed against tests) done without letting the code touch the host.

Threat model (reliability.md §2): the program may be incompetent (loops, huge allocations, `rm -rf .`), a reward
hacker (exit codes, always-equal objects, verdict forging) or malicious (native code through ctypes). So no defence
lives inside the interpreter; everything below is enforced by the kernel, and the caller computes the verdict.

API (used by `eval/runners.py` and the benchmark tasks)::

    res = run_program(["python3", "main.py"], files={"main.py": b"print(1)"}, limits=Limits(wall_s=3))
    res.status  # "ok" | "timeout" | "memory" | "output_limit" | "error" | "infra_error"
    res.stdout, res.stderr, res.exit_code, res.signal, res.wall_s, res.cpu_s, res.isolation  # "bwrap" | "fallback"
    sandbox_info()  # {"isolation", "cgroup", "python", ...}: what this host gives, for reports

`run_program` is thread-safe and may be called from many threads or processes at once: each call gets its own
uid from a pool (flock'ed lock files), its own cgroup and its own scratch.

What **bwrap** mode gives (the normal mode here; `make setup` installs bubblewrap):
- its own process tree: new PID namespace (the tree dies with its init; `--die-with-parent`), `--new-session`
  (no TIOCSTI into our terminal), no network (`--unshare-net`: not even loopback servers of the host), new IPC/UTS;
- a filesystem made of read-only binds of /usr (and the /bin, /lib symlinks), a small /etc subset, the Python
  prefix and its site-packages, tool prefixes such as rustc's sysroot — never /root, /home, /work; the cwd and /tmp
  are one fresh size-capped tmpfs (`--size`) per run, so nothing written there outlives the run;
- an unprivileged uid (61000 + slot, a different one per concurrent run) so RLIMIT_NPROC really applies: as root,
  bwrap runs privileged (no user namespace, so it can bind the interpreter from /root) and the program drops to
  the pool uid inside with `setpriv` (no capabilities, empty bounding set, no_new_privs: setuid binaries are
  inert); as a normal user, bwrap maps that user into a new user namespace with `--disable-userns` instead. The
  environment is scrubbed to PATH, LANG, HOME=/tmp; bwrap itself starts with an empty environment, and its pid 1
  belongs to root, so /proc/1/environ shows nothing of ours;
- limits: wall time (the parent SIGKILLs the tree), CPU time (RLIMIT_CPU), memory (a memory cgroup when the host
  lets us create one, cgroup v2 or v1; else RLIMIT_AS), processes (RLIMIT_NPROC per uid, plus pids cgroup),
  file size (RLIMIT_FSIZE and the tmpfs size), output bytes (pipes read incrementally; the run is killed at the cap).
What the **fallback** gives (no bwrap, or `DSCODER_SANDBOX=fallback`): a new session, a fresh host temp dir as
cwd, the same scrubbed environment and rlimits, a pool uid when we are root (setpriv), cgroups when writable, and a
kill of the process group and of every process of that uid on exit. It is weaker: the file system and network of
the host are visible (only Unix permissions protect them), and there is no PID namespace. Every result carries
`isolation` so a report can say which one ran.

Verdicts are NOT made here: see `runners.py` (two-process Python checks; nonce + exit status for other languages).
"""
from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from dscoder.errors import UserError

UID_BASE, UID_SLOTS = 61000, 512
LOCK_DIR = Path(tempfile.gettempdir()) / "dscoder-sandbox-uids"
SCRATCH = "/tmp"                 # the program's cwd (and /tmp) inside bwrap
ETC_KEEP = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd",
            "group", "java-17-openjdk", "mono", "php", "ssl", "ca-certificates", "timezone")
STATUSES = ("ok", "timeout", "memory", "output_limit", "error", "infra_error")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. `cpu_s` None: ceil(wall_s) + 1. `address_space_bytes` None: RLIMIT_AS =
    memory_bytes when no memory cgroup holds the run, unlimited when one does (JVM, node, Go reserve far more
    virtual memory than they use, LiveBench#536); 0: always unlimited."""
    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_bytes: int = 2 << 30
    address_space_bytes: int | None = None
    nproc: int = 64
    fsize_bytes: int = 64 << 20
    tmpfs_bytes: int = 256 << 20
    output_bytes: int = 1 << 20

    def __post_init__(self):
        for name in ("wall_s", "memory_bytes", "nproc", "fsize_bytes", "tmpfs_bytes", "output_bytes"):
            if not getattr(self, name) > 0:
                raise UserError(f"sandbox Limits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise UserError(f"sandbox Limits.cpu_s must be > 0 or None, got {self.cpu_s!r}")


@dataclass
class ExecResult:
    """What one run did. stdout/stderr are cut at Limits.output_bytes (the *_truncated flags say so). cpu_s is the
    rusage of the reaped tree: processes that die with the PID namespace are not in it, so treat it as a floor."""
    status: str
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    wall_s: float
    cpu_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = "bwrap"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Mount:
    """A host path bound read-only at `dest` (default: the same path) inside the sandbox."""
    src: str
    dest: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- host probing (cached)
_probe_lock = threading.Lock()
_probe: dict | None = None


def _bwrap_works(bwrap: str) -> bool:
    cmd = _bwrap_prefix(bwrap, tmpfs_bytes=1 << 20) + ["--"] + _drop(UID_BASE + UID_SLOTS - 1) + ["/bin/true"]
    try:
        return subprocess.run(cmd, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _drop(uid: int) -> list[str]:
    """As root: become the pool uid with no capabilities and no way back (setuid bits ignored). Else nothing."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def _cgroup_roots() -> dict[str, Path]:
    """Writable cgroup dirs for our own process: {"v2": dir} or {"memory": dir, "pids": dir} (v1); {} if none."""
    mine = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in (ctrls.split(",") if ctrls else ["v2"]):
            mine[c] = path.lstrip("/")
    base = Path("/sys/fs/cgroup")
    v2 = base / mine.get("v2", "")
    if (base / "cgroup.controllers").exists() and os.access(v2, os.W_OK):
        ctl = (v2 / "cgroup.subtree_control").read_text() if (v2 / "cgroup.subtree_control").exists() else ""
        if "memory" in ctl and "pids" in ctl:
            return {"v2": v2}
    found = {c: base / c / mine[c] for c in ("memory", "pids")
             if c in mine and os.access(base / c / mine[c], os.W_OK)}
    return found if len(found) == 2 else {}


def sandbox_info() -> dict:
    """What isolation this host gives: {"isolation": "bwrap"|"fallback", "cgroup": "v1"|"v2"|None, "python": prefix,
    "root": bool}. Probed once per process; DSCODER_SANDBOX=fallback forces the fallback."""
    global _probe
    with _probe_lock:
        if _probe is None:
            bwrap = shutil.which("bwrap")
            forced = os.environ.get("DSCODER_SANDBOX", "") == "fallback"
            iso = "bwrap" if bwrap and not forced and _bwrap_works(bwrap) else "fallback"
            roots = _cgroup_roots() if os.geteuid() == 0 else {}
            _probe = {"isolation": iso, "bwrap": bwrap, "cgroup": ("v2" if "v2" in roots else "v1") if roots else None,
                      "cgroup_roots": roots, "root": os.geteuid() == 0, "python": sys.base_prefix,
                      "setpriv": shutil.which("setpriv"), "prlimit": shutil.which("prlimit")}
        return dict(_probe)


# ---------------------------------------------------------------- uid pool and cgroups
class _UidSlot:
    """A uid reserved for one run, across threads and processes (an flock on a per-uid lock file)."""

    def __enter__(self) -> int:
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        start = (os.getpid() * 7 + threading.get_ident()) % UID_SLOTS
        for i in range(UID_SLOTS - 1):  # the last slot is kept for probing
            slot = (start + i) % (UID_SLOTS - 1)
            fd = os.open(LOCK_DIR / str(slot), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, UID_BASE + slot
            return self.uid
        raise RuntimeError(f"all {UID_SLOTS} sandbox uids are busy")

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock


def _cgroup_create(roots: Mapping[str, Path], limits: Limits) -> list[Path]:
    """One fresh cgroup per run with memory (incl. tmpfs pages) and pids caps; [] if the host refuses."""
    name = f"dscoder-sbx-{uuid.uuid4().hex[:12]}"
    made: list[Path] = []
    try:
        if "v2" in roots:
            d = roots["v2"] / name
            d.mkdir()
            made.append(d)
            (d / "memory.max").write_text(str(limits.memory_bytes))
            (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
            (d / "pids.max").write_text(str(limits.nproc + 8))
        else:
            for ctrl, fname, value in (("memory", "memory.limit_in_bytes", limits.memory_bytes),
                                       ("pids", "pids.max", limits.nproc + 8)):
                d = roots[ctrl] / name
                d.mkdir()
                made.append(d)
                (d / fname).write_text(str(value))
        return made
    except OSError:
        _cgroup_destroy(made)
        return []


def _cgroup_oom(cgroups: Sequence[Path]) -> bool:
    for d in cgroups:
        for fname, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            try:
                for line in (d / fname).read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key and int(v) > 0:
                        return True
            except (OSError, ValueError):
                pass
    return False


def _cgroup_destroy(cgroups: Sequence[Path]) -> None:
    for d in cgroups:
        for _ in range(50):  # kill stragglers until the cgroup is empty, then remove it
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                break
            for p in pids:
                _kill(p)
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _kill(pid: int, pgroup: bool = False) -> None:
    try:
        (os.killpg if pgroup else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Fallback mode only: SIGKILL every process of the (pool, unprivileged) uid — nothing else runs as it."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == uid:
                    _kill(int(p.name))
            except OSError:
                pass


# ---------------------------------------------------------------- command construction
def _bwrap_prefix(bwrap: str, tmpfs_bytes: int) -> list[str]:
    # As root bwrap runs privileged (no user namespace: the mounts may come from /root) and the program drops to
    # the pool uid inside; as a normal user bwrap maps that user into a new user namespace instead.
    userns = ["--unshare-user", "--disable-userns"] if os.geteuid() != 0 else []
    cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try", *userns,
           "--die-with-parent", "--new-session",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
           "--perms", "0777", "--size", str(tmpfs_bytes), "--tmpfs", SCRATCH, "--chdir", SCRATCH]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), f"/{name}"]
        elif p.is_dir():
            cmd += ["--ro-bind", str(p), f"/{name}"]
    cmd += ["--perms", "0755", "--dir", "/etc"]  # else privileged bwrap makes it 0700: alternatives unreachable
    for name in ETC_KEEP:
        if os.path.exists(f"/etc/{name}"):
            cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return cmd


def _rlimits(limits: Limits, uid_nproc: bool, cgroup: bool) -> list[str]:
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1.999)
    as_bytes = limits.address_space_bytes
    if as_bytes is None:
        as_bytes = 0 if cgroup else limits.memory_bytes
    out = ["prlimit", f"--cpu={max(cpu, 1)}:{max(cpu, 1) + 1}", f"--fsize={limits.fsize_bytes}", "--core=0",
           "--nofile=1024"]
    out += [f"--as={as_bytes}"] if as_bytes else []
    out += [f"--nproc={limits.nproc}"] if uid_nproc else []
    return out + ["--"]


def _environment(mounts: Sequence[Mount], extra: Mapping[str, str]) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": SCRATCH,
           "TMPDIR": SCRATCH, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for m in mounts:
        env.update(m.env)
    env.update(extra)
    return env


# ---------------------------------------------------------------- the run
def run_program(argv: Sequence[str], files: Mapping[str, bytes] | None = None, limits: Limits | None = None,
                stdin: bytes = b"", *, mounts: Sequence[Mount] = (), env: Mapping[str, str] | None = None
                ) -> ExecResult:
    """Run `argv` (resolved inside the sandbox; relative paths are under the scratch cwd) with `files` written
    into a fresh scratch dir first. Never raises for anything the program does; bad arguments raise UserError."""
    limits = limits or Limits()
    files = dict(files or {})
    if not argv:
        raise UserError("run_program needs a non-empty argv")
    for name in files:
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise UserError(f"sandbox file name must be a relative path inside the scratch dir, got {name!r}")
    for m in mounts:
        if not os.path.exists(m.src):
            raise UserError(f"sandbox mount source does not exist: {m.src}")
    info = sandbox_info()
    senv = _environment(mounts, env or {})
    with _UidSlot() as uid:
        cgroups = _cgroup_create(info["cgroup_roots"], limits) if info["cgroup_roots"] else []
        try:
            if info["isolation"] == "bwrap":
                return _run_bwrap(info, uid, cgroups, list(argv), files, limits, stdin, mounts, senv)
            return _run_fallback(info, uid, cgroups, list(argv), files, limits, stdin, senv, mounts)
        finally:
            _cgroup_destroy(cgroups)


def _wrap(cgroups: Sequence[Path], cmd: list[str]) -> list[str]:
    """Join the run's cgroups from a root shell before anything untrusted starts."""
    if cgroups:
        joins = "; ".join(f'echo $$ > "{d}/cgroup.procs"' for d in cgroups)
        cmd = ["/bin/sh", "-c", f'{joins} || exit 125; exec "$@"', "sh", *cmd]
    return cmd


def _run_bwrap(info, uid, cgroups, argv, files, limits, stdin, mounts, senv) -> ExecResult:
    started_r, started_w = os.pipe()
    fds, args = [started_w], []
    try:
        for m in mounts:  # parents made world-traversable first: bwrap would copy /root's 0700
            for p in reversed(Path(m.dest or m.src).parents):
                args += ["--perms", "0755", "--dir", str(p)] if str(p) not in ("/", "/usr", "/tmp") else []
            args += ["--ro-bind", m.src, m.dest or m.src]
        for name, data in files.items():
            fds.append(os.memfd_create("sbx-file"))
            view = memoryview(data)
            while view:
                view = view[os.write(fds[-1], view):]
            os.lseek(fds[-1], 0, os.SEEK_SET)
            for p in reversed(Path(SCRATCH, name).parents):
                args += ["--perms", "0777", "--dir", str(p)] if str(p).startswith(SCRATCH + "/") else []
            args += ["--file", str(fds[-1]), f"{SCRATCH}/{name}"]
        args += ["--clearenv"] + [a for k, v in senv.items() for a in ("--setenv", k, v)]
        # A mark on a pipe once the sandbox is set up tells a bwrap failure (infra_error) from the program's own.
        mark = ["/bin/bash", "-c", f'printf x >&{started_w}; exec {started_w}>&-; exec "$@"', "bash"]  # dash: fd<10
        inner = _bwrap_prefix(info["bwrap"], limits.tmpfs_bytes) + args + ["--"] + mark
        inner += _drop(uid) + _rlimits(limits, uid_nproc=info["root"], cgroup=bool(cgroups)) + argv
        res = _supervise(_wrap(cgroups, inner), fds, limits, stdin, None, cgroups)
    finally:
        for fd in fds:
            os.close(fd)
        started = _read_all(started_r)
    if res.status not in ("timeout", "output_limit") and not started:
        res.status, res.detail = "infra_error", "bwrap could not start the program: " + res.stderr[-400:].decode(
            "utf-8", "replace")
    res.isolation = "bwrap"
    return res


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    os.close(fd)
    return b"".join(chunks)


def _world_readable(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(q).st_mode & 0o005 == 0o005 for q in [p, *p.parents])


def _run_fallback(info, uid, cgroups, argv, files, limits, stdin, senv, mounts) -> ExecResult:
    # No mount namespace: tools are used in place, so the pool uid must be able to reach them (fail closed).
    if info["root"] and (bad := [m.src for m in mounts if not _world_readable(m.src)]):
        return ExecResult("infra_error", None, None, b"", b"", 0.0, 0.0, isolation="fallback",
                          detail=f"fallback sandbox: {bad[0]} is not readable by the unprivileged sandbox uid; "
                                 "install bubblewrap (scripts/install_system_deps.sh)")
    for m in mounts:
        senv.update({k: v.replace(m.dest, m.src) for k, v in m.env.items()} if m.dest else {})
    work = Path(tempfile.mkdtemp(prefix="dscoder-sbx-"))
    try:
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        if info["root"]:
            os.chown(work, uid, uid)
            for p in work.rglob("*"):
                os.chown(p, uid, uid)
        senv = {**senv, "HOME": str(work), "TMPDIR": str(work)}
        cmd = _drop(uid) + _rlimits(limits, uid_nproc=info["root"], cgroup=bool(cgroups)) + argv
        res = _supervise(_wrap(cgroups, cmd), [], limits, stdin, (work, senv), cgroups)
        if info["root"]:
            _kill_uid(uid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.isolation = "fallback"
    return res


def _supervise(cmd, pass_fds, limits: Limits, stdin: bytes, fallback, cgroups) -> ExecResult:
    """Start `cmd`, feed stdin, read both pipes up to the caps, enforce the wall clock, reap, classify."""
    cwd, env = fallback if fallback else (None, {"PATH": "/usr/bin:/bin"})
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=pass_fds, cwd=cwd, env=env, start_new_session=True)
    except OSError as e:
        return ExecResult("infra_error", None, None, b"", b"", 0.0, 0.0, detail=f"cannot start sandbox: {e}")
    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    cut, why = set(), None
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    pending, in_fd = memoryview(stdin), proc.stdin.fileno()
    if pending:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    deadline = t0 + limits.wall_s
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            why = "timeout"
            break
        for key, _ in sel.select(min(left, 0.5)):
            fd = key.fd
            if fd == in_fd:
                try:
                    pending = pending[os.write(fd, pending[:65536]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the program stopped reading: fine, it just gets no more input
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            room = limits.output_bytes - len(out[fd])
            out[fd] += chunk[:max(room, 0)]
            if len(chunk) > room:
                cut.add(fd)
        if cut:
            why = "output_limit"
            break
    if why:
        _kill(proc.pid, pgroup=True)
        _kill(proc.pid)
    sel.close()
    rc, cpu = _reap(proc, deadline + 5 if not why else time.monotonic() + 5)
    wall = time.monotonic() - t0
    for f in (proc.stdout, proc.stderr, proc.stdin):
        f.close()
    so, se = (bytes(v) for v in out.values())
    return _classify(rc, why, so, se, wall, cpu, limits, cgroups, cut, list(out))


def _reap(proc: subprocess.Popen, until: float) -> tuple[int | None, float]:
    """wait4 the child (its rusage includes reaped descendants); SIGKILL it if it lingers past `until`."""
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, 0.0
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > until:
            _kill(proc.pid, pgroup=True)
            _kill(proc.pid)
        time.sleep(0.005)


def _classify(rc, why, so, se, wall, cpu, limits, cgroups, cut, fds) -> ExecResult:
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and 128 < rc < 160 else None)
    code = rc if rc is not None and rc >= 0 else None
    cpu_cap = limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1
    if why:
        status = why
    elif _cgroup_oom(cgroups) or (rc != 0 and b"MemoryError" in se[-4096:]):
        status = "memory"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_cap - 0.05):
        status = "timeout"
    elif rc == 125 and b"cgroup.procs" in se:
        status = "infra_error"
    else:
        status = "ok" if rc == 0 else "error"
    return ExecResult(status, code, sig, so, se, wall, cpu, stdout_truncated=fds[0] in cut,
                      stderr_truncated=fds[1] in cut, detail=why or "")
