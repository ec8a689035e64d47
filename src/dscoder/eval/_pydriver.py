"""The in-sandbox half of `runners.check_python`: verdicts the code under test cannot forge.

Standard library only: this file is copied into each sandbox and run there as `python3 _driver.py ROLE`.

ROLE "candidate" (process 1, holds the untrusted program): exec program.py, then exec test.py in a copy of its
namespace with every entry-point name rebound to a *recorder*. Each call the tests make is written to a private
copy of stdout as one JSON line: the encoded arguments and the encoded plain return value (or the exception type).
What check concludes here is ignored; the program's own prints go to stderr.

ROLE "checker" (process 2, no untrusted code at all): exec prelude.py (trusted benchmark text, e.g. the HumanEval
prompt with its helpers), then test.py with every entry-point name bound to a *replay* proxy that returns the
recorded plain values of calls with equal arguments, in order. Only if the whole test runs to its end does it
print "PASS <nonce>" (the nonce arrives on stdin). A call that was never recorded or whose value was not plain data
raises a BaseException subclass, so `except Exception` in a test cannot swallow it, and also marks the run failed.
"""
import builtins
import collections
import collections.abc
import json
import os
import random
import sys

MAX_ITEMS = 1_000_000
PLAIN_EXC = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), Exception)}


class Unserializable(Exception):
    pass


def encode(x, budget=None, depth=0):
    """Tagged JSON for plain data only: exact builtin types (subclasses are converted to their base first)."""
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0 or depth > 200:
        raise Unserializable("value too large or too deep")
    t = type(x)
    if x is None:
        return {"t": "none"}
    if t is bool:
        return {"t": "bool", "v": x}
    if t is int:
        return {"t": "int", "v": hex(x)}  # hex: no 4300-digit str() limit
    if t is float:
        return {"t": "float", "v": float.hex(x)}
    if t is complex:
        return {"t": "complex", "v": [float.hex(x.real), float.hex(x.imag)]}
    if t is str:
        return {"t": "str", "v": x}
    if t in (bytes, bytearray):
        return {"t": t.__name__, "v": bytes(x).hex()}
    if t in (list, tuple):
        return {"t": t.__name__, "v": [encode(e, budget, depth + 1) for e in x]}
    if t in (set, frozenset):  # canonical order, so both processes build equal keys
        return {"t": t.__name__, "v": sorted((encode(e, budget, depth + 1) for e in x), key=json.dumps)}
    if t is dict:
        return {"t": "dict", "v": [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in x.items()]}
    if t is range:
        return {"t": "range", "v": [x.start, x.stop, x.step]}
    for base in (int, float, str, bytes, list, tuple, dict, set, frozenset):  # namedtuple, IntEnum, str subclasses
        if isinstance(x, base):
            y = base(x)
            if type(y) is base:
                return encode(y, budget, depth)
    if t.__module__ == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
        return encode(x.item(), budget, depth)
    raise Unserializable(f"return value of type {t.__module__}.{t.__qualname__} is not plain data")


def decode(d):
    t, v = d["t"], d.get("v")
    simple = {"none": lambda: None, "bool": lambda: bool(v), "int": lambda: int(v, 16), "str": lambda: str(v),
              "float": lambda: float.fromhex(v), "complex": lambda: complex(float.fromhex(v[0]), float.fromhex(v[1])),
              "bytes": lambda: bytes.fromhex(v), "bytearray": lambda: bytearray.fromhex(v),
              "range": lambda: range(*v)}
    if t in simple:
        return simple[t]()
    if t in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](decode(e) for e in v)
    if t == "dict":
        return {decode(k): decode(e) for k, e in v}
    if t == "iter":
        return iter([decode(e) for e in v])
    raise ValueError(f"unknown tag {t!r}")


