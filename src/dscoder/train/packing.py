"""Pretraining data: documents from files, FIM at the document level, packing into fixed windows (v1 paper §3.1).

* Sources: `data.corpus.iter_documents` (source folders and repositories, `.jsonl[.gz]` / `.parquet` shards with
  `text`; what it reads and skips is documented there), in a deterministic order; `PackedStream.stats` counts what
  it skipped.
* Split (`is_heldout`): a document is held out for eval loss when a stable hash of its text is 0 mod
  `heldout_every` (default 100 -> 1%). Hashing the text (not its position) keeps duplicates on one side.
* Packing (`PackedStream`): each document becomes `[BOS] + document_ids(...)` -- FIM (PSM, rate 0.5) is applied to
  the document BEFORE packing, as §3.1.2 prescribes -- and the documents are concatenated into one stream that is
  cut into non-overlapping windows of seq_len + 1 tokens (inputs = w[:-1], targets = w[1:]). When the corpus ends,
  the next epoch starts over the same order (FIM draws differ: the rng runs on).
* FIM draws: document k of the stream (counted from the start of training) gets its own rng, seeded by
  (seed, k), so whichever process tokenizes it draws the same split points.
* Resumability: `state_dict()` = (epoch, index of the next document, the leftover token buffer, the shuffle rng, the
  count of documents tokenized); `load_state_dict` puts the stream back at exactly that token.
* Mixing (`MixedStream`): several named corpora, each its own `PackedStream` (own shuffle and FIM seeds,
  `source_seed`), interleaved window by window by weight. The choice is the deterministic greedy of Megatron-LM's
  `build_blending_indices` (megatron/core/datasets/helpers.cpp): the next window comes from the source furthest
  below its share, so after n windows every source has about its weight x n windows (never a whole window more;
  at most about one fewer: 1.09 over 3,000 random mixes of 2-8 sources). A source cycles
  on its own (its epochs counted); the per-source counts are saved with the streams' positions.
* Data parallel: every rank runs the same stream (reading and shuffling texts is cheap) and so holds the same global
  batch, keeping rows r::world of it (`parallel.shard_rows`); the data order does not depend on the number of
  processes. Tokenizing is the costly part, so it is split: rank r encodes documents r::world of each chunk and
  the token ids are all-gathered. Packing documents back to back makes a row's tokens depend on the lengths of all
  earlier documents, so a rank cannot pick out and tokenize only the documents of its own rows.
"""
from __future__ import annotations

import copy
import hashlib
import random
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..data.corpus import CorpusStats, iter_documents
from ..errors import UserError


