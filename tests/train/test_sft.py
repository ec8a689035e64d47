"""`dscoder sft`: template and masks, packing, LoRA through PEFT, bad input, bitwise resume after SIGKILL, and a
tiny model that learns a handful of replies (asked through `dscoder chat`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_runs import ENV, kill_at_step, weights

from dscoder.train.loop import IGNORE_INDEX
from dscoder.train.metrics import read_metrics
from dscoder.train.sft import FINETUNE_SYSTEM, chat_template, collate, encode_conversation

SYSTEM = "Reply with code."
PAIRS = [("name a fruit", "apple"), ("name a colour", "green"), ("add one and two", "three"),
         ("say hello", "hello world")]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok_dir) -> Path:
    """A tiny random v1 model with the tests' tokenizer (and its saved v1 chat template): an HF folder."""
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import load_tokenizer
    from dscoder.tokenizer.special import special_ids
    from dscoder.train import checkpoint as ckpt

    tok = load_tokenizer(tok_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=448, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=ids.bos, eos_token_id=ids.eos)
    return ckpt.save_hf_folder(tmp_path_factory.mktemp("base") / "model", build_model(cfg), tok)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"instruction": q, "output": a} for q, a in PAIRS]
    rows.append({"messages": [{"role": "user", "content": "name a fruit"}, {"role": "assistant", "content": "apple"},
                              {"role": "user", "content": "another"}, {"role": "assistant", "content": "pear"}]})
    rows += ["{not json", {"instruction": "x"}, {"instruction": "x", "output": 3}, {"instruction": "x", "output": " "},
             {"messages": [{"role": "user", "content": "hi"}]}]
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", rows)


def run_cli(args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """`dscoder ARGS` in this process, through the CLI's entry point (no interpreter start-up per run): exit
    status, stdout and stderr as `subprocess.run` gives them; `input` is stdin."""
    import contextlib
    import io

    from dscoder.cli import main
    out, err = io.StringIO(), io.StringIO()
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = stdin
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def sft_args(base, data, out, *extra) -> list[str]:
    return ["sft", "--model", str(base), str(data), "--out", str(out), "--template", "v1", "--system", SYSTEM,
            "--seq-len", "96", "--batch-size", "4", "--lr", "3e-3", "--seed", "3", "--workers", "1", *extra]


def _tokenizer(base, template="v1", system=SYSTEM):
    from dscoder.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(base)
    tok.chat_template, _ = chat_template(template, tok.chat_template, system)
    return tok


# ------------------------------------------------------------------------------------------- template, masks
def test_prompt_ids_equal_saved_tokenizers_chat_template(base, data, tmp_path):
    r = run_cli(sft_args(base, data, tmp_path / "run", "--steps", "1"))
    assert r.returncode == 0, r.stderr
    from transformers import AutoTokenizer
    auto = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    tok = _tokenizer(base)
    eot = tok.convert_tokens_to_ids("<|EOT|>")
    msgs = [{"role": "user", "content": "add one and two"}, {"role": "assistant", "content": "three"},
            {"role": "user", "content": "and again"}, {"role": "assistant", "content": "3"}]
    ids, labels = encode_conversation(tok, msgs, [eot])
    for turn in (1, 3):                     # each reply starts right after the saved tokenizer's prompt
        prompt = list(auto.apply_chat_template(msgs[:turn], add_generation_prompt=True, return_dict=False))
        assert ids[:len(prompt)] == prompt
        assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] == ids[len(prompt)]
    scored = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    # exactly the two replies, each "\n{content}\n<|EOT|>" (the generation prompt ends at "### Response:")
    want = tok.encode("\nthree\n", add_special_tokens=False) + [eot] + tok.encode("\n3\n", add_special_tokens=False)
    assert scored == want + [eot]
    assert auto.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                    add_generation_prompt=True).startswith(auto.bos_token + SYSTEM + "### Instruction")


