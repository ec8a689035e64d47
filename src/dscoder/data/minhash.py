"""Repo-level near-deduplication: MinHash + LSH over whole samples (v1 paper §2.3).

Each concatenated repo-level sample is one document ("repo-level minhash", README). Defaults, with why:

- shingles: 5-grams of whitespace-separated tokens (BigCode's near-dedup and datatrove use 5-grams);
- 256 permutations (BigCode), signatures by `rensa.RMinHash` over 64-bit shingle hashes folded with numpy
  (`benchmarks/bench_minhash.py`: far faster than datasketch on the same shingles);
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


_MIX = np.uint64(0x100000001B3)     # FNV-1a 64-bit prime: multiply-xor folds token hashes in order


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """64-bit hashes of the word n-grams of `shingles` (same set, no strings built), shape (S,) uint64.

    Words are hashed once in Rust (`rensa.RMinHash.hash_token_sets`, deterministic across processes); each
    n-gram's hash folds its n word hashes in order with numpy, so shingling runs at C speed."""
    from rensa import RMinHash       # imported here so that merely importing the pipeline stays cheap

    words = np.asarray(RMinHash.hash_token_sets([text.split()])[0], dtype=np.uint64)   # (W,)
    if len(words) < n:
        words = np.concatenate([words, np.zeros(n - len(words), np.uint64)])          # one shingle
    h = words[: len(words) - n + 1].copy()                                              # (S,)
    for k in range(1, n):
        h = (h * _MIX) ^ words[k: len(words) - n + 1 + k]
    return h


def signature_matrix(texts: Sequence[str], params: MinHashParams) -> np.ndarray:
    """MinHash signatures of many texts, shape (N, num_perm) uint32, in one rensa call."""
    from rensa import RMinHash

    if not texts:
        return np.empty((0, params.num_perm), np.uint32)
    parts = [shingle_hashes(t, params.ngram) for t in texts]
    offsets = np.zeros(len(parts) + 1, np.uint64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    flat = np.concatenate(parts)
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
