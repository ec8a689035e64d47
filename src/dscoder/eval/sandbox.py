"""Run untrusted programs (model-written code) in a kernel-enforced sandbox: DeepSeek-Coder evaluation (paper
2401.14196 §4.1: HumanEval, MBPP, MultiPL-E executed against tests) done without letting the code touch the host.

Threat model: the program may be incompetent (loops, huge allocations, `rm -rf .`), a reward
hacker (exit codes, always-equal objects, verdict forging) or malicious (native code through ctypes). So no defence
lives inside the interpreter; everything below is enforced by the kernel, and the caller computes the verdict.

    spec = RunSpec(["python3", "main.py"], {"main.py": b"print(1)"}, Limits(wall_s=3), stdin=b"", mounts=(), env={})
    res = run_program(spec)  # a fresh sandbox; zygote.run_python_role(role, spec, python) forks a warm one
    res.status  # "ok" | "timeout" | "memory" | "output_limit" | "error" | "infra_error"
    res.stdout, res.stderr, res.exit_code, res.signal, res.wall_s, res.cpu_s, res.isolation  # "bwrap" | "fallback"
    isolation.sandbox_info()  # {"isolation", "cgroup", "python", ...}: what this host gives, for reports

Both paths share, from here: `RunSpec`, `Limits` (and `Limits.rlimits`, the one table of rlimits), `Capture` (the
output pipes, their byte cap and the wall clock) and `classify` (the status); from `isolation.py`: the bwrap
command, uid drop, prlimit argv, scrubbed environment, cgroups, pool uids and memfds.
`run_program` is thread-safe: each call gets its own pool uid (flock'ed lock files), cgroup and scratch.

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

import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from dscoder.errors import UserError
from dscoder.eval.isolation import (SCRATCH, Cgroup, Mount, UidSlot, bwrap_command, kill_tree, kill_uid, memfd,
                                    prlimit_argv, sandbox_info, scrubbed_env, setpriv_argv)

STATUSES = ("ok", "timeout", "memory", "output_limit", "error", "infra_error")
KILL_GRACE_S = 5.0               # how long a killed run may take to let go of its pipes and be reaped


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

    @property
    def cpu_cap_s(self) -> float:
        """The CPU seconds after which a SIGKILL counts as a timeout (RLIMIT_CPU's hard limit is about there)."""
        return self.cpu_s if self.cpu_s is not None else self.wall_s + 1

    def rlimits(self, *, cgroup: bool, own_uid: bool) -> dict[str, tuple[int, int]]:
        """The run's rlimits as {name: (soft, hard)}, names as prlimit and `resource.RLIMIT_<NAME>` spell them.
        `cgroup`: a memory cgroup holds the run (then no RLIMIT_AS by default); `own_uid`: the run has a pool uid
        to itself, so the per-uid RLIMIT_NPROC counts only its processes."""
        cpu = max(int(self.cpu_s if self.cpu_s is not None else self.wall_s + 1.999), 1)
        as_bytes = self.address_space_bytes
        if as_bytes is None:
            as_bytes = 0 if cgroup else self.memory_bytes
        out = {"cpu": (cpu, cpu + 1), "fsize": (self.fsize_bytes,) * 2, "core": (0, 0), "nofile": (1024, 1024)}
        out.update({"as": (as_bytes, as_bytes)} if as_bytes else {})
        out.update({"nproc": (self.nproc, self.nproc)} if own_uid else {})
        return out


@dataclass(frozen=True)
class RunSpec:
    """One sandboxed run, for `run_program` and `zygote.run_python_role` alike: `argv` (resolved inside the
    sandbox; relative paths are under the scratch cwd), `files` written into the fresh scratch first, `limits`,
    `stdin`, read-only `mounts` and extra `env` on top of the scrubbed environment. Bad values raise UserError."""
    argv: Sequence[str]
    files: Mapping[str, bytes] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    _: KW_ONLY
    stdin: bytes = b""
    mounts: Sequence[Mount] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name, value in (("argv", tuple(self.argv)), ("files", dict(self.files)), ("mounts", tuple(self.mounts)),
                            ("env", dict(self.env))):
            object.__setattr__(self, name, value)  # private copies: the caller's later edits do not leak in
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise UserError(f"a sandbox run needs a non-empty argv of strings, got {self.argv!r}")
        for name in self.files:
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise UserError(f"sandbox file name must be a relative path inside the scratch dir, got {name!r}")
        for m in self.mounts:
            if not os.path.exists(m.src):
                raise UserError(f"sandbox mount source does not exist: {m.src}")

    def environment(self) -> dict[str, str]:
        return scrubbed_env(self.mounts, self.env)


@dataclass(kw_only=True)
class ExecResult:
    """What one run did. stdout/stderr are cut at Limits.output_bytes (the *_truncated flags say so). cpu_s is the
    rusage of the reaped tree: processes that die with the PID namespace are not in it, so treat it as a floor."""
    status: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = "bwrap"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def infra_error(detail: str, isolation: str = "bwrap") -> ExecResult:
    """The sandbox, not the program, failed (fail closed: never scored as the program's own result)."""
    return ExecResult(status="infra_error", isolation=isolation, detail=detail)


# ---------------------------------------------------------------- output, wall clock, verdict class
class Capture:
    """The program's stdout and stderr: two pipes read without blocking, each kept up to `cap` bytes (more is read
    and dropped, so a writer never blocks on a full pipe while it is being killed). Give `child_fds` to the
    program, then call `started`; `pump` runs the wall clock."""

    def __init__(self, cap: int):
        self.cap = cap
        (self.out_r, out_w), (self.err_r, err_w) = os.pipe(), os.pipe()
        self.child_fds, self.read_fds = (out_w, err_w), (self.out_r, self.err_r)
        self.data = {self.out_r: bytearray(), self.err_r: bytearray()}
        self.cut: set[int] = set()

    def started(self) -> None:
        """The program holds its own copies of the write ends now: drop ours, so that EOF means it let go."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds = ()

    def close(self) -> None:
        """Close every pipe end still ours (once: a closed fd number may already belong to another thread)."""
        self.started()
        for fd in self.read_fds:
            os.close(fd)
        self.read_fds = ()

    @property
    def stdout(self) -> bytes:
        return bytes(self.data[self.out_r])

    @property
    def stderr(self) -> bytes:
        return bytes(self.data[self.err_r])

    def _read(self, fd: int) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        buf = self.data[fd]
        room = self.cap - len(buf)
        buf += chunk[:max(room, 0)]
        if len(chunk) > room:
            self.cut.add(fd)
        return bool(chunk)

    def pump(self, deadline: float, kill: Callable[[], None], ctl: socket.socket | None = None
             ) -> tuple[str | None, bytes | None]:
        """Read until the program is over. Without `ctl` it is over when both pipes close; with `ctl` (a zygote)
        when its one reply has come and both pipes have closed. At `deadline` ("timeout") or at the cap
        ("output_limit"), whichever comes first, call `kill` once if the program still runs; then return at once
        without `ctl` (the caller reaps), or wait up to KILL_GRACE_S for the reply with it. A cap hit after the
        program ended is still "output_limit", but nothing is killed: there is nothing left to kill.
        Returns (that reason or None, the reply: None if none came, b"" if `ctl` closed)."""
        sel = selectors.DefaultSelector()
        for fd in self.data:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if ctl is not None:
            sel.register(ctl, selectors.EVENT_READ)
        why = reply = hard = None
        try:
            while True:
                pipes_open = any(fd in sel.get_map() for fd in self.data)
                running = reply is None if ctl is not None else pipes_open
                if reply == b"" or not (running or pipes_open):
                    break
                now = time.monotonic()
                why = why or ("output_limit" if self.cut else "timeout" if running and now >= deadline else None)
                if running and why and hard is None:
                    kill()
                    hard = now + KILL_GRACE_S
                    if ctl is None:
                        break
                limit = hard if hard is not None else deadline if running else deadline + KILL_GRACE_S
                if now > limit:
                    break
                for key, _ in sel.select(max(min(limit - now, 0.5), 0)):
                    if key.fileobj is ctl:
                        try:
                            reply = ctl.recv(64)
                        except OSError:
                            reply = b""
                        sel.unregister(ctl)
                    elif not self._read(key.fd):
                        sel.unregister(key.fd)
        finally:
            sel.close()
        return why or ("output_limit" if self.cut else None), reply


def classify(rc: int | None, why: str | None, out: Capture, *, cpu_s: float, wall_s: float, limits: Limits,
             oom: bool) -> ExecResult:
    """The run's status from what the parent saw: `rc` (negative: the signal; 129-159: 128 + the signal, as bwrap
    and shells report it), `why` the parent stopped it ("timeout" | "output_limit"), `oom` kills in its cgroup."""
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and 128 < rc < 160 else None)
    code = rc if rc is not None and rc >= 0 else None
    detail = why or ""
    if why:
        status = why
    elif rc != 0 and (oom or b"MemoryError" in out.stderr[-4096:]):
        status = "memory"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_cap_s - 0.05):
        status = "timeout"
    elif sig == signal.SIGXFSZ:  # wrote a file past Limits.fsize_bytes
        status, detail = "output_limit", "file size limit"
    elif rc == 125 and b"cgroup.procs" in out.stderr:
        status = "infra_error"
    else:
        status = "ok" if rc == 0 else "error"
    return ExecResult(status=status, exit_code=code, signal=sig, stdout=out.stdout, stderr=out.stderr, wall_s=wall_s,
                      cpu_s=cpu_s, stdout_truncated=out.out_r in out.cut, stderr_truncated=out.err_r in out.cut,
                      detail=detail)


# ---------------------------------------------------------------- the one-shot run
def run_program(spec: RunSpec) -> ExecResult:
    """Run `spec` in a fresh sandbox of its own. Never raises for anything the program does."""
    with UidSlot() as uid:
        cgroup = Cgroup(spec.limits.memory_bytes, spec.limits.nproc)
        try:
            run = _run_bwrap if sandbox_info()["isolation"] == "bwrap" else _run_fallback
            return run(spec, uid, cgroup)
        finally:
            cgroup.close()


def _run_bwrap(spec: RunSpec, uid: int, cgroup: Cgroup) -> ExecResult:
    started_r, started_w = os.pipe()
    files = {f"{SCRATCH}/{name}": memfd(data) for name, data in spec.files.items()}
    try:
        # A mark on a pipe once the sandbox is set up tells a bwrap failure (infra_error) from the program's own.
        mark = ["/bin/bash", "-c", f'printf x >&{started_w}; exec {started_w}>&-; exec "$@"', "bash"]  # dash: fd<10
        rlimits = spec.limits.rlimits(cgroup=bool(cgroup), own_uid=sandbox_info()["root"])
        cmd = bwrap_command(spec.limits.tmpfs_bytes, spec.environment(), mounts=spec.mounts, files=files)
        cmd += mark + setpriv_argv(uid) + prlimit_argv(rlimits) + list(spec.argv)
        res = _execute(cgroup.wrap(cmd), spec, cgroup, pass_fds=(started_w, *files.values()))
    finally:
        for fd in (started_w, *files.values()):
            os.close(fd)
        started = _read_all(started_r)
    if res.status not in ("timeout", "output_limit") and not started:
        res.status, res.detail = "infra_error", "bwrap could not start the program: " + res.stderr[-400:].decode(
            "utf-8", "replace")
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


def _run_fallback(spec: RunSpec, uid: int, cgroup: Cgroup) -> ExecResult:
    root = sandbox_info()["root"]
    # No mount namespace: tools are used in place, so the pool uid must be able to reach them (fail closed).
    if root and (bad := [m.src for m in spec.mounts if not _world_readable(m.src)]):
        return infra_error(f"fallback sandbox: {bad[0]} is not readable by the unprivileged sandbox uid; "
                           "install bubblewrap (scripts/install_system_deps.sh)", isolation="fallback")
    env = spec.environment()
    for m in spec.mounts:
        env.update({k: v.replace(m.dest, m.src) for k, v in m.env.items()} if m.dest else {})
    work = Path(tempfile.mkdtemp(prefix="dscoder-sbx-"))
    try:
        for name, data in spec.files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        if root:
            for p in [work, *work.rglob("*")]:
                os.chown(p, uid, uid)
        env.update(HOME=str(work), TMPDIR=str(work))
        rlimits = spec.limits.rlimits(cgroup=bool(cgroup), own_uid=root)
        cmd = setpriv_argv(uid) + prlimit_argv(rlimits) + list(spec.argv)
        res = _execute(cgroup.wrap(cmd), spec, cgroup, cwd=work, env=env)
        if root:
            kill_uid(uid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.isolation = "fallback"
    return res


def _execute(cmd: list[str], spec: RunSpec, cgroup: Cgroup, *, pass_fds: Sequence[int] = (), cwd: Path | None = None,
             env: Mapping[str, str] | None = None) -> ExecResult:
    """Start `cmd` (bwrap, or the fallback's setpriv) with the spec's stdin, read its output up to the cap,
    enforce the wall clock, reap, classify."""
    out, stdin = Capture(spec.limits.output_bytes), memfd(spec.stdin)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out.child_fds[0], stderr=out.child_fds[1], pass_fds=pass_fds,
                                cwd=cwd, env=env or {"PATH": "/usr/bin:/bin"}, start_new_session=True)
    except OSError as e:
        out.close()
        return infra_error(f"cannot start sandbox: {e}")
    finally:
        os.close(stdin)
    out.started()
    deadline = t0 + spec.limits.wall_s
    try:
        why, _ = out.pump(deadline, lambda: kill_tree(proc.pid))
    finally:
        out.close()
    # Pipes closed before the deadline: the program ended, or closed them and runs on (then it is killed there).
    rc, cpu, killed = _reap(proc, time.monotonic() + KILL_GRACE_S if why else max(deadline, time.monotonic() + 1))
    return classify(rc, why or ("timeout" if killed else None), out, cpu_s=cpu, wall_s=time.monotonic() - t0,
                    limits=spec.limits, oom=cgroup.oom_kills() > 0)


def _reap(proc: subprocess.Popen, until: float) -> tuple[int | None, float, bool]:
    """wait4 the child (its rusage includes reaped descendants); SIGKILL its tree if it lingers past `until`.
    Returns (exit code as Popen gives it, CPU seconds, whether it had to be killed here)."""
    killed = False
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, 0.0, killed
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime, killed
        if time.monotonic() > until and not killed:
            kill_tree(proc.pid)
            killed = True
        time.sleep(0.005)
