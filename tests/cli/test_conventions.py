"""The command-line conventions written in `dscoder.cli`'s docstring, checked on every verb's real parser, and the
last-resort guard that turns an unexpected exception into one line."""
import argparse
import importlib

import pytest

from dscoder import args as A
from dscoder import cli

MODEL_VERBS = ("pretrain", "generate", "infill", "chat", "eval")
# a concept -> the one option that spells it and the one argparse type that parses it
SHARED = {"--seed": (A.seed,), "--workers": (A.positive_int,), "--out": (A.out_dir, A.out_file),
          "--languages": (A.comma_list,), "--max-new-tokens": (A.positive_int,), "--timeout": (A.positive_float,)}


# renamed options: the old spelling still parses, hidden from --help (None: the input became positional)
RENAMED = [("pretrain", "--threads", "--workers"), ("pretrain", "--data", None), ("tokenizer train", "--input", None),
           ("eval", "--language", "--languages")]


class _Captured(Exception):
    pass


def _parser(verb: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `verb` builds, taken at its parse_args call (the verb runs no further)."""
    def capture(self, *a, **kw):
        raise _Captured(self)
    monkeypatch.setattr(A.Parser, "parse_args", capture)
    mod, fn = cli.VERBS[verb][0].split(":")
    with pytest.raises(_Captured) as got:
        getattr(importlib.import_module(mod), fn)([])
    return got.value.args[0]


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


@pytest.fixture(scope="module")
def parsers():
    mp = pytest.MonkeyPatch()
    try:
        return {verb: _parser(verb, mp) for verb in cli.VERBS}
    finally:
        mp.undo()


def test_every_verb_uses_the_shared_parser_and_every_argument_has_help(parsers):
    missing = []
    for verb, p in parsers.items():
        assert isinstance(p, A.Parser) and p.prog == f"dscoder {verb}"
        for a in p._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            if not (a.help or "").strip():
                missing.append(f"{verb} {a.option_strings or a.dest}")
    assert not missing, f"arguments without help: {missing}"


def test_one_concept_one_option_one_type(parsers):
    for verb, p in parsers.items():
        opts = _options(p)
        for flag, kinds in SHARED.items():
            if flag in opts:
                assert opts[flag].type in kinds, f"{verb} {flag} is parsed by {opts[flag].type}"
        if verb in MODEL_VERBS:
            assert {"--device", "--dtype"} <= set(opts), f"{verb} has no --device/--dtype"
            assert opts["--device"].type is A.device_name and opts["--dtype"].type is A.dtype_name
            assert opts["--device"].default == "auto" and opts["--dtype"].default == "auto"
    for verb, old, new in RENAMED:
        opts = _options(parsers[verb])
        assert opts[old].help == argparse.SUPPRESS and opts[old].dest == (opts[new].dest if new else old.lstrip("-"))
    for verb in ("generate", "infill", "chat"):
        assert _options(parsers[verb])["--truncate"].choices == ("left", "error")
        assert _options(parsers[verb])["--truncate"].default == "error"


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    # json.loads given the argv list raises TypeError: a real exception no verb turns into a UserError
    monkeypatch.setitem(cli.VERBS, "boom", ("json:loads", "raises TypeError"))
    monkeypatch.delenv("DSCODER_DEBUG", raising=False)
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dscoder boom: internal error: TypeError: ")
    assert "(re-run with DSCODER_DEBUG=1 for the traceback)" in err
    monkeypatch.setenv("DSCODER_DEBUG", "1")
    with pytest.raises(TypeError):
        cli.main(["boom"])


def test_help_and_unknown_verbs(capsys):
    assert cli.main([]) == 0 and "verbs:" in capsys.readouterr().out
    assert cli.main(["gen"]) == 2
    assert capsys.readouterr().err.startswith("dscoder: error: unknown verb 'gen'; one of: data build")
    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--truncate {left,error}" in out and "(default: error)" in out