def test_templates_and_system_prompts(base):
    from dscoder.tokenizer.chat import V1_CHAT_TEMPLATE
    tok = _tokenizer(base, "v1-finetune-script", None)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    # finetune_deepseekcoder.py's source: system prompt ("DeepSeek", final period) + "### Instruction:\n..."
    assert text == tok.bos_token + FINETUNE_SYSTEM + "### Instruction:\nhi\n### Response:"
    odd = 'quote \' " backslash \\ newline\n {{ x }} {% if %} émoji 🙂'
    for name, expect in (("v1", odd + "### Instruction:\nhi\n"), ("v2", odd + "\n\nUser: hi\n\n")):
        tok = _tokenizer(base, name, odd)
        assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == tok.bos_token + expect
    assert chat_template(None, V1_CHAT_TEMPLATE, None) == (V1_CHAT_TEMPLATE, "v1")
    from dscoder.errors import UserError
    with pytest.raises(UserError, match="no chat template"):
        chat_template(None, None, None)
    with pytest.raises(UserError, match="--system needs --template"):
        chat_template(None, "{{ messages }}", "x")


def test_v2_template_scores_reply_and_eos(base):
    tok = _tokenizer(base, "v2", None)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    ids, labels = encode_conversation(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                      [eos])
    scored = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert scored == tok.encode(" yo", add_special_tokens=False) + [eos]


def test_packed_rows_give_each_sample_its_unpacked_loss(base):
    from dscoder.models.hf import load_model
    from dscoder.train.loop import lm_loss

    tok = _tokenizer(base)
    eot = tok.convert_tokens_to_ids("<|EOT|>")
    samples = [encode_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a * k}],
                                   [eot]) for k, (q, a) in enumerate(PAIRS, 1)]
    model = load_model(base).eval()
    packed = collate([samples[:3], samples[3:]], pad_id=0, pack=True)
    with torch.no_grad():
        logits = model(packed.inputs, positions=packed.positions, attn_mask=packed.attn_mask)
        off, row = 0, 0
        for i, s in enumerate(samples):
            if i == 3:
                off, row = 0, 1
            n = len(s[0]) - 1
            alone = collate([[s]], pad_id=0, pack=False)
            loss_alone, _ = lm_loss(model, alone.inputs, alone.targets)
            loss_packed = torch.nn.functional.cross_entropy(logits[row, off:off + n], packed.targets[row, off:off + n],
                                                            ignore_index=IGNORE_INDEX)
            assert abs(loss_alone.item() - loss_packed.item()) < 1e-5, i
            off += n
    assert packed.positions[0, len(samples[0][0]) - 1] == 0           # positions restart at the second sample
    assert not packed.attn_mask[0, 0, len(samples[0][0]) - 1, 0]      # ... which cannot see the first


# ------------------------------------------------------------------------------------------- runs and bad input
def test_run_outputs_bad_records_and_lora_adapter(base, data, tmp_path):
    out = tmp_path / "lora"
    r = run_cli(sft_args(base, data, out, "--steps", "3", "--lora-rank", "4", "--lora-alpha", "8", "--pack"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())["data"]
    assert summary["records"] == 10 and summary["used"] == 5 and sum(summary["bad"].values()) == 5
    assert f"{data}:6 (not JSON)" in summary["bad_examples"] and f"{data}:7 (missing field 'output'" in r.stderr
    rows = read_metrics(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2, 3] and all(x["response_tokens"] > 0 for x in rows)
    assert {"loss", "lr", "tokens_per_s"} <= set(rows[0]) and (out / "loss.png").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    hf_base = AutoModelForCausalLM.from_pretrained(base)
    adapted = PeftModel.from_pretrained(hf_base, out / "adapter").eval()
    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    x = torch.tensor([[1, 5, 9, 30, 2, 7]])
    with torch.no_grad():
        a, b = adapted(x).logits, final(x).logits
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(x).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, plain, atol=1e-3)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("rows, extra, message", [
    (["{bad", {"instruction": "x"}], (), "no usable record"),
    ([{"instruction": "q", "output": "a"}], ("--lora-rank", "0"), "--lora-rank must be >= 1"),
])
def test_bad_input_exits_2_and_writes_nothing(base, tmp_path, rows, extra, message):
    out = tmp_path / "out"
    r = run_cli(sft_args(base, write_jsonl(tmp_path / "d.jsonl", rows), out, "--steps", "1", *extra))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("dscoder sft: error:")
    assert message in r.stderr and "Traceback" not in r.stderr and not out.exists()


