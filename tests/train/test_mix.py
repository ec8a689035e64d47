"""`dscoder pretrain` over several named corpora mixed by weight: the sampler keeps every source at its share,
rows come from one source each, the mix is logged and resumes bitwise after SIGKILL, bad mixes are refused."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from pretrain_runs import kill_at_step, pretrain_args, run_cli, weights

from dscoder.cli import main as cli_main
from dscoder.train.metrics import read_metrics
from dscoder.train.packing import DocEncoder, MixedStream, PackedStream, source_seed

WEB_WORDS = ["zebra", "quartz", "meadow", "lantern", "harbor", "violet", "glacier", "orchard"]


def make_pages(root: Path, n: int = 160, seed: int = 1) -> Path:
    """A `data web`-like shard folder of prose pages that share no word with the code corpus."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"url": f"https://pages.example/{i}", "text": " ".join(rng.choice(WEB_WORDS)
                                                                   for _ in range(rng.randint(8, 30))) + "\n"}
            for i in range(n)]
    (root / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory) -> Path:
    return make_pages(tmp_path_factory.mktemp("web") / "pages")


def mixed_args(tok, code, web, out, steps=12, extra=()) -> list[str]:
    """The reference run's command line with two named corpora, code 3 : web 1."""
    return pretrain_args(tok, f"code={code}", out, steps,
                         ["--data", f"web={web}", "--mix", "code=3,web=1", *extra])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tok_dir, corpus_dir, web_dir):
    """One uninterrupted 12-step mixed run: (run folder, its stderr)."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    r = run_cli(mixed_args(tok_dir, corpus_dir, web_dir, out))
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def _tagged(path: Path, tag: int, seq_len: int = 3) -> PackedStream:
    """A real stream over `path` whose every token is `tag`: which source a window came from is visible."""
    return PackedStream([path], lambda texts: [[tag] * 5 for _ in texts], seq_len, heldout_every=1000,
                        shuffle_docs=8, seed=tag)


def test_sampled_fractions_follow_the_weights_at_every_step(corpus_dir, web_dir, tmp_path):
    math_dir = make_pages(tmp_path / "math", n=7, seed=2)           # tiny: cycles many times
    weights_ = {"code": 0.6, "web": 0.1, "math": 0.3}
    mix = MixedStream({"code": _tagged(corpus_dir, 1), "web": _tagged(web_dir, 2), "math": _tagged(math_dir, 3)},
                      weights_)
    tag = {"code": 1, "web": 2, "math": 3}
    seen = {n: 0 for n in tag}
    for step in range(1, 251):                                     # 1000 windows, in batches of 4
        batch = mix.next_windows(4)                                # (4, T+1)
        for row in batch.tolist():
            assert len(set(row)) == 1                              # a window comes from one source
            seen[next(n for n, t in tag.items() if t == row[0])] += 1
        assert seen == mix.counts
        n = 4 * step
        assert all(abs(seen[k] - w * n) < 1 for k, w in weights_.items()), (step, seen)   # exact to one window
    assert seen == {"code": 600, "web": 100, "math": 300}
    fields = mix.log_fields()["mix"]
    assert fields["math"]["fraction"] == 0.3 and fields["math"]["tokens"] == 300 * 3
    assert fields["math"]["epochs"] > fields["code"]["epochs"]     # each source cycles on its own
    # the command line's order and the weights' scale do not matter
    first = MixedStream({"code": _tagged(corpus_dir, 1), "web": _tagged(web_dir, 2), "math": _tagged(math_dir, 3)},
                        weights_)
    again = MixedStream({"math": _tagged(math_dir, 3), "web": _tagged(web_dir, 2), "code": _tagged(corpus_dir, 1)},
                        {"math": 30, "web": 10, "code": 60})
    assert all(torch.equal(first.next_windows(4), again.next_windows(4)) for _ in range(50))


def test_two_corpora_keep_their_content_and_resume_exactly(tok_dir, corpus_dir, web_dir):
    from dscoder.tokenizer.bpe import load_tokenizer

    tok = load_tokenizer(tok_dir)

    def make():
        return MixedStream({n: PackedStream([p], DocEncoder(tok, 0.5, seed=source_seed(5, n)), 31,
                                            shuffle_docs=16, shuffle_windows=8, seed=source_seed(5, n))
                            for n, p in (("code", corpus_dir), ("web", web_dir))}, {"code": 0.5, "web": 0.5})

    a = make()
    for _ in range(3):
        a.next_windows(4)
    state = a.state_dict()
    rows = torch.cat([a.next_windows(4) for _ in range(20)])
    order = []                                                     # which source each row came from, replayed
    counts = dict(state["counts"])
    for _ in range(len(rows)):
        n = sum(counts.values()) + 1
        pick = max(sorted(counts), key=lambda s: 0.5 * n - counts[s])
        counts[pick] += 1
        order.append(pick)
    for row, src in zip(rows.tolist(), order):
        text = tok.decode(row)
        has_web = any(w in text for w in WEB_WORDS)
        assert has_web == (src == "web"), (src, text)
        assert src == "code" or not any(k in text for k in ("def ", "return", "import"))
    b = make()
    b.load_state_dict(state)
    assert torch.equal(torch.cat([b.next_windows(4) for _ in range(20)]), rows) and b.counts == a.counts


def test_mixed_run_logs_the_sampled_mix(mixed):
    out, err = mixed
    rows = read_metrics(out / "metrics.jsonl")
    for r in rows:
        mix = r["mix"]
        assert mix["code"]["sequences"] + mix["web"]["sequences"] == 4 * r["step"]
        assert mix["code"]["tokens"] + mix["web"]["tokens"] == r["tokens"]
    assert rows[-1]["mix"]["code"]["fraction"] == 0.75 and rows[-1]["mix"]["web"]["sequences"] == 12
    assert "| mix code 0.75 web 0.25" in err.splitlines()[-2]                  # the progress line of step 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mix"]["web"] == {**rows[-1]["mix"]["web"], "weight": 0.25}
    assert "eval_loss" in rows[-1] and rows[-1]["loss"] < rows[0]["loss"]


def test_resume_after_sigkill_with_a_mix_is_bitwise(mixed, tok_dir, corpus_dir, web_dir, tmp_path):
    ref_dir = mixed[0]
    out = tmp_path / "killed"
    args = mixed_args(tok_dir, corpus_dir, web_dir, out)
    kill_at_step(args, out, 6)
    r = run_cli(mixed_args(tok_dir, corpus_dir, web_dir, out, extra=["--resume"]))
    assert r.returncode == 0, r.stderr
    keys = ("step", "loss", "grad_norm", "lr", "eval_loss", "mix", "tokens")
    got = [{k: x.get(k) for k in keys} for x in read_metrics(out / "metrics.jsonl")]
    assert got == [{k: x.get(k) for k in keys} for x in read_metrics(ref_dir / "metrics.jsonl")]
    a, b = weights(ref_dir / "final"), weights(out / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_changed_mix_is_refused(mixed, tok_dir, corpus_dir, web_dir, capsys):
    out = mixed[0]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    changed = mixed_args(tok_dir, corpus_dir, web_dir, out, extra=["--resume", "--mix", "code=1,web=1"])
    assert cli_main(changed) == 2                                   # the later --mix wins
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --resume: mix: {'code': 0.75, 'web': 0.25} -> " \
                                    "{'code': 0.5, 'web': 0.5} differ from the checkpoint" in err
    # the same mix on another scale is the same mix: the finished run has nothing to do
    assert cli_main(mixed_args(tok_dir, corpus_dir, web_dir, out, extra=["--resume", "--mix", "code=75,web=25"])) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_bad_mixes_exit_2_with_one_line_and_write_nothing(tok_dir, corpus_dir, web_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blob.py").write_bytes(b"\x00\xff\x00")
    code, web = f"code={corpus_dir}", f"web={web_dir}"
    cases = [
        ([code, web, "--mix", "code=1,web=1,math=1"], "--mix: unknown source 'math'"),
        ([code, web, "--mix", "code=0.6,web=0"], "argument --mix: web: weight must be > 0"),
        ([code, web, "--mix", "code=-1,web=1"], "argument --mix: code: weight must be > 0"),
        ([code, web, "--mix", "code=nan,web=1"], "argument --mix: code: weight expected a finite number"),
        ([code, web, "--mix", "code,web"], "argument --mix: expected NAME=WEIGHT"),
        ([code, web, "--mix", "code=1,code=2"], "argument --mix: code is weighted twice"),
        ([code, web, "--mix", "code=1"], "--mix: no weight for source 'web'"),
        ([code, web], "2 data sources (code, web): give their weights with --mix code=W,web=W"),
        ([code, str(web_dir), "--mix", "code=1"], f"data input {web_dir}: name every input"),
        ([str(corpus_dir), "--mix", "code=1"], "--mix weighs named inputs"),
        ([code, f"web={empty}", "--mix", "code=1,web=1"], f"data source web: no usable documents under {empty}"),
        ([code, f"web={tmp_path / 'missing'}", "--mix", "code=1,web=1"], "no such file or folder"),
    ]
    for i, (data, expected) in enumerate(cases):
        out = tmp_path / f"out{i}"
        args = ["pretrain", "--preset", "tiny", "--tokenizer", str(tok_dir), "--out", str(out), "--steps", "2",
                "--seq-len", "16", "--batch-size", "2", "--threads", "1", *data]
        assert cli_main(args) == 2, data
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error: " in err and expected in err, (data, err)
        assert not out.exists(), data

