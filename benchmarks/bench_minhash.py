"""MinHash signature throughput: dscoder.data.minhash (rensa RMinHash) vs datasketch.MinHash, side by side.

Same documents (Python standard library sources), same shingle set (5-grams of whitespace tokens: datasketch
gets them as byte strings, dscoder hashes them in place), same number of permutations (256). Reports MB/s and
the speed-up (target >= 20x), both against datasketch's whole job and against its hashing step alone.

    .venv/bin/python benchmarks/bench_minhash.py [--mb 8] [--num-perm 256]
"""
from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

from dscoder.data.minhash import MinHashParams, shingles, signature_matrix


def load_corpus(limit_bytes: int) -> list[str]:
    texts, total = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t.encode())
        if total >= limit_bytes:
            break
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=8.0, help="MB of standard library source to hash")
    ap.add_argument("--num-perm", type=int, default=256)
    args = ap.parse_args()
    from datasketch import MinHash

    params = MinHashParams(num_perm=args.num_perm, bands=args.num_perm // 8, rows=8)
    texts = load_corpus(int(args.mb * 1e6))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.perf_counter()
    sh = [list(shingles(t, params.ngram)) for t in texts]
    t_shingle = time.perf_counter() - t0
    sh_bytes = [[s.encode() for s in doc] for doc in sh]        # datasketch hashes bytes

    t0 = time.perf_counter()
    for doc in sh_bytes:
        m = MinHash(num_perm=params.num_perm, seed=1)
        m.update_batch(doc)
        m.digest()
    t_ds = time.perf_counter() - t0

    from rensa import RMinHash
    t0 = time.perf_counter()
    same = RMinHash.digest_matrix_from_token_sets(sh, params.num_perm, params.seed)   # same shingle strings
    t_same = time.perf_counter() - t0
    assert same.len() == len(texts)

    t0 = time.perf_counter()
    ours = signature_matrix(texts, params)                    # the pipeline's entry point, shingling included
    t_ours = time.perf_counter() - t0
    assert ours.shape == (len(texts), params.num_perm)

    print(f"corpus: {len(texts)} stdlib files, {mb:.1f} MB, {sum(map(len, sh))} shingles "
          f"({params.ngram}-grams of words), {params.num_perm} permutations")
    print(f"{'':48s}{'seconds':>9s}{'MB/s':>9s}")
    rows = [("shingle strings (Python, shared)", t_shingle),
            ("signatures on them: datasketch.update_batch", t_ds),
            ("signatures on them: rensa (dscoder's backend)", t_same),
            ("from text: datasketch (strings + update_batch)", t_shingle + t_ds),
            ("from text: dscoder signature_matrix", t_ours)]
    for name, t in rows:
        print(f"{name:48s}{t:9.2f}{mb / t:9.1f}")
    print(f"speed-up, signatures on the same shingles: {t_ds / t_same:.1f}x   (target >= 20x)")
    print(f"speed-up, from text (shingling included):  {(t_shingle + t_ds) / t_ours:.1f}x")

if __name__ == "__main__":
    main()
