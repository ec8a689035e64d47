"""Byte-level BPE tokenizer training and loading, the DeepSeek-Coder way (v1 paper §3.2; the released tokenizer.json).

DeepSeek-Coder trains byte-level BPE with Hugging Face `tokenizers` (32,000 learned tokens). The pre-tokenizer
splits, in sequence: every newline on its own (`[\\r\\n]`), letter runs with one optional leading space
(`\\s?\\p{L}+`), punctuation runs likewise (`\\s?\\p{P}+`), CJK runs, and SINGLE digits (`\\p{N}`); then bytes
are mapped to printable characters (ByteLevel, no prefix space, no GPT-2 regex). Isolating newlines keeps the SFT
prompt/response boundary stable; single digits keep numbers compositional.

The nine special tokens (`special.SPECIAL_TOKENS`) are added AFTER the learned vocab, in DeepSeek's order, so they
get ids V .. V+8 and `len(tokenizer)` is the model vocab before padding. A post-processor prepends BOS (as
DeepSeek's `add_bos_token: true`, `add_eos_token: false`). The folder written is a normal HF tokenizer folder
(`tokenizer.json`, `tokenizer_config.json` with the v1 chat template, `special_tokens_map.json`):

    dscoder tokenizer train --input repos/ corpus.jsonl --out tok/ --vocab-size 4096
    tok = load_tokenizer("tok/")        # also loads a released deepseek-coder-* folder
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..args import Parser, int_range, out_dir, positive_int
from ..data.corpus import MAX_BAD_FRACTION, CorpusStats, iter_documents
from ..errors import UserError
from .chat import V1_CHAT_TEMPLATE
from .special import BOS, EOS, SPECIAL_TOKENS

DEFAULT_MAX_BYTES = 50_000_000
MODEL_MAX_LENGTH = 16384         # DeepSeek-Coder v1 tokenizer_config (16K context after long-context training)
# DeepSeek-Coder's pre-tokenizer regexes, applied in this order (llama.cpp's transcription in llama-vocab.cpp)
SPLIT_PATTERNS = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")


# ----------------------------------------------------------------------------------------------- inputs
def iter_texts(inputs: Iterable[str | os.PathLike], max_bytes: int = DEFAULT_MAX_BYTES,
               stats: CorpusStats | None = None, max_bad_fraction: float = MAX_BAD_FRACTION) -> Iterator[str]:
    """Texts from files/folders by the rules of `data.corpus.iter_documents` (the same files `data build` and
    pretraining read; bad shard records counted into `stats` and bounded by `max_bad_fraction`), stopping once
    `max_bytes` UTF-8 bytes have been yielded."""
    paths = [Path(p) for p in inputs]
    for p in paths:                  # checked now, not when the trainer first pulls a text
        if not p.exists():
            raise UserError(f"input {str(p)!r}: no such file or directory")
    return _iter_texts(paths, max_bytes, stats, max_bad_fraction)


def _iter_texts(paths: list[Path], max_bytes: int, stats: CorpusStats | None, max_bad_fraction: float
                ) -> Iterator[str]:
    budget = max_bytes
    for text in iter_documents(paths, stats, max_bad_fraction):
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) >= budget:     # cut the last text at the cap, on a character boundary
            yield raw[:budget].decode("utf-8", "ignore")
            return
        budget -= len(raw)
        yield text


# ----------------------------------------------------------------------------------------------- building
def build_backend(vocab_size: int):
    """An untrained `tokenizers.Tokenizer` with DeepSeek-Coder's pre-tokenizer and a trainer for it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())              # byte-level: every byte is in the alphabet, so no UNK is needed
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in SPLIT_PATTERNS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def _finish(tok) -> None:
    """Add the special tokens after the learned vocab and the BOS-prepending post-processor."""
    from tokenizers import AddedToken, processors

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])


