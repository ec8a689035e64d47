"""Verdicts for generated programs, per language, on top of `sandbox.RunSpec` runs (DeepSeek-Coder 2401.14196 §4.1:
HumanEval/MBPP in Python and MultiPL-E in C++, Java, JS, TS, PHP, C#, Bash; plus Go and Rust where installed).

Python — `check_python(program, test_code, entry_points, prelude=...)` — two sandboxed processes, so the code under
test cannot forge its verdict (early exit, printed PASS lines, forged verdicts, always-equal objects as in
openai/human-eval#67):
  1. *candidate* process: runs `program`, then `test_code` with each entry-point name bound to a recorder that
     writes (encoded args, plain return value | exception type) for every call the tests make. Only plain data
     crosses: None/bool/int/float/complex/str/bytes/list/tuple/set/dict/range (exact types, NaN/inf kept; generators
     materialised); anything else (an object whose `__eq__` is always True, a custom class) is "unserializable".
  2. *checker* process (fresh sandbox, **no candidate code**): runs `prelude` (trusted benchmark text, e.g. the
     HumanEval prompt, for helpers such as `poly`), then `test_code` with the names bound to replay proxies that
     return the recorded values of calls with equal arguments. It prints `PASS <nonce>` only after the whole test ran;
     the nonce is fresh per run and goes only to the checker. Passed = checker exit 0 AND that exact last line.
  So `sys.exit(0)`, `os._exit(0)`, printed success tokens, frame walking, patched asserts and always-equal objects
  all fail. Residual risk, documented: process 1 sees the test code, so a program that reads the expected values
  out of its caller's frame can return them as plain data (an oracle read); the module-level `random` is
  re-seeded for both processes and restored around each call, so randomised tests replay identically.
  Both processes are, by default (bwrap as root), forks of long-lived pre-imported sandboxed interpreters, one
  set per role ("zygotes", `zygote.py`: ~10x cheaper, same per-sample isolation but for a per-zygote memory
  cgroup); `sandbox="process"` or DSCODER_PY_SANDBOX=process starts a fresh sandbox and interpreter per run.
  Usage: HumanEval `check_python(prompt + completion, test + f"\\ncheck({ep})", ep, prelude=prompt)`;
  MBPP `check_python(code, "\\n".join(test_list), name)`; CRUXEval `check_python(code, "assert f(x) == y", "f")`.

Other languages — `check_program(lang, source)` — MultiPL-E style: the source is prompt + completion + tests. A
per-run random nonce print is injected after the last check (end of `main`, end of the script, or a last Go test);
passed = build ok, exit status 0 AND the nonce printed as a whole line. This is WEAKER than the Python design: the
program runs in the same process as its checks, so it can read the nonce (from its binary or source) and print it
before exiting 0. Never a verdict from an exit code alone. A missing toolchain gives status "skipped".

Toolchains (Debian 12 package / npm): cpp g++ (g++), java javac+java (default-jdk-headless; org.javatuples is
stripped from imports unless DSCODER_JAVATUPLES_JAR names the jar), js node (nodejs), ts tsc (npm typescript) then
node, php php (php-cli), cs mcs+mono (mono-mcs), sh bash (bash), go go (golang-go), rs rustc (rustup or rustc).
"""
from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from dscoder.errors import UserError
from dscoder.eval.isolation import Mount, prlimit_argv
from dscoder.eval.sandbox import ExecResult, Limits, RunSpec, run_program
from dscoder.eval.zygote import run_python_role, zygote_available

DRIVER = Path(__file__).with_name("_pydriver.py")
SITE_IN_SANDBOX = "/opt/dscoder-site"


@dataclass
class Verdict:
    """passed is True only for status "passed". status: passed | failed | timeout | memory | output_limit |
    compile_error | infra_error | skipped."""
    passed: bool
    status: str
    details: str = ""
    runs: list[ExecResult] = field(default_factory=list)


def _verdict_from_run(res: ExecResult, what: str) -> Verdict | None:
    """The run's own failure as a verdict (timeout, memory, output flood, sandbox error), or None if it ran."""
    if res.status in ("timeout", "memory", "output_limit", "infra_error"):
        return Verdict(False, res.status, f"{what}: {res.status} {res.detail}".strip(), [res])
    return None


