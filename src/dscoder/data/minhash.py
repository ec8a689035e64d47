"""Repo-level near-deduplication: MinHash + LSH over whole samples (v1 paper §2.3).

Each concatenated repo-level sample is one document ("repo-level minhash", README). `data build` signs each
file's block (path comment + content) where the file is read and takes a sample's signature as the element-wise
minimum over its files: MinHash of the union of the blocks' shingle sets, the same as signing the concatenation
except for the few shingles that straddle two files, and independent of how files were grouped into work units.
Defaults, with why:

- shingles: 5-grams of whitespace-separated tokens (BigCode's near-dedup and datatrove use 5-grams);
- 256 permutations (BigCode), signatures by `rensa.RMinHash` (permutations in Rust) over 64-bit shingle
  hashes computed in numpy without one Python object per word: a word's hash is a polynomial over its UTF-8
  bytes read off prefix sums (`word_hashes`, 64 KiB blocks), a shingle's hash folds its n word hashes in
  order. `benchmarks/bench_minhash.py` compares with datasketch on the same shingles (target >= 20x);
- LSH with 32 bands x 8 rows: candidate probability 1-(1-s^8)^32 is 0.5 at s≈0.65 and >0.98 at s=0.8, so pairs
  above the threshold are almost all found; each candidate pair is then *verified* by the signature agreement
  (the MinHash Jaccard estimate, sd ≈ 0.03 at 256 permutations) against `threshold` = 0.7 (BigCode's
  near-dedup threshold; the paper gives none);
- verified pairs are merged with union-find; of each cluster the sample with the smallest (repo, id) is kept,
  so the choice is deterministic and independent of the order in which signatures were computed.

Stages are split as in datatrove (signature, bucket, cluster, filter) but hand off in memory: on one machine the
signatures of 1M samples are 1 GiB at 256 x uint32, and the bucket pass is a dict per band.

    >>> p = MinHashParams()
    >>> sigs = signature_matrix(["a b c d e f g", "a b c d e f g", "x y z"], p)
    >>> near_duplicates([("r", "0"), ("r", "1"), ("r", "2")], sigs, p)
    {('r', '1'): ('r', '0')}
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class MinHashParams:
    ngram: int = 5            # shingle width in whitespace tokens
    num_perm: int = 256       # signature length
    bands: int = 32           # LSH bands; bands * rows must equal num_perm
    rows: int = 8
    threshold: float = 0.7    # estimated Jaccard at or above which two samples are duplicates
    seed: int = 42

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise UserError(f"MinHash parameters must be positive: {self}")
        if self.bands * self.rows != self.num_perm:
            raise UserError(f"MinHash bands x rows ({self.bands} x {self.rows}) must equal num_perm "
                            f"({self.num_perm})")
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"MinHash threshold must be in (0, 1], got {self.threshold}")


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of n-grams of whitespace tokens, each joined by one space; a text shorter than n is one shingle."""
    toks = text.split()
    if len(toks) <= n:
        return {" ".join(toks)}
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