def args_key(args, kwargs) -> str:
    try:
        return json.dumps([encode(list(args)), encode(dict(sorted(kwargs.items())))], sort_keys=True)
    except Unserializable:  # e.g. a lambda passed by the test: match by position and type names only
        return json.dumps(["opaque", [type(a).__name__ for a in args], sorted(kwargs)])


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def run_candidate(spec):
    chan = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the program's own prints go to stderr, never into the record channel

    def emit(rec):
        chan.write(json.dumps(rec) + "\n")
        chan.flush()

    glb = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(_read("program.py"), "program.py", "exec"), glb)
    except BaseException as e:
        emit({"load_error": type(e).__name__, "msg": str(e)[:300]})
        return
    emit({"loaded": True})
    tst = dict(glb)
    for name in spec["entry_points"]:
        tst[name] = _recorder(name, glb.get(name), emit)
    random.seed(spec.get("seed", 0))
    try:
        exec(compile(_read("test.py"), "test.py", "exec"), tst)
    except BaseException:
        pass
    emit({"done": True})


def _recorder(name, fn, emit):
    def call(*args, **kwargs):
        key = args_key(args, kwargs)  # before the call: the program may mutate its arguments
        state = random.getstate()  # the program's own use of `random` must not shift the test's inputs
        try:
            ret = fn(*args, **kwargs)
        except BaseException as e:
            random.setstate(state)
            emit({"call": name, "args": key, "exc": type(e).__name__})
            raise
        random.setstate(state)
        if isinstance(ret, collections.abc.Iterator):  # a generator/map: materialise it, replay it as one
            items = []
            for e in ret:
                items.append(e)
                if len(items) > MAX_ITEMS:
                    break
            ret = iter(items)
            try:
                emit({"call": name, "args": key, "ret": {"t": "iter", "v": [encode(e) for e in items]}})
            except Unserializable as e:
                emit({"call": name, "args": key, "unserializable": str(e)})
            return ret
        try:
            emit({"call": name, "args": key, "ret": encode(ret)})
        except Unserializable as e:
            emit({"call": name, "args": key, "unserializable": str(e)})
        return ret
    return call


class NotReplayable(BaseException):
    """A call the candidate never answered with plain data; BaseException so `except Exception` cannot hide it."""


def run_checker(spec, records):
    table, violations = collections.defaultdict(collections.deque), []
    for rec in records:
        if "load_error" in rec:
            print(f"FAIL program did not load: {rec['load_error']}: {rec.get('msg', '')}")
            return 1
        if "call" in rec:
            table[(rec["call"], rec["args"])].append(rec)
    nsp = {"__name__": "__checker__", "__builtins__": builtins}
    try:
        exec(compile(spec.get("prelude", ""), "prelude.py", "exec"), nsp)
    except BaseException as e:
        print(f"INFRA prelude failed: {type(e).__name__}: {e}")
        return 3
    for name in spec["entry_points"]:
        nsp[name] = _replayer(name, table, violations)
    random.seed(spec.get("seed", 0))
    try:
        exec(compile(_read("test.py"), "test.py", "exec"), nsp)
    except BaseException as e:
        print(f"FAIL {type(e).__name__}: {str(e)[:300]}")
        return 1
    if violations:
        print(f"FAIL {violations[0]}")
        return 1
    print(f"PASS {spec['nonce']}")
    return 0


def _replayer(name, table, violations):
    def call(*args, **kwargs):
        queue = table.get((name, args_key(args, kwargs)))
        if not queue:
            violations.append(f"call {name}{args!r:.200} has no recorded result (the program did not answer it)")
            raise NotReplayable(violations[-1])
        rec = queue.popleft()
        if "exc" in rec:
            exc = getattr(builtins, rec["exc"]) if rec["exc"] in PLAIN_EXC else None
            if exc is None:
                if rec["exc"] in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"):
                    violations.append(f"the program raised {rec['exc']} in {name}")
                    raise NotReplayable(violations[-1])
                exc = type(rec["exc"], (Exception,), {})
            raise exc(f"(replayed) {rec['exc']} raised by {name}")
        if "unserializable" in rec:
            violations.append(f"{name} returned a value that is not plain data: {rec['unserializable']}")
            raise NotReplayable(violations[-1])
        return decode(rec["ret"])
    return call


def main(argv):
    sys.set_int_max_str_digits(0)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    spec = json.loads(_read("spec.json"))
    if argv[1] == "candidate":
        run_candidate(spec)
        return 0
    spec.update(json.loads(sys.stdin.read()))  # the nonce and prelude come on stdin, the records in a file
    with open("records.jsonl", encoding="utf-8") as f:
        records = []
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a torn last line (the program was killed mid-write)
    return run_checker(spec, records)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