def test_resume_after_sigkill_is_bitwise(base, data, tmp_path):
    args = ("--steps", "40", "--save-every", "5", "--lora-rank", "4", "--pack")
    ref = tmp_path / "straight"
    assert run_cli(sft_args(base, data, ref, *args)).returncode == 0
    out = tmp_path / "killed"
    kill_at_step(sft_args(base, data, out, *args), out, 12)
    assert not (out / "final").exists()
    r = run_cli(sft_args(base, data, out, *args, "--resume"))
    assert r.returncode == 0, r.stderr
    want = {x["step"]: (x["loss"], x["grad_norm"]) for x in read_metrics(ref / "metrics.jsonl")}
    got = read_metrics(out / "metrics.jsonl")
    assert [x["step"] for x in got] == list(range(1, 41))
    assert all((x["loss"], x["grad_norm"]) == want[x["step"]] for x in got)
    a, b = weights(ref / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli(sft_args(base, data, out, *args[:-1], "--resume"))        # --pack dropped: refused
    assert r.returncode == 2 and "pack" in r.stderr


# ------------------------------------------------------------------------------------------- it learns
def test_tiny_model_learns_replies_but_not_prompts(base, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": q, "output": a} for q, a in PAIRS])
    out = tmp_path / "run"
    r = run_cli(sft_args(base, data, out, "--steps", "80", "--warmup", "5"))
    assert r.returncode == 0, r.stderr
    from dscoder.models.hf import load_model
    tok = _tokenizer(base)
    eot = tok.convert_tokens_to_ids("<|EOT|>")
    batch = collate([[encode_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                          [eot])] for q, a in PAIRS], pad_id=0, pack=False)
    prompt = torch.full_like(batch.targets, IGNORE_INDEX)      # targets on the instruction's own tokens
    for i, (q, _) in enumerate(PAIRS):
        ids, q_ids = batch.inputs[i].tolist(), tok.encode(q, add_special_tokens=False)
        at = next(k for k in range(len(ids)) if ids[k:k + len(q_ids)] == q_ids)
        prompt[i, at - 1:at + len(q_ids) - 1] = batch.inputs[i, at:at + len(q_ids)]   # target k: input k + 1

    def losses(folder):
        m = load_model(folder).eval()
        with torch.no_grad():
            logits = m(batch.inputs).flatten(0, 1)
        ce = torch.nn.functional.cross_entropy
        return (ce(logits, prompt.flatten(), ignore_index=IGNORE_INDEX).item(),
                ce(logits, batch.targets.flatten(), ignore_index=IGNORE_INDEX).item())

    (p0, r0), (p1, r1) = losses(base), losses(out / "final")
    assert r1 < 0.1 * r0                    # replies learnt
    assert abs(p1 - p0) < 0.25 * p0         # the instruction tokens, never scored, stay near where they started
    for q, a in PAIRS:
        r = run_cli(["chat", "--model", str(out / "final"), "--system", SYSTEM, "--temperature", "0",
                     "--max-new-tokens", "12"], input=q + "\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == a, (q, r.stdout)


def test_torchrun_two_processes_matches_one(base, data, tmp_path):
    """DDP on gloo: the same rows split over two ranks, whose replies differ in length. The loss and the update are
    the token mean over the whole batch either way (`loop.train_step`)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(sft_args(base, data, one, "--steps", "2")).returncode == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "dscoder.cli", *sft_args(base, data, two, "--steps", "2")], env=ENV,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [x["response_tokens"] for x in a] == [x["response_tokens"] for x in b]
    assert [abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(a, b)] == [True, True]
    assert (two / "final" / "model.safetensors").is_file()