def is_heldout(text: str, every: int = 100) -> bool:
    """Stable split: blake2b of the text (not Python's salted hash) mod `every`."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % every == 0


# ----------------------------------------------------------------------------------------------- tokenizing
class DocEncoder:
    """texts -> `[BOS] + document_ids(text)` per text, FIM drawn from a per-document rng (see the module docstring).

    The tokenizer's fast backend encodes the chunk's whole texts in one batch call (Rust threads) up front;
    `document_ids` then asks for either a whole text (non-FIM: served from that batch) or for FIM pieces.
    With `dist` (a `parallel.Dist` of more than one process) each rank encodes its share of every call and the
    results are all-gathered: every rank must call with the same texts."""

    def __init__(self, tokenizer, fim_rate: float = 0.5, spm_rate: float = 0.0, seed: int = 0, dist=None):
        from ..tokenizer.fim import document_ids
        from ..tokenizer.special import special_ids

        if not 0.0 <= fim_rate <= 1.0:
            raise UserError(f"--fim-rate must be in [0, 1], got {fim_rate}")
        self._document_ids = document_ids
        self.ids = special_ids(tokenizer, require_fim=fim_rate > 0)
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is not None:
            # a private copy that encodes special-token strings found in the data as plain text: a file that
            # contains "<｜fim▁hole｜>" must not inject a sentinel into the training stream
            self.backend = copy.deepcopy(self.backend)
            self.backend.encode_special_tokens = True
        self.fim_rate, self.spm_rate, self.seed = fim_rate, spm_rate, seed
        self.dist = dist if dist is not None and dist.world > 1 else None
        self.count = 0                                 # documents encoded so far: the next one's rng index

    def _encode_one(self, s: str) -> list[int]:
        if self.backend is not None:
            return self.backend.encode(s, add_special_tokens=False).ids
        return self.tokenizer(s, add_special_tokens=False)["input_ids"]

    def _encode(self, texts: list[str], first: int, step: int) -> list[list[int]]:
        """texts[first::step], document k of them drawing FIM from rng (seed, count + first + k * step)."""
        mine = texts[first::step]
        if self.backend is not None:
            whole = [e.ids for e in self.backend.encode_batch(mine, add_special_tokens=False)]
        else:
            whole = self.tokenizer(mine, add_special_tokens=False)["input_ids"] if mine else []
        cache = dict(zip(mine, whole))

        def encode(s: str) -> list[int]:
            hit = cache.get(s)
            return list(hit) if hit is not None else self._encode_one(s)

        out = []
        for k, t in enumerate(mine):
            rng = random.Random(f"fim/{self.seed}/{self.count + first + k * step}")
            out.append([self.ids.bos] + list(self._document_ids(t, encode, self.ids, rng, self.fim_rate,
                                                                 self.spm_rate)))
        return out

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.dist is None:
            out = self._encode(texts, 0, 1)
        else:
            from .parallel import all_gather_objects

            world = self.dist.world
            out = [[] for _ in texts]
            for r, part in enumerate(all_gather_objects(self._encode(texts, self.dist.rank, world), self.dist)):
                out[r::world] = part
        self.count += len(texts)
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if "count" not in state:
            raise UserError("the checkpoint's data position comes from an older FIM rng scheme and cannot be "
                            "resumed exactly; start a new run (--init-from CHECKPOINT keeps the weights)")
        self.seed, self.count = int(state["seed"]), int(state["count"])


# ----------------------------------------------------------------------------------------------- packing
class PackedStream:
    """Fixed (n, seq_len + 1) windows packed from one split of the corpus; exactly resumable.

    `shuffle_docs` > 0 draws documents through a seeded shuffle buffer of that many documents (a corpus no
    larger than the buffer is fully shuffled each epoch): files and shards come sorted, and packing neighbouring
    files (one package after another) gives batches far from the corpus distribution. The buffer is saved as
    document indices, so a checkpoint stays small; resuming re-reads those documents. `shuffle_windows` > 0
    then draws each batch's rows from a pool of that many packed windows (saved as tokens)."""

    def __init__(self, paths: list[str | Path], encode: Callable[[list[str]], list[list[int]]], seq_len: int,
                 split: str = "train", heldout_every: int = 100, docs_per_chunk: int = 64, epochs: int | None = None,
                 shuffle_docs: int = 0, shuffle_windows: int = 0, seed: int = 0):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train or heldout, got {split!r}")
        if seq_len < 1 or heldout_every < 2 or shuffle_docs < 0 or shuffle_windows < 0:
            raise UserError(f"bad data settings: seq_len {seq_len}, heldout_every {heldout_every} (need >= 2), "
                            f"shuffle_docs {shuffle_docs}")
        self.paths, self.encode, self.seq_len = [Path(p) for p in paths], encode, seq_len
        self.split, self.heldout_every, self.docs_per_chunk, self.epochs = split, heldout_every, docs_per_chunk, epochs
        self.shuffle_docs, self.shuffle_windows, self.rng = shuffle_docs, shuffle_windows, random.Random(seed)
        self.windows: list[list[int]] = []             # packed windows waiting to be drawn (shuffle_windows)
        self.epoch, self.doc_index, self.buffer = 0, 0, []
        self.pool: list[tuple[int, str]] = []          # (index in the epoch's document order, text)
        self._docs: Iterator[str] | None = None
        self.stats = CorpusStats()                     # what reading skipped, per file read to its end

    def _wanted(self, text: str) -> bool:
        return is_heldout(text, self.heldout_every) == (self.split == "heldout")

    def _open(self, keep: set[int] = frozenset()) -> Iterator[str]:
        docs = iter_documents(self.paths, stats=self.stats)
        for i in range(self.doc_index):              # resume: re-read (not re-tokenize) the consumed documents
            text = next(docs, None)
            if i in keep:                            # ... and put the shuffle buffer's documents back
                self.pool.append((i, text))
        return docs

    def _read(self) -> tuple[int, str] | None:
        """The next document of this split in file order, or None at the end of the epoch."""
        if self._docs is None:
            self._docs = self._open()
        while (text := next(self._docs, None)) is not None:
            self.doc_index += 1
            if self._wanted(text):
                return self.doc_index - 1, text
        return None

    def _next_doc(self) -> str | None:
        """Next document in training order (through the shuffle buffer); None at the end of the epoch."""
        while len(self.pool) < max(1, self.shuffle_docs):
            doc = self._read()
            if doc is None:
                break
            self.pool.append(doc)
        if not self.pool:
            return None
        j = self.rng.randrange(len(self.pool)) if self.shuffle_docs else 0
        self.pool[j], self.pool[-1] = self.pool[-1], self.pool[j]
        return self.pool.pop()[1]

    def _next_chunk(self) -> list[str] | None:
        """Up to docs_per_chunk documents of this split; None when `epochs` are used up or the split is empty."""
        chunk: list[str] = []
        rolled = False
        while len(chunk) < self.docs_per_chunk:
            text = self._next_doc()
            if text is None:
                if chunk:
                    break                            # hand out this chunk before rolling the epoch
                if rolled or (self.epochs is not None and self.epoch + 1 >= self.epochs):
                    return None                      # a whole epoch gave nothing of this split, or no epochs left
                self.epoch, self.doc_index, self._docs, rolled = self.epoch + 1, 0, None, True
                continue
            chunk.append(text)
        return chunk

    def next_windows(self, n: int) -> torch.Tensor | None:
        """(n, seq_len + 1) LongTensor, or None when the data (limited `epochs`, or an empty split) runs out.

        With `shuffle_windows`, rows are drawn at random from a pool of that many packed windows, so one batch
        mixes many documents instead of a few consecutive ones (a long document fills several windows)."""
        if not self.shuffle_windows:
            return self._pack(n)
        while len(self.windows) < max(n, self.shuffle_windows):
            w = self._pack(1)
            if w is None:
                break
            self.windows.append(w[0].tolist())
        if len(self.windows) < n:
            return None
        rows = []
        for _ in range(n):
            j = self.rng.randrange(len(self.windows))
            self.windows[j], self.windows[-1] = self.windows[-1], self.windows[j]
            rows.append(self.windows.pop())
        return torch.tensor(rows, dtype=torch.long)  # (n, T+1)

    def _pack(self, n: int) -> torch.Tensor | None:
        need = n * (self.seq_len + 1)
        while len(self.buffer) < need:
            chunk = self._next_chunk()
            if chunk is None:
                return None
            for ids in self.encode(chunk):
                self.buffer.extend(ids)
        out, self.buffer = self.buffer[:need], self.buffer[need:]
        return torch.tensor(out, dtype=torch.long).view(n, self.seq_len + 1)  # (n, T+1)

    def state_dict(self) -> dict:
        st = {"epoch": self.epoch, "doc_index": self.doc_index, "buffer": torch.tensor(self.buffer, dtype=torch.int64),
              "pool": [i for i, _ in self.pool], "shuffle_rng": self.rng.getstate(),
              "windows": torch.tensor(self.windows, dtype=torch.int64).view(-1, self.seq_len + 1)}
        if hasattr(self.encode, "state_dict"):
            st["encoder"] = self.encode.state_dict()
        return st

    def load_state_dict(self, st: dict) -> None:
        self.epoch, self.doc_index = int(st["epoch"]), int(st["doc_index"])
        self.buffer = [int(x) for x in st["buffer"].tolist()]
        self.windows = st["windows"].tolist() if "windows" in st else []
        if "shuffle_rng" in st:
            self.rng.setstate(_as_rng_state(st["shuffle_rng"]))
        order = list(st.get("pool", []))
        self.pool = []
        self._docs = self._open(set(order))
        where = {i: k for k, i in enumerate(order)}
        self.pool.sort(key=lambda d: where[d[0]])    # the saved buffer order, which the next draws depend on
        if "encoder" in st and hasattr(self.encode, "load_state_dict"):
            self.encode.load_state_dict(st["encoder"])


