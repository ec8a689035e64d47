"""Text in, text out on top of `Engine`: code completion, fill-in-the-middle, chat; and the CLI verbs for each.

The prompt formats are DeepSeek-Coder's (the DeepSeek-Coder and -V2 READMEs; v1 paper §3.1 FIM, §4):
* completion: BOS + raw code, stop at EOS;
* infill (PSM): `<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>`, the model writes the middle and
  stops at EOS; only the middle is returned;
* chat: the tokenizer's Jinja chat template (or `--style` v1 / v2); stop at `<|EOT|>` or EOS.
`completion_ids`, `infill_ids` and `chat_ids` are the one place these prompts are built; eval uses them too.

Run it:
    dscoder generate --model ckpt "def fib(n):"
    dscoder infill --model ckpt --prefix "def f(x):\n    " --suffix "\n    return y"
    echo "write quicksort in python" | dscoder chat --model ckpt --style v1
"""
from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..args import (Parser, add_device_args, finite_float, non_negative_float, non_negative_int, positive_int,
                    read_stdin_text, read_text_arg, read_text_file, resolve_device_dtype, stdin_lines)
from ..args import seed as seed_int
from ..errors import UserError

if TYPE_CHECKING:  # torch is imported only once a model is loaded: bad CLI input fails fast
    from .engine import Engine

# --- prompt ids: the one builder for completion, FIM and chat (used by the verbs below and by eval) ------


def encode(tokenizer, text: str) -> list[int]:
    """Ids of `text` with no BOS added; special-token strings inside it map to their ids."""
    out = tokenizer.encode(text, add_special_tokens=False)
    return list(out.ids if hasattr(out, "ids") else out)


def decoder(tokenizer):
    """ids -> text, special tokens dropped (as DeepSeek's eval scripts decode)."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _cached(tokenizer, key: str, build: Callable[[], Any]) -> Any:
    """`build()` once per tokenizer object (special ids, the plain encoder): eval builds thousands of prompts."""
    try:
        slot = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # an object that cannot be weakly referenced: build each time
        return build()
    if key not in slot:
        slot[key] = build()
    return slot[key]


def _special(tokenizer):
    from ..tokenizer.special import special_ids
    return _cached(tokenizer, "special", lambda: special_ids(tokenizer))


def _plain(tokenizer) -> Callable[[str], list[int]]:
    """The tokenizer's encoder that keeps special-token strings as text (`tokenizer.bpe.plain_encoder`)."""
    from ..tokenizer.bpe import plain_encoder
    return _cached(tokenizer, "plain", lambda: plain_encoder(tokenizer))


def completion_ids(tokenizer, text: str) -> list[int]:
    """BOS + the code (DeepSeek-Coder's README: completion is BOS + raw code); the model continues it and stops at
    EOS."""
    if not text:
        raise UserError("empty prompt: give some code to complete")
    return [_special(tokenizer).bos, *encode(tokenizer, text)]


def infill_ids(tokenizer, prefix: str, suffix: str) -> list[int]:
    """BOS + the PSM prompt (`tokenizer.fim.psm_prompt_ids`): sentinels as ids, while sentinel strings that occur
    inside the code stay text. The model writes the middle and stops at EOS."""
    from ..tokenizer.fim import psm_prompt_ids
    if not prefix and not suffix:
        raise UserError("infill needs a prefix or a suffix (both are empty)")
    sp = _special(tokenizer)
    if not sp.has_fim:
        raise UserError("this tokenizer has no FIM sentinel tokens; fill-in-the-middle needs a base model trained "
                        "with FIM")
    return [sp.bos, *psm_prompt_ids(prefix, suffix, _plain(tokenizer), sp)]


def chat_ids(tokenizer, messages: Sequence[Any], style: str | None = None) -> list[int]:
    """The conversation rendered for the assistant's next turn by the tokenizer's Jinja chat template
    (`apply_chat_template(..., add_generation_prompt=True)`), the template saved with the tokenizer unless `style`
    picks DeepSeek-Coder's v1 or V2 template (`tokenizer.chat.CHAT_TEMPLATES`). The template writes BOS."""
    from ..tokenizer.chat import CHAT_TEMPLATES, validate_messages
    msgs = validate_messages(messages)
    if msgs[-1]["role"] != "user":
        raise UserError("chat needs a conversation that ends with a user message")
    if style is not None and style not in CHAT_TEMPLATES:
        raise UserError(f"chat style must be one of {', '.join(CHAT_TEMPLATES)}, got {style!r}")
    template = CHAT_TEMPLATES[style] if style else getattr(tokenizer, "chat_template", None)
    if not template:
        raise UserError("this tokenizer has no chat template; give a chat style (v1 or v2)")
    ids = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=True, add_generation_prompt=True,
                                        return_dict=False)
    return [int(t) for t in ids]