# ---------------------------------------------------------------- Python
@functools.lru_cache(maxsize=1)
def python_setup() -> tuple[list[str], tuple[Mount, ...]]:
    """The interpreter argv and the read-only mounts that let the sandbox uid run our Python (pyenv under /root is
    unreadable to it) with this environment's site-packages (numpy) on PYTHONPATH."""
    base = Path(sys.base_prefix)
    exe = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not exe.exists():
        raise UserError(f"cannot find the Python interpreter at {exe}")
    mounts = [] if str(base).startswith("/usr") else [Mount(str(base))]
    site = sysconfig.get_path("purelib")
    if site and Path(site).is_dir() and not site.startswith(str(base)) and not site.startswith("/usr"):
        mounts.append(Mount(site, SITE_IN_SANDBOX, env={"PYTHONPATH": SITE_IN_SANDBOX}))
    return [str(exe), "-B"], tuple(mounts)


def _run_driver(path: str, role: str, files: dict[str, bytes], limits: Limits, stdin: bytes = b"") -> ExecResult:
    """One half of check_python: a fork of a pre-imported sandboxed zygote ("zygote", see zygote.py) or a fresh
    sandbox and interpreter ("process")."""
    python, mounts = python_setup()
    if path == "zygote":
        return run_python_role(role, RunSpec(["_driver.py", role], files, limits, stdin=stdin, mounts=mounts), python)
    spec = RunSpec(python + ["_driver.py", role], {"_driver.py": DRIVER.read_bytes(), **files}, limits, stdin=stdin,
                   mounts=mounts)
    return run_program(spec)


def check_python(program: str, test_code: str, entry_points: str | Sequence[str], *, prelude: str = "",
                 timeout: float = 10.0, limits: Limits | None = None, seed: int = 0, sandbox: str | None = None
                 ) -> Verdict:
    """Run the tests of one Python sample through the two-process design above. `sandbox`: "zygote" (fork per
    sample of a long-lived sandboxed interpreter, the default where bwrap runs as root), "process" (a fresh
    sandbox per run); None picks; DSCODER_PY_SANDBOX=process forces the latter."""
    names = [entry_points] if isinstance(entry_points, str) else list(entry_points)
    if not names or not all(n.isidentifier() for n in names):
        raise UserError(f"check_python entry points must be Python identifiers, got {entry_points!r}")
    limits = limits or Limits(wall_s=timeout, output_bytes=16 << 20)
    path = sandbox or ("zygote" if zygote_available() else "process")
    if path not in ("zygote", "process") or (path == "zygote" and not zygote_available()):
        raise UserError(f"check_python sandbox {sandbox!r} is not available here (zygote needs bwrap as root)")
    spec = json.dumps({"entry_points": names, "seed": seed}).encode()
    cand = _run_driver(path, "candidate", {"spec.json": spec, "program.py": program.encode(),
                                           "test.py": test_code.encode()}, limits)
    if (early := _verdict_from_run(cand, "program")) is not None:
        return early
    if cand.detail == "sandbox zygote died":  # the sample broke its own sandbox: it fails, its neighbours do not
        return Verdict(False, "failed", "program: its sandbox zygote died", [cand])
    nonce = secrets.token_hex(16)
    checker_limits = replace(limits, wall_s=max(limits.wall_s, 5.0), output_bytes=1 << 16)
    chk = _run_driver(path, "checker", {"spec.json": spec, "test.py": test_code.encode(), "records.jsonl": cand.stdout},
                      checker_limits, stdin=json.dumps({"nonce": nonce, "prelude": prelude}).encode())
    lines = chk.stdout.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if chk.status == "ok" and last == f"PASS {nonce}":
        return Verdict(True, "passed", "", [cand, chk])
    if last.startswith("INFRA") or chk.status == "infra_error":
        return Verdict(False, "infra_error", last or chk.detail, [cand, chk])
    if chk.status in ("timeout", "memory", "output_limit"):
        return Verdict(False, chk.status, f"checker: {chk.status}", [cand, chk])
    return Verdict(False, "failed", last or chk.stderr[-300:].decode("utf-8", "replace"), [cand, chk])


# ---------------------------------------------------------------- other languages
@dataclass(frozen=True)
class Lang:
    """How to build and run one MultiPL-E language. `build`/`run` are shell words; {src} is the source file."""
    src: str
    tool: str                 # the binary whose presence decides toolchain_available
    package: str              # where it comes from (Debian 12 / npm)
    build: str
    run: str
    inject: Callable[[str, str], str]
    nproc: int = 64