_MIX = np.uint64(0x100000001B3)     # FNV-1a 64-bit prime: multiply-xor folds word hashes in order
_P = np.uint64(0x9E3779B97F4A7C15)   # odd, so invertible mod 2^64: the polynomial word hash's base
_Q = np.uint64(pow(int(_P), -1, 1 << 64))
_LEN = np.uint64(0xC2B2AE3D27D4EB4F)   # mixes the word length in ("\0a" and "a" must differ)
_BLOCK = 1 << 16                     # bytes per vectorised step: the uint64 temporaries stay in L2
# str.split() separators: ASCII ones are found byte-wise; the few non-ASCII ones become spaces first
_ASCII_WS = re.compile(rb"[\t-\r\x1c- ]")
_UNICODE_WS = re.compile("[%s]" % "".join(chr(c) for c in range(128, 0x3001) if chr(c).isspace()))
_SEPARATORS = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_WORD_BYTE = bytes(0 if i in _SEPARATORS else 1 for i in range(256))    # bytes.translate: 1 inside words
_POWERS: list[np.ndarray] = []       # [P^(k-1), Q^k] for k < len, grown on demand (one per process)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """up[k] = P^(k-1) and down[k] = Q^k (mod 2^64) for k < n, shape (n,) uint64 each."""
    if not _POWERS or len(_POWERS[0]) < n:
        size = max(n, 2 * _BLOCK)
        up, down = np.full(size, _P, np.uint64), np.full(size, _Q, np.uint64)
        up[0], down[0] = _Q, 1
        _POWERS[:] = [np.cumprod(up, out=up), np.cumprod(down, out=down)]    # wraps mod 2^64, as wanted
    return _POWERS[0], _POWERS[1]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: spreads the weak low bits of a polynomial hash."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _block_words(c: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, start offsets) of the words of one block of UTF-8 bytes c (L,) uint8 that starts and ends
    at word boundaries; inside (L,) bool marks word bytes. A word's hash is sum_j c_j P^(len-1-j) (plus its
    length), taken from the prefix sums of c_j Q^j with Q = 1/P."""
    mark = np.zeros(len(c) + 2, bool)                # padded: the block is bounded by whitespace
    mark[1:-1] = inside
    edges = np.flatnonzero(mark[1:] ^ mark[:-1])     # alternating word start, word end
    s, e = edges[0::2], edges[1::2]                  # (W,), (W,)
    up, down = _powers(len(c) + 1)
    pre = np.empty(len(c) + 1, np.uint64)            # pre[k] = sum_{j<k} c_j Q^j
    pre[0] = 0
    np.multiply(c, down[:len(c)], out=pre[1:])
    np.cumsum(pre[1:], out=pre[1:])
    h = pre.take(e)                                  # take: 2-3x faster than fancy indexing here
    h -= pre.take(s)
    h *= up.take(e)                                  # * P^(e-1): sum_{j=s}^{e-1} c_j P^(e-1-j)
    n = (e - s).view(np.uint64)
    n *= _LEN
    h += n
    return _fmix64(h), s


def word_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes and byte offsets of the ASCII-whitespace-separated words of UTF-8 `data`, (W,) each.

    Pure numpy, in blocks of about _BLOCK bytes cut at whitespace; deterministic across processes."""
    buf = np.frombuffer(data, np.uint8)
    inside = np.frombuffer(data.translate(_WORD_BYTE), bool)                       # (N,) one C pass
    hashes, starts, a = [], [], 0
    while a < len(buf):
        b = data.find(b"\n", a + _BLOCK) if a + _BLOCK < len(buf) else len(buf)    # memchr: cut at a newline,
        if b < 0:                                                                   # else at any whitespace
            m = _ASCII_WS.search(data, a + _BLOCK)
            b = m.start() if m else len(buf)
        h, s = _block_words(buf[a:b], inside[a:b])
        hashes.append(h)
        starts.append(s + a)
        a = b
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(starts)


def _utf8(text: str) -> bytes:
    if not text.isascii() and _UNICODE_WS.search(text):       # O(1) test first: most code is ASCII
        text = _UNICODE_WS.sub(" ", text)
    return text.encode("utf-8", "surrogatepass")