def stop_ids(tokenizer, kind: str, style: str | None = None) -> list[int]:
    """Token ids that end a reply: EOS for completion and FIM; for chat `<|EOT|>` (v1 instruct) and EOS, or EOS
    alone under the V2 template (V2 replies end with EOS, DeepSeek-Coder-V2's README)."""
    sp = _special(tokenizer)
    ids = (sp.eot, sp.eos) if kind == "chat" and style != "v2" else (sp.eos,)
    return [t for t in ids if t is not None]


def _run(engine: Engine, tokenizer, prompt: list[int], stops: list[int], gen: dict[str, Any]) -> str:
    gen = dict(gen)
    stops = [*stops, *gen.pop("stop_ids", ())]
    [out] = engine.generate([prompt], stop_ids=stops, decode=decoder(tokenizer), **gen)
    return out.text


def complete(engine: Engine, tokenizer, text: str, **gen) -> str:
    """Continue `text` (BOS + code); return only the new text. `gen` goes to `Engine.generate`."""
    return _run(engine, tokenizer, completion_ids(tokenizer, text), stop_ids(tokenizer, "completion"), gen)


def infill(engine: Engine, tokenizer, prefix: str, suffix: str, **gen) -> str:
    """The middle between `prefix` and `suffix` (PSM prompt, stop at EOS); nothing else is returned."""
    return _run(engine, tokenizer, infill_ids(tokenizer, prefix, suffix), stop_ids(tokenizer, "fim"), gen)


def chat(engine: Engine, tokenizer, messages: list[dict[str, str]], style: str | None = None, **gen) -> str:
    """The assistant's reply to `messages` ([{"role", "content"}, ...]) under the tokenizer's chat template, or
    DeepSeek-Coder's v1 / V2 template with `style`. Long conversations keep their last tokens, as DeepSeek's demo
    does (DeepSeek-Coder's README)."""
    gen.setdefault("truncate", "left")
    return _run(engine, tokenizer, chat_ids(tokenizer, messages, style), stop_ids(tokenizer, "chat", style), gen)


# --- CLI ----------------------------------------------------------------------------------------------


def load(model_dir: str, device: Any = "cpu", dtype: Any = None, quantize: str | None = None,
         speculate: str | None = None) -> tuple[Engine, Any]:
    """(Engine, tokenizer) from a Hugging Face folder holding config.json, weights and tokenizer files;
    `quantize="int8"` loads int8 Linear weights (`models.quant`), `speculate="ngram"` decodes with prompt-lookup
    drafts (`infer.speculative`)."""
    path = _model_folder(model_dir)
    import dscoder  # heavy imports only now, so a mistyped path fails in a fraction of a second
    from .engine import Engine
    try:
        tokenizer = dscoder.load_tokenizer(str(path))
    except UserError:
        raise
    except Exception as e:  # a folder without tokenizer files fails deep inside tokenizers/transformers
        raise UserError(f"cannot load the tokenizer from {model_dir!r}: {e}") from e
    model = dscoder.load_model(str(path), device=device, dtype=dtype, quantize=quantize)
    return Engine(model, speculate=speculate), tokenizer


def _parser(prog: str, doc: str | None) -> Parser:
    p = Parser(prog, doc)
    p.add_argument("--model", required=True, metavar="DIR",
                   help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N", help="tokens to generate at most")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=finite_float(0.0, 1.0, lo_open=True), default=1.0,
                   help="nucleus sampling: keep the smallest set of tokens with this much probability")
    p.add_argument("--top-k", type=non_negative_int, default=0,
                   help="sample among the K most likely tokens (0: all; at most the vocabulary size)")
    p.add_argument("--seed", type=seed_int, default=None, help="makes sampling reproducible (0 ... 2**64-1)")
    p.add_argument("--stop", action="append", default=[], metavar="S",
                   help="stop string, cut from the output (repeat the flag for several)")
    p.add_argument("--truncate", choices=("left", "error"), default="error",
                   help="a prompt that does not fit the context with --max-new-tokens: keep its last tokens "
                        "(left) or stop with an error")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: Linear weights as int8 with per-channel scales (a quarter of fp32's bytes per token)")
    p.add_argument("--speculate", choices=("none", "ngram"), default="none",
                   help="ngram: draft tokens from the prompt and the text so far, verified in one forward pass "
                        "(same output, fewer passes when the text repeats)")
    add_device_args(p)
    return p


def _gen(args: argparse.Namespace) -> dict[str, Any]:
    stops = [read_text_arg(s, f"--stop {i + 1}") for i, s in enumerate(args.stop)]
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, seed=args.seed, stop_strings=stops,
                truncate="left" if args.truncate == "left" else None)


def _model_folder(model_dir: str) -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"model folder {model_dir!r} does not exist")
    if not (path / "config.json").is_file():
        raise UserError(f"{model_dir!r} has no config.json: not a Hugging Face model folder")
    return path