def _body_end(src: str, signature: str) -> int:
    """Index of the closing brace of the body that follows the LAST match of `signature` (the test's main);
    skips string/char literals and comments so braces inside test data do not count. -1 if not found."""
    matches = list(re.finditer(signature, src))
    if not matches:
        return -1
    i, depth = src.find("{", matches[-1].end()), 0
    while 0 <= i < len(src):
        c = src[i]
        if src.startswith("//", i):
            i = src.find("\n", i)
            i = len(src) if i < 0 else i
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = len(src) if j < 0 else j + 1
        elif c == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif c == "'" and (m := re.match(r"'(\\.|[^\\'])'", src[i:i + 4])):
            i += m.end() - 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _before_close(signature: str, stmt: str) -> Callable[[str, str], str]:
    def inject(src: str, nonce: str) -> str:
        end = _body_end(src, signature)
        if end < 0:
            raise UserError(f"cannot find the test entry point ({signature}) to append the verdict nonce")
        return src[:end] + "\n" + stmt.replace("NONCE", nonce) + "\n" + src[end:]
    return inject


def _append(stmt: str) -> Callable[[str, str], str]:
    return lambda src, nonce: src.rstrip() + "\n" + stmt.replace("NONCE", nonce) + "\n"


CS_LISTENER = """
class DscoderAssertListener : System.Diagnostics.TraceListener {
    public override void Write(string m) {}
    public override void WriteLine(string m) {}
    public override void Fail(string m, string d) { System.Console.Error.WriteLine("Debug.Assert failed: " + m);
                                                    System.Environment.Exit(1); }
    public override void Fail(string m) { Fail(m, null); }
}
"""


def _inject_cs(src: str, nonce: str) -> str:
    """Mono ignores a failed Debug.Assert; a listener installed first in Main makes it exit 1, as under .NET."""
    src = _before_close(r"static\s+void\s+Main\s*\(", 'System.Console.WriteLine("NONCE");')(src, nonce)
    m = list(re.finditer(r"static\s+void\s+Main\s*\([^)]*\)\s*\{", src))[-1]
    hook = ("System.Diagnostics.Debug.Listeners.Clear(); "
            "System.Diagnostics.Debug.Listeners.Add(new DscoderAssertListener());")
    return src[:m.end()] + hook + src[m.end():] + CS_LISTENER


def _inject_java(src: str, nonce: str) -> str:
    if not os.environ.get("DSCODER_JAVATUPLES_JAR"):  # MultiPL-E imports it everywhere; most tasks never use it
        src = re.sub(r"^import org\.javatuples\.\*;\s*$", "", src, flags=re.M)
    return _before_close(r"static\s+void\s+main\s*\(", 'System.out.println("NONCE");')(src, nonce)


LANGS: dict[str, Lang] = {
    "cpp": Lang("main.cpp", "g++", "g++", "g++ -std=c++17 -O1 -o main main.cpp", "./main",
                _before_close(r"\bint\s+main\s*\(", 'std::printf("\\nNONCE\\n"); std::fflush(stdout);'), 64),
    "java": Lang("Main.java", "javac", "default-jdk-headless",
                 "javac -J-Xmx512m -J-XX:+UseSerialGC -J-XX:TieredStopAtLevel=1 -cp .:$JT -d . Main.java",
                 "java -Xmx512m -Xss64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -ea -cp .:$JT Problem",
                 _inject_java, 256),
    "js": Lang("main.js", "node", "nodejs", "true", "node main.js", _append('console.log("\\nNONCE");'), 256),
    "ts": Lang("main.ts", "tsc", "npm: typescript",
               "tsc --target es2020 --module commonjs --lib es2020,dom --skipLibCheck main.ts", "node main.js",
               _append('console.log("\\nNONCE");'), 256),
    "php": Lang("main.php", "php", "php-cli", "true", "php -d display_errors=stderr main.php",
                _append('echo PHP_EOL . "NONCE" . PHP_EOL;'), 64),
    "cs": Lang("main.cs", "mcs", "mono-mcs", "mcs -d:DEBUG -r:System.Numerics.dll -out:main.exe main.cs",
               "mono main.exe", _inject_cs, 256),
    "sh": Lang("main.sh", "bash", "bash", "true", "bash main.sh", _append('echo; echo "NONCE"'), 64),
    "go": Lang("main_test.go", "go", "golang-go", "go test -c -o main.test main_test.go",
               "./main.test -test.v -test.count=1",
               _append('func TestZzzDscoderNonce(t *testing.T) { fmt.Println("\\nNONCE") }'), 512),
    "rs": Lang("main.rs", "rustc", "rustup or rustc", "$RUSTC --edition 2021 -C opt-level=1 -o main main.rs",
               "./main", _before_close(r"\bfn\s+main\s*\(", 'println!("\\nNONCE");'), 64),
}
ALIASES = {"python": "py", "c++": "cpp", "javascript": "js", "typescript": "ts", "csharp": "cs", "c#": "cs",
           "bash": "sh", "rust": "rs", "go_test.go": "go"}