def tokenizer_config(chat_template: str = V1_CHAT_TEMPLATE) -> dict:
    """tokenizer_config.json contents: DeepSeek-Coder's settings (the released tokenizer_config.json), base-model
    EOS."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,   # DeepSeek pads with EOS
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,                 # decoding must return code byte for byte
        "chat_template": chat_template,
    }


def save_tokenizer(tok, out_dir: str | os.PathLike) -> None:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json into `out_dir`."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e})") from e
    files = {
        "tokenizer.json": tok.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(tokenizer_config(), indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS},
                                              indent=2, ensure_ascii=False),
    }
    for name, text in files.items():              # write-then-rename: never a half-written tokenizer folder
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out / name)


def train_tokenizer(inputs: Iterable[str] | list[str | os.PathLike], vocab_size: int,
                    out_dir: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
    """Train the byte-level BPE on `inputs` (a list of files/folders, or any iterable of text strings); save it
    to `out_dir` if given; return it as a transformers `PreTrainedTokenizerFast`.

    `vocab_size` counts the learned tokens (the 256 byte symbols included); the 9 special tokens come after. A
    small corpus can run out of merges first, in which case the learned vocab is smaller."""
    tok, _ = _train_backend(_resolve_inputs(inputs, max_bytes), vocab_size, max_bytes)
    if out_dir is not None:
        save_tokenizer(tok, out_dir)
    return _wrap(tok)


def _resolve_inputs(inputs, max_bytes: int) -> Iterable[str]:
    """Paths or texts. A list of PathLikes and one-line strings is a list of paths when it holds a PathLike or
    names an existing path (a missing one is then an error, not a tiny text to train on); anything else is texts."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise UserError("tokenizer inputs must be a list of paths or an iterable of texts, not a single value")
    if isinstance(inputs, (list, tuple)) and inputs and \
            all(isinstance(p, os.PathLike) or (isinstance(p, str) and "\n" not in p) for p in inputs) and \
            any(isinstance(p, os.PathLike) or os.path.exists(p) for p in inputs):
        return iter_texts(inputs, max_bytes)
    return _capped(inputs, max_bytes)


def _train_backend(texts: Iterable[str], vocab_size: int, max_bytes: int):
    """(trained tokenizers.Tokenizer with specials and post-processor, byte/text counter)."""
    if vocab_size <= 256:
        raise UserError(f"--vocab-size must be > 256 (the byte alphabet), got {vocab_size}")
    if max_bytes <= 0:
        raise UserError(f"--max-bytes must be positive, got {max_bytes}")
    counter = _Counted(texts)
    tok, trainer = build_backend(vocab_size)
    tok.train_from_iterator(counter, trainer=trainer)
    if counter.nbytes == 0:
        raise UserError("no text to train the tokenizer on (inputs empty, binary or undecodable)")
    _finish(tok)
    return tok, counter