def _check_sizes(args: argparse.Namespace, path: Path) -> None:
    """--top-k and --max-new-tokens against the vocabulary and context in config.json, before any weights load
    (a config.json without these numbers is left to the model loader to refuse)."""
    import json
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        vocab, context = int(cfg["vocab_size"]), int(cfg["max_position_embeddings"])
    except (OSError, ValueError, TypeError, KeyError):
        return
    if args.top_k > vocab:
        raise UserError(f"--top-k {args.top_k} is larger than the model's vocabulary of {vocab} tokens")
    if args.max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's context "
                        f"of {context} tokens")


def _load(args: argparse.Namespace) -> tuple[Engine, Any]:
    _check_sizes(args, _model_folder(args.model))   # a mistyped path or size fails before torch is imported
    device, dtype = resolve_device_dtype(args)
    return load(args.model, device, dtype, quantize=args.quantize, speculate=args.speculate)


def _cli_error(e: UserError) -> UserError:
    """The engine's context-overflow message names its Python arguments; give it the CLI's option names."""
    from .engine import ContextOverflow
    if isinstance(e, ContextOverflow):
        return UserError(e.advice(truncate="--truncate left", max_new_tokens="--max-new-tokens"))
    return e


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def main_generate(argv: list[str]) -> int:
    """Complete a code prompt with a checkpoint; prints only the new text.

    dscoder generate --model DIR [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed N]
                     [--stop S] [--stop S2 ...] [--truncate left|error] [--quantize none|int8]
                     [--speculate none|ngram] [--device D] [--dtype T] PROMPT
    (PROMPT "-" reads it from stdin)"""
    p = _parser("dscoder generate", main_generate.__doc__)
    p.add_argument("prompt", help='the code to continue; "-" reads stdin')
    args = p.parse_args(argv)
    prompt = read_stdin_text("the prompt on stdin") if args.prompt == "-" else read_text_arg(args.prompt, "the prompt")
    if not prompt:
        raise UserError("empty prompt: give some code to complete")
    engine, tok = _load(args)
    try:
        _emit(complete(engine, tok, prompt, **_gen(args)))
    except UserError as e:
        raise _cli_error(e) from None
    return 0


def _read(text: str | None, file: str | None, what: str) -> str:
    if text is not None and file is not None:
        raise UserError(f"give --{what} or --{what}-file, not both")
    if file is None:
        return read_text_arg(text or "", f"--{what}")
    return read_text_file(file, f"--{what}-file")


def main_infill(argv: list[str]) -> int:
    """Fill in the middle between a prefix and a suffix (FIM, PSM order); prints only the middle.

    dscoder infill --model DIR (--prefix TEXT | --prefix-file F) (--suffix TEXT | --suffix-file F) [sampling options]"""
    p = _parser("dscoder infill", main_infill.__doc__)
    p.add_argument("--prefix", metavar="TEXT", help="the code before the hole")
    p.add_argument("--suffix", metavar="TEXT", help="the code after the hole")
    p.add_argument("--prefix-file", metavar="FILE", help="read the prefix from FILE (UTF-8)")
    p.add_argument("--suffix-file", metavar="FILE", help="read the suffix from FILE (UTF-8)")
    args = p.parse_args(argv)
    prefix = _read(args.prefix, args.prefix_file, "prefix")
    suffix = _read(args.suffix, args.suffix_file, "suffix")
    if not prefix and not suffix:
        raise UserError("infill needs --prefix/--prefix-file or --suffix/--suffix-file")
    engine, tok = _load(args)
    try:
        _emit(infill(engine, tok, prefix, suffix, **_gen(args)))
    except UserError as e:
        raise _cli_error(e) from None
    return 0


def main_chat(argv: list[str]) -> int:
    """Chat with an instruct checkpoint. Interactive when stdin is a terminal; otherwise each stdin line is
    the next user message of one conversation, and each reply is printed on stdout.

    dscoder chat --model DIR [--style v1|v2] [--system TEXT] [sampling options]"""
    p = _parser("dscoder chat", main_chat.__doc__)
    p.add_argument("--style", choices=("v1", "v2"), default=None,
                   help="override the chat template saved with the tokenizer: v1 DeepSeek-Coder instruct, v2 Coder-V2 "
                        "(default: the saved template)")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt (v1 default: DeepSeek's)")
    args = p.parse_args(argv)
    system = read_text_arg(args.system, "--system") if args.system else None
    engine, tok = _load(args)
    gen = _gen(args)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    tty = sys.stdin.isatty()
    lines = stdin_lines("the chat input on stdin")
    while True:
        if tty:
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = next(lines, None)
        if line is None:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = chat(engine, tok, messages, style=args.style, **gen)
        except UserError as e:
            raise _cli_error(e) from None
        messages.append({"role": "assistant", "content": reply})
        _emit(reply)