def source_seed(seed: int, name: str) -> int:
    """The shuffle and FIM seed of the mixed source `name`: 64 bits of blake2b(seed, name), so sources draw
    independently and adding a source changes no other source's stream."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class MixedStream:
    """(n, seq_len + 1) windows from several `PackedStream`s, each window from one source chosen by weight (see
    the module docstring); exactly resumable. `weights` (name -> weight > 0, any scale) fix the order of the
    sources (by name, so the command line's order does not matter). A source that runs out (limited `epochs`,
    the held-out split) is dropped and the others go on; None once every source has run out."""

    def __init__(self, streams: dict[str, PackedStream], weights: dict[str, float]):
        if not streams or set(streams) != set(weights) or min(weights.values()) <= 0:
            raise ValueError(f"need a positive weight for each source, got {weights} for {sorted(streams)}")
        self.names = sorted(streams)
        self.streams = {n: streams[n] for n in self.names}
        total = sum(weights.values())
        self.weights = {n: weights[n] / total for n in self.names}
        self.counts = dict.fromkeys(self.names, 0)      # windows handed out per source
        self.exhausted: set[str] = set()

    def _pick(self) -> str | None:
        """The live source furthest below its share of the windows handed out after this one (ties: first)."""
        n = sum(self.counts.values()) + 1
        live = [s for s in self.names if s not in self.exhausted]
        return max(live, key=lambda s: self.weights[s] * n - self.counts[s]) if live else None

    def next_windows(self, n: int) -> torch.Tensor | None:
        rows = []
        while len(rows) < n:
            name = self._pick()
            if name is None:
                return None
            w = self.streams[name].next_windows(1)
            if w is None:
                self.exhausted.add(name)
                continue
            self.counts[name] += 1
            rows.append(w)
        return torch.cat(rows)                            # (n, T+1)

    @property
    def stats(self) -> CorpusStats:
        """What reading skipped, over all sources (CorpusStats is keyed by file)."""
        out = CorpusStats()
        for s in self.streams.values():
            out.shard_files.update(s.stats.shard_files)
            out.skipped.update(s.stats.skipped)
        return out

    def log_fields(self) -> dict:
        """The mix sampled so far, for metrics.jsonl: per source windows ("sequences"), their target tokens
        (seq_len each), the running fraction of all windows and the completed passes over the source."""
        total = max(1, sum(self.counts.values()))
        return {"mix": {n: {"sequences": c, "tokens": c * self.streams[n].seq_len, "fraction": round(c / total, 4),
                            "epochs": self.streams[n].epoch} for n, c in self.counts.items()}}

    def progress_note(self) -> str:
        total = max(1, sum(self.counts.values()))
        return " | mix " + " ".join(f"{n} {c / total:.2f}" for n, c in self.counts.items())

    def state_dict(self) -> dict:
        return {"sources": {n: s.state_dict() for n, s in self.streams.items()}, "counts": dict(self.counts),
                "exhausted": sorted(self.exhausted)}

    def load_state_dict(self, st: dict) -> None:
        if sorted(st.get("sources", {})) != self.names:
            raise UserError(f"the checkpoint's data sources ({', '.join(sorted(st.get('sources', {})))}) are not "
                            f"this run's ({', '.join(self.names)})")
        for n, s in self.streams.items():
            s.load_state_dict(st["sources"][n])
        self.counts = {n: int(st["counts"][n]) for n in self.names}
        self.exhausted = set(st.get("exhausted", []))


def _as_rng_state(st):
    """random.Random state after a round trip through torch.save / weights_only load (lists for tuples)."""
    return (st[0], tuple(st[1]), st[2]) if isinstance(st, (list, tuple)) else st


def check_corpus(paths: list[str | Path], heldout_every: int = 100) -> tuple[int, int]:
    """(train docs seen, held-out docs seen) after reading until one training document turns up.

    Raises UserError when the corpus has no usable training document -- before anything is written."""
    n_train = n_held = 0
    for text in iter_documents(paths):
        if is_heldout(text, heldout_every):
            n_held += 1
        else:
            n_train += 1
            return n_train, n_held
    where = ", ".join(str(p) for p in paths)
    if n_held:
        raise UserError(f"all {n_held} usable documents under {where} fell in the held-out split; add more data")
    raise UserError(f"no usable documents under {where} (need UTF-8 source/text files, or .jsonl/.parquet with "
                    "a 'text' column)")


def heldout_batches(paths: list[str | Path], encode: Callable, seq_len: int, n_batches: int, rows: int,
                    heldout_every: int = 100) -> list[torch.Tensor]:
    """Up to n_batches fixed eval batches from one pass over the held-out split (same batches at every eval)."""
    stream = PackedStream(paths, encode, seq_len, split="heldout", heldout_every=heldout_every, epochs=1)
    return take_batches(stream, n_batches, rows)


def take_batches(stream: PackedStream | MixedStream, n_batches: int, rows: int) -> list[torch.Tensor]:
    """Up to n_batches batches of `rows` windows from a finite stream."""
    out = []
    for _ in range(n_batches):
        b = stream.next_windows(rows)
        if b is None:
            break
        out.append(b)
    return out