def _fold(words: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n consecutive word hashes, in order: (W,) -> (W-n+1,); fewer than n words are padded."""
    if len(words) < n:
        words = np.concatenate([words, np.zeros(n - len(words), np.uint64)])          # one shingle
    h = words[: len(words) - n + 1].copy()                                              # (S,)
    for k in range(1, n):
        h *= _MIX
        h ^= words[k: len(words) - n + 1 + k]
    return h


@dataclass
class Words:
    """The words of many texts, found in one vectorised pass (`text_words`): text i owns words
    first[i]:first[i+1], exactly `texts[i].split()`; word w starts at byte starts[w] of `data`."""
    data: bytes            # the texts' UTF-8 (non-ASCII whitespace as spaces), joined by newlines
    hashes: np.ndarray     # (W,) uint64, one per word (`word_hashes`)
    starts: np.ndarray     # (W,) byte offset of each word in data
    first: np.ndarray      # (N+1,) index of each text's first word; first[N] == W

    def text(self, a: int, b: int) -> list[str]:
        """Words a..b-1 as strings (b <= the owning text's end)."""
        end = int(self.starts[b]) if b < len(self.starts) else len(self.data)
        return self.data[int(self.starts[a]):end].decode("utf-8", "surrogatepass").split()


def text_words(texts: Sequence[str]) -> Words:
    """`Words` of many texts at once: all joined with newlines and hashed in one vectorised pass."""
    parts = [_utf8(t) for t in texts]
    data = b"\n".join(parts)
    hashes, starts = word_hashes(data)                                       # (W,), (W,)
    bounds = np.cumsum([0] + [len(p) + 1 for p in parts])                    # byte offset of each text
    return Words(data, hashes, starts, np.searchsorted(starts, bounds))


def shingle_hash_sets(texts: Sequence[str], n: int = 5, words: Words | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: (flat (S,) uint64, offsets (len(texts)+1,) uint64).

    Text i owns flat[offsets[i]:offsets[i+1]]: one 64-bit hash per word n-gram of `shingles` (same set, no
    strings built; a text of at most n words is one shingle). `words` (from `text_words(texts)`) saves hashing
    the texts again; shingles never span two texts."""
    words = text_words(texts) if words is None else words
    hashes, first = words.hashes, words.first
    n_texts = len(first) - 1
    folded = _fold(hashes, n) if len(hashes) >= n else hashes[:0]           # (W-n+1,) over the whole batch
    chunks = []
    for a, b in zip(first[:-1].tolist(), first[1:].tolist()):
        chunks.append(folded[a: b - n + 1] if b - a > n else _fold(hashes[a:b], n))
    offsets = np.zeros(n_texts + 1, np.uint64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
    return flat, offsets


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """64-bit hashes of the word n-grams of `shingles(text, n)` (with repeats), shape (S,) uint64."""
    return shingle_hash_sets([text], n)[0]


def signature_matrix(texts: Sequence[str], params: MinHashParams, words: Words | None = None) -> np.ndarray:
    """MinHash signatures of many texts, shape (N, num_perm) uint32: shingle hashes in one numpy pass, then
    one rensa call (`RMinHash`, permutations in Rust) over all of them. `words`: `text_words(texts)`, if known."""
    from rensa import RMinHash       # imported here so that merely importing the pipeline stays cheap

    if not texts:
        return np.empty((0, params.num_perm), np.uint32)
    flat, offsets = shingle_hash_sets(texts, params.ngram, words)
    m = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, params.num_perm, params.seed)
    return np.asarray(m.to_rows(), dtype=np.uint32).reshape(len(texts), params.num_perm)


def signature(text: str, params: MinHashParams) -> np.ndarray:
    """MinHash signature of one text, shape (num_perm,) uint32."""
    return signature_matrix([text], params)[0]


def candidate_pairs(sigs: np.ndarray, params: MinHashParams) -> set[tuple[int, int]]:
    """Index pairs (i < j) sharing at least one LSH band bucket. sigs: (N, num_perm)."""
    n = sigs.shape[0]
    bands = np.ascontiguousarray(sigs).reshape(n, params.bands, params.rows)   # (N, B, R)
    pairs: set[tuple[int, int]] = set()
    for b in range(params.bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        rows = bands[:, b, :]
        for i in range(n):
            buckets[rows[i].tobytes()].append(i)
        for members in buckets.values():
            if len(members) > 1:
                # chain each member to the bucket's first: union-find makes the cluster, O(k) not O(k^2)
                head = members[0]
                pairs.update((head, m) for m in members[1:])
    return pairs


def clusters(n: int, pairs: Sequence[tuple[int, int]] | set[tuple[int, int]]) -> list[int]:
    """Union-find over n items: root[i], the smallest index of i's cluster."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def near_duplicates(keys: Sequence[tuple[str, str]], sigs: np.ndarray,
                    params: MinHashParams) -> dict[tuple[str, str], tuple[str, str]]:
    """Dropped key -> the key kept in its cluster. keys[i] = (repo, id) labels row i of sigs.

    Candidate pairs are verified by the estimated Jaccard (fraction of equal signature slots) >= threshold."""
    if len(keys) != sigs.shape[0]:
        raise ValueError(f"{len(keys)} keys for {sigs.shape[0]} signatures")
    order = sorted(range(len(keys)), key=lambda i: keys[i])     # smallest (repo, id) becomes the cluster root
    sorted_sigs = sigs[order]
    verified = [(a, b) for a, b in candidate_pairs(sorted_sigs, params)
                if float(np.mean(sorted_sigs[a] == sorted_sigs[b])) >= params.threshold]
    roots = clusters(len(order), verified)
    return {keys[order[i]]: keys[order[r]] for i, r in enumerate(roots) if r != i}
