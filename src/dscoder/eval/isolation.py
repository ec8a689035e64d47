"""The kernel side of the eval sandbox, built in one place for both of its paths (`sandbox.run_program`, one fresh
sandbox per run, and `zygote.py`, long-lived sandboxes that fork per sample): the host probe, the pool of
unprivileged uids, cgroups (memory and pids caps, OOM count), and the bubblewrap / setpriv / prlimit argument lists
with the scrubbed environment. The guarantees they add up to are listed in `sandbox.py`.

nsjail would replace bwrap + setpriv + prlimit + cgroups with one tool, but it is not packaged for Debian 12;
bubblewrap is (`scripts/install_system_deps.sh`).
"""
from __future__ import annotations

import fcntl
import os
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

UID_BASE, UID_SLOTS = 61000, 512
LOCK_DIR = Path(tempfile.gettempdir()) / "dscoder-sandbox-uids"
SCRATCH = "/tmp"                 # the program's cwd (and /tmp) inside bwrap
ETC_KEEP = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd",
            "group", "java-17-openjdk", "mono", "php", "ssl", "ca-certificates", "timezone")


@dataclass(frozen=True)
class Mount:
    """A host path bound read-only at `dest` (default: the same path) inside the sandbox; `env` is added to the
    run's environment (e.g. PYTHONPATH for a bound site-packages)."""
    src: str
    dest: str = ""
    env: Mapping[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:  # mounts key the zygote pool
        return hash((self.src, self.dest, tuple(sorted(self.env.items()))))


# ---------------------------------------------------------------- host probing (cached)
_probe_lock = threading.Lock()
_probe: dict | None = None


def _bwrap_works(bwrap: str) -> bool:
    cmd = bwrap_command(1 << 20, scrubbed_env(), bwrap=bwrap) + setpriv_argv(UID_BASE + UID_SLOTS - 1)
    try:
        return subprocess.run(cmd + ["/bin/true"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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


# ---------------------------------------------------------------- uid pool, cgroups, kills
class UidSlot:
    """A pool uid reserved across threads and processes (an flock on a per-uid lock file) until exit."""

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


class Cgroup:
    """A fresh cgroup (v2, or a memory and a pids one on v1) capping memory (tmpfs pages included) and processes
    (`nproc` + 8: room for the sandbox's own helpers). False, and doing nothing, where the host does not let us
    create one. `close` kills what is left and removes it."""

    def __init__(self, memory_bytes: int, nproc: int):
        roots, self.dirs = sandbox_info()["cgroup_roots"], []
        name = f"dscoder-sbx-{uuid.uuid4().hex[:12]}"
        caps = ([("v2", "memory.max", memory_bytes), ("v2", "pids.max", nproc + 8)] if "v2" in roots
                else [("memory", "memory.limit_in_bytes", memory_bytes), ("pids", "pids.max", nproc + 8)])
        try:
            for ctrl, fname, value in caps if roots else []:
                d = roots[ctrl] / name
                if d not in self.dirs:
                    d.mkdir()
                    self.dirs.append(d)
                (d / fname).write_text(str(value))
            if "v2" in roots and (self.dirs[0] / "memory.swap.max").exists():
                (self.dirs[0] / "memory.swap.max").write_text("0")
        except OSError:
            self.close()

    def __bool__(self) -> bool:
        return bool(self.dirs)

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` started from a root shell that joins the cgroup first, before anything untrusted runs."""
        if not self.dirs:
            return cmd
        joins = "; ".join(f'echo $$ > "{d}/cgroup.procs"' for d in self.dirs)
        return ["/bin/sh", "-c", f'{joins} || exit 125; exec "$@"', "sh", *cmd]

    def oom_kills(self) -> int:
        """How many processes the kernel has OOM-killed in this cgroup so far."""
        total = 0
        for d in self.dirs:
            for fname in ("memory.events", "memory.oom_control"):
                try:
                    for line in (d / fname).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        total += int(v) if k == "oom_kill" else 0
                except (OSError, ValueError):
                    pass
        return total

    def close(self) -> None:
        for d in self.dirs:
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
        self.dirs = []


def _kill(pid: int, pgroup: bool = False) -> None:
    try:
        (os.killpg if pgroup else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL a process we started with start_new_session, and its process group."""
    _kill(pid, pgroup=True)
    _kill(pid)


def kill_uid(uid: int) -> None:
    """Fallback mode only: SIGKILL every process of the (pool, unprivileged) uid — nothing else runs as it."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == uid:
                    _kill(int(p.name))
            except OSError:
                pass


# ---------------------------------------------------------------- command construction
def scrubbed_env(mounts: Sequence[Mount] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a sandboxed program gets: nothing of ours (no keys, no tokens), one BLAS thread."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": SCRATCH,
           "TMPDIR": SCRATCH, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    for m in mounts:
        env.update(m.env)
    env.update(extra or {})
    return env


def memfd(data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at 0 (files and stdin for a sandbox)."""
    fd = os.memfd_create("dscoder-sbx")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _parent_dirs(path: str, mode: str, seen: set[str]) -> list[str]:
    # made explicitly with `mode`: else privileged bwrap copies the host's (/root's 0700) and the uid cannot pass
    out = []
    for p in map(str, reversed(Path(path).parents)):
        if p not in ("/", "/usr", SCRATCH) and p not in seen:
            seen.add(p)
            out += ["--perms", mode, "--dir", p]
    return out


def bwrap_command(tmpfs_bytes: int, env: Mapping[str, str], *, mounts: Sequence[Mount] = (),
                  files: Mapping[str, int] | None = None, bwrap: str | None = None) -> list[str]:
    """`bwrap ... --`: new PID/IPC/UTS/net(/user) namespaces, read-only /usr, /lib..., a small /etc, the `mounts`
    read-only, a `tmpfs_bytes` tmpfs as cwd and /tmp, `files` ({absolute dest: fd}; under SCRATCH writable by the
    program, elsewhere read-only 0644) and exactly `env`."""
    # As root bwrap runs privileged (no user namespace: the mounts may come from /root) and the program drops to
    # the pool uid inside; as a normal user bwrap maps that user into a new user namespace instead.
    userns = ["--unshare-user", "--disable-userns"] if os.geteuid() != 0 else []
    cmd = [bwrap or sandbox_info()["bwrap"], "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", *userns, "--die-with-parent", "--new-session",
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
    seen: set[str] = set()
    for m in mounts:
        cmd += _parent_dirs(m.dest or m.src, "0755", seen) + ["--ro-bind", m.src, m.dest or m.src]
    for dest, fd in (files or {}).items():
        scratch = dest.startswith(SCRATCH + "/")
        cmd += _parent_dirs(dest, "0777" if scratch else "0755", seen)
        cmd += ([] if scratch else ["--perms", "0644"]) + ["--file", str(fd), dest]
    return cmd + ["--clearenv"] + [a for k, v in env.items() for a in ("--setenv", k, v)] + ["--"]


def setpriv_argv(uid: int) -> list[str]:
    """As root: become the pool uid with no capabilities and no way back (setuid bits ignored). Else nothing."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def prlimit_argv(rlimits: Mapping[str, tuple[int, int]]) -> list[str]:
    """`prlimit --NAME=SOFT:HARD ... --` for `sandbox.Limits.rlimits` (a zygote applies that dict with setrlimit)."""
    return ["prlimit", *(f"--{name}={soft}:{hard}" for name, (soft, hard) in rlimits.items()), "--"]