def _capped(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    budget = max_bytes
    for t in texts:
        if not isinstance(t, str):
            raise UserError(f"train_tokenizer: expected text strings, got {type(t).__name__}")
        raw = t.encode("utf-8", "surrogatepass")
        if len(raw) >= budget:
            yield raw[:budget].decode("utf-8", "ignore")
            return
        budget -= len(raw)
        yield t


class _Counted:
    """Iterator wrapper that counts the UTF-8 bytes handed to the trainer (for the CLI report)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.nbytes, self.ntexts = texts, 0, 0

    def __iter__(self) -> Iterator[str]:
        for t in self.texts:
            self.nbytes += len(t.encode("utf-8", "surrogatepass"))
            self.ntexts += 1
            yield t


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    cfg = tokenizer_config()
    cfg.pop("tokenizer_class")
    cfg.pop("add_bos_token"), cfg.pop("add_eos_token")        # the post-processor already does it
    return PreTrainedTokenizerFast(tokenizer_object=tok, **cfg)


# ----------------------------------------------------------------------------------------------- loading
def _token_str(value) -> str | None:
    # older tokenizer_config.json files store tokens as {"__type": "AddedToken", "content": ...}
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path: str | os.PathLike):
    """A transformers `PreTrainedTokenizerFast` from a tokenizer folder: ours, or a released DeepSeek-Coder one
    (tokenizer.json + tokenizer_config.json naming LlamaTokenizerFast; there is no tokenizer.model).

    The folder's `tokenizer.json` pipeline is used as is, whatever `tokenizer_class` says: a Llama class would
    rebuild a SentencePiece-style pipeline around it. If the config asks for BOS (`add_bos_token`, the default)
    and the pipeline does not add it, a BOS-prepending post-processor is installed."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"tokenizer folder {folder} does not exist")
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    for f in (tj, tc):
        if not f.is_file():
            raise UserError(f"tokenizer folder {folder} has no {f.name} (expected a Hugging Face fast tokenizer)")
    try:
        from tokenizers import Tokenizer
        backend = Tokenizer.from_file(str(tj))
        cfg = json.loads(tc.read_text(encoding="utf-8"))
    except Exception as e:   # tokenizers raises a bare Exception on a corrupt file; json ValueError; OSError
        raise UserError(f"tokenizer folder {folder}: cannot read its files ({e})") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{tc}: expected a JSON object")
    bos = _token_str(cfg.get("bos_token")) or BOS
    if cfg.get("add_bos_token", True) and backend.token_to_id(bos) is not None:
        _ensure_bos(backend, bos)
    kwargs = {k: _token_str(cfg[k]) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if cfg.get(k)}
    # transformers >= 4.47 saves the template as chat_template.jinja beside tokenizer_config.json
    jinja = folder / "chat_template.jinja"
    template = cfg.get("chat_template") or (jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=cfg.get("model_max_length", MODEL_MAX_LENGTH),
        chat_template=template, clean_up_tokenization_spaces=False, **kwargs)


def _ensure_bos(backend, bos: str) -> None:
    from tokenizers import processors

    bos_id = backend.token_to_id(bos)
    if backend.encode("x", add_special_tokens=True).ids[:1] != [bos_id]:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])


def plain_encoder(tokenizer):
    """str -> ids with NO special tokens added and special-token strings in the text encoded as ordinary text,
    so training data that contains `<｜fim▁hole｜>` cannot inject a sentinel (what `fim.document_ids` wants)."""
    import copy
    backend = copy.deepcopy(getattr(tokenizer, "backend_tokenizer", tokenizer))
    backend.encode_special_tokens = True
    return lambda text: backend.encode(text, add_special_tokens=False).ids


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """Train a byte-level BPE tokenizer (DeepSeek-Coder pre-tokenizer, 9 special tokens after the learned vocab,
    BOS added, v1 chat template) on files, folders and .jsonl/.parquet shards; write a Hugging Face tokenizer
    folder to --out."""
    ap = Parser("dscoder tokenizer train", main.__doc__)
    ap.add_inputs("input", "PATH", "files or folders (walked; binary/undecodable files skipped) or .jsonl/.parquet "
                  "shards", alias="--input")
    ap.add_argument("--out", required=True, type=out_dir, metavar="DIR", help="output folder (created)")
    ap.add_argument("--vocab-size", type=int_range(257), default=32000, metavar="N",
                    help="learned tokens incl. 256 bytes; specials come after (DeepSeek-Coder: 32000)")
    ap.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES, metavar="N",
                    help="stop reading after this many bytes")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tok, counter = _train_backend(iter_texts([Path(p) for p in args.input], args.max_bytes),
                                  args.vocab_size, args.max_bytes)
    save_tokenizer(tok, args.out)
    learned = tok.get_vocab_size(with_added_tokens=False)
    print(f"vocab {learned} learned + {len(SPECIAL_TOKENS)} special = {tok.get_vocab_size()} tokens; "
          f"read {counter.nbytes:,} bytes in {counter.ntexts:,} texts; {time.perf_counter() - t0:.1f}s -> {args.out}")
    return 0