@functools.lru_cache(maxsize=None)
def _tool_setup(lang: str) -> tuple[dict[str, str], tuple[Mount, ...]] | None:
    """Env and mounts a language needs inside the sandbox, or None if its toolchain is missing here."""
    if lang == "py":
        return {}, ()
    spec = LANGS[lang]
    if lang == "rs":  # rustup's proxy lives in /root/.cargo; bind the real toolchain (its sysroot) read-only
        rustc = shutil.which("rustc")
        if not rustc:
            return None
        try:
            sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True,
                                     timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
        if not sysroot or not Path(sysroot, "bin", "rustc").exists():
            return None
        mounts = () if sysroot.startswith("/usr") else (Mount(sysroot),)
        return {"RUSTC": f"{sysroot}/bin/rustc"}, mounts
    if not shutil.which(spec.tool) or not shutil.which(spec.tool).startswith(("/usr/", "/bin/")):
        return None  # tools outside /usr would need their own mount; not needed for the Debian packages
    env = {}
    if lang == "go":
        env = {"GOCACHE": "/tmp/.gocache", "GOPATH": "/tmp/go", "GO111MODULE": "off", "GOFLAGS": "-buildvcs=false",
               "CGO_ENABLED": "0", "GOTELEMETRY": "off"}
    if lang == "java":
        jar = os.environ.get("DSCODER_JAVATUPLES_JAR", "")
        if jar and Path(jar).is_file():
            return {"JT": "/opt/javatuples.jar"}, (Mount(jar, "/opt/javatuples.jar"),)
        env = {"JT": ""}
    return env, ()


def toolchain_available(lang: str) -> bool:
    """True when the language's compiler/interpreter exists on this host (a missing one is a reported skip)."""
    return _tool_setup(_lang(lang)) is not None


def _lang(lang: str) -> str:
    lang = ALIASES.get(lang.lower(), lang.lower())
    if lang != "py" and lang not in LANGS:
        raise UserError(f"unknown language {lang!r}; known: py, {', '.join(LANGS)}")
    return lang


def check_program(lang: str, source: str, *, timeout: float = 10.0, build_timeout: float = 60.0,
                  memory_bytes: int = 2 << 30) -> Verdict:
    """Build and run a MultiPL-E program (prompt + completion + tests) in ONE sandbox: the build runs under a
    roomier CPU budget, then the source is removed and the test binary runs under `timeout`/RLIMIT_CPU."""
    lang = _lang(lang)
    if lang == "py":
        raise UserError("Python programs are checked with check_python (two-process verdicts)")
    setup = _tool_setup(lang)
    if setup is None:
        return Verdict(False, "skipped", f"toolchain for {lang} not installed ({LANGS[lang].package})")
    env, mounts = setup
    spec, nonce = LANGS[lang], secrets.token_hex(16)
    program = spec.inject(source, nonce)
    run_cpu = int(timeout) + 1
    cpu_cap = " ".join(prlimit_argv({"cpu": (run_cpu, run_cpu + 1)}))  # the test run's own, tighter CPU limit
    rm_src = f"rm -f {spec.src}\n" if spec.build != "true" else ""  # a built test needs no source to read
    script = (f"({spec.build}) </dev/null >&2 || {{ echo '@@dscoder-build-failed@@' >&2; exit 97; }}\n{rm_src}"
              f"exec {cpu_cap} timeout -s KILL {timeout} {spec.run}\n")
    limits = Limits(wall_s=build_timeout + timeout, cpu_s=build_timeout + timeout, memory_bytes=memory_bytes,
                    address_space_bytes=0, nproc=spec.nproc, tmpfs_bytes=512 << 20, output_bytes=1 << 20)
    res = run_program(RunSpec(["/bin/sh", "-c", script], {spec.src: program.encode()}, limits, mounts=mounts,
                              env=env))
    built = b"@@dscoder-build-failed@@" not in res.stderr
    if (early := _verdict_from_run(res, "build" if not built else "program")) is not None:
        return early
    if not built:
        return Verdict(False, "compile_error", res.stderr[-2000:].decode("utf-8", "replace"), [res])
    if res.exit_code in (124, 137) or res.signal == 9:
        return Verdict(False, "timeout", "program: killed at its time limit", [res])
    printed = nonce in res.stdout.decode("utf-8", "replace").splitlines()
    if res.exit_code == 0 and printed:
        return Verdict(True, "passed", "", [res])
    why = "exit status %s" % res.exit_code if res.exit_code else "the test did not reach its end (no nonce)"
    return Verdict(False, "failed", f"{why}; stderr: {res.stderr[-500:].decode('utf-8', 'replace')}", [res])
