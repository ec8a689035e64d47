"""The zygote fast path of check_python: per-sample isolation inside a long-lived sandbox (fresh scratch, own PID
namespace, pool uid, no leftovers), recovery when a zygote dies, and timeouts enforced from the host."""
import os
import signal
import threading
import time

import pytest

from dscoder.eval import zygote
from dscoder.eval.runners import check_python
from dscoder.eval.isolation import UID_BASE, UID_SLOTS
from dscoder.eval.sandbox import Limits
from test_sandbox import _pool_processes  # processes still running as a pool uid

pytestmark = pytest.mark.skipif(not zygote.zygote_available(), reason="the zygote path needs bwrap as root")
TEST = "assert f(2) == 4\n"
GOOD = "def f(x):\n    return x * x\n"
L = Limits(wall_s=3, memory_bytes=512 << 20)

PROBE = """import os, sys
print('UID', os.getuid(), os.getgid(), os.getgroups(), file=sys.stderr)
print('PIDS', os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), file=sys.stderr)
print('MODE', oct(os.stat('.').st_mode & 0o777), os.getcwd(), file=sys.stderr)
print('SEEN', sorted(os.listdir('.')), sorted(os.listdir('/tmp')), file=sys.stderr)
print('CAPS', [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd'))], file=sys.stderr)
print('NNP', [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')], file=sys.stderr)
print('ENV', sorted(os.environ), file=sys.stderr)
open('leftover.txt', 'w').write('x')
open('/tmp/leftover2.txt', 'w').write('x')
def f(x):
    return x * x
"""


def _fields(stderr: bytes) -> dict[str, str]:
    return {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in stderr.decode().splitlines() if " " in ln}


def test_each_sample_is_isolated_and_starts_clean():
    first = check_python(PROBE, TEST, "f", limits=L, sandbox="zygote")
    second = check_python(PROBE, TEST, "f", limits=L, sandbox="zygote")  # the same (idle) zygote serves it
    assert first.passed and second.passed, (first.details, second.details)
    a, b = _fields(first.runs[0].stderr), _fields(second.runs[0].stderr)
    uid = int(a["UID"].split()[0])
    assert UID_BASE <= uid < UID_BASE + UID_SLOTS and a["UID"].endswith("[]")
    assert a["PIDS"] == "2 [1, 2]", a  # own PID namespace and /proc (1: its root init): no zygote, no neighbour
    assert a["MODE"] == "0o700 /tmp"
    assert "leftover.txt" not in b["SEEN"] and "leftover2.txt" not in b["SEEN"]  # fresh scratch per sample
    assert a["CAPS"] == "['0000000000000000', '0000000000000000']" and a["NNP"] == "['1']"
    assert "DSCODER" not in a["ENV"] and "HOME" in a["ENV"]


def test_daemon_of_a_sample_dies_with_it():
    prog = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        while True:\n            time.sleep(0.05)\n    os._exit(0)\n" + GOOD)
    v = check_python(prog, TEST, "f", limits=L, sandbox="zygote")
    assert v.passed, v.details
    end = time.time() + 3
    while _pool_processes() and time.time() < end:
        time.sleep(0.05)
    assert not _pool_processes()


def test_timeout_is_enforced_and_the_zygote_survives():
    t0 = time.time()
    v = check_python("import time\ndef f(x):\n    time.sleep(60)\n", TEST, "f",
                     limits=Limits(wall_s=1, memory_bytes=512 << 20), sandbox="zygote")
    assert v.status == "timeout" and time.time() - t0 < 6, (v.status, v.details)
    assert check_python(GOOD, TEST, "f", limits=L, sandbox="zygote").passed


def test_a_dead_zygote_fails_only_its_sample_and_is_replaced():
    box = {}
    t = threading.Thread(target=lambda: box.update(
        v=check_python("import time\ntime.sleep(2)\n" + GOOD, TEST, "f", limits=L, sandbox="zygote")))
    t.start()
    time.sleep(0.8)
    with zygote._lock:
        busy = [z for z in zygote._all if not any(z in idle for idle in zygote._idle.values())]
    assert busy
    for z in busy:  # what a sample that managed to kill its zygote would cause
        os.killpg(z.proc.pid, signal.SIGKILL)
    t.join(10)
    assert not box["v"].passed and box["v"].status == "failed", (box["v"].status, box["v"].details)
    assert check_python(GOOD, TEST, "f", limits=L, sandbox="zygote").passed
    assert check_python(GOOD + "f = lambda x: 5\n", TEST, "f", limits=L, sandbox="zygote").status == "failed"


def test_a_kill_that_arrives_after_its_sample_ended_is_ignored():
    """The host may ask for a kill just as a sample ends (its deadline or output cap hit while the zygote's reply is
    in flight). The zygote must not answer it: the next sample would read that answer as its own result."""
    assert check_python(GOOD, TEST, "f", limits=L, sandbox="zygote").passed
    with zygote._lock:
        idle = [z for zs in zygote._idle.values() for z in zs]
    assert idle
    for z in idle:
        z._send(b"KILL")
    time.sleep(0.2)
    for _ in range(3):
        v = check_python(GOOD, TEST, "f", limits=L, sandbox="zygote")
        assert v.passed and [r.exit_code for r in v.runs] == [0, 0], (v.status, [r.exit_code for r in v.runs])
