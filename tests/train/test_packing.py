"""Corpus reading, the held-out split, FIM/BOS/EOS in packed windows, exact resume of the data position."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dscoder.data.corpus import iter_documents
from dscoder.errors import UserError
from dscoder.train.packing import DocEncoder, PackedStream, check_corpus, heldout_batches, is_heldout
from dscoder.train.parallel import shard_rows


def test_reader_skips_binary_non_utf8_huge_and_blank(tmp_path):
    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "b.py").write_bytes(b"x = 1\x00\x01\x02")                 # NUL byte: binary
    (tmp_path / "c.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))    # not UTF-8
    (tmp_path / "d.py").write_text("   \n\n")                             # blank
    (tmp_path / "e.py").write_text("#" * (2 << 20))                       # > 1 MiB
    (tmp_path / "f.png").write_bytes(b"\x89PNG....")                      # not a source suffix
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / "z.js").write_text("let z = 1;\n")
    (tmp_path / "loop").symlink_to(tmp_path)                              # symlink loop: never followed
    assert list(iter_documents([tmp_path])) == ["print('a')\n", "let z = 1;\n"]


def test_reader_jsonl_gz_and_parquet(tmp_path):
    with gzip.open(tmp_path / "s.jsonl.gz", "wb") as f:
        f.write((json.dumps({"text": "one"}) + "\n{broken json\n").encode())
        f.write(b'{"text": "caf\xe9"}\n')                               # Latin-1 record: only it is dropped
        f.write((json.dumps({"text": "two"}) + "\n").encode())
    pq.write_table(pa.table({"text": ["three", "", "four"], "repo": ["r", "r", "r"]}), tmp_path / "t.parquet")
    (tmp_path / "report.json").write_text('{"kept": 4}')                 # pipeline report: not a document
    assert list(iter_documents([tmp_path], max_bad_fraction=0.5)) == ["one", "two", "three", "four"]  # 2 bad of 4
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "u.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        list(iter_documents([tmp_path / "u.parquet"]))
    (tmp_path / "cut.jsonl.gz").write_bytes((tmp_path / "s.jsonl.gz").read_bytes()[:-12])   # truncated shard
    with pytest.raises(UserError, match="cannot read"):
        list(iter_documents([tmp_path / "cut.jsonl.gz"]))


def test_no_usable_documents_is_a_user_error(tmp_path):
    (tmp_path / "bin.py").write_bytes(b"\x00\x00")
    with pytest.raises(UserError, match="no usable documents under"):
        check_corpus([tmp_path])
    with pytest.raises(UserError, match="no such file"):
        check_corpus([tmp_path / "missing"])


def test_heldout_split_is_stable_and_disjoint(corpus_dir, tok_dir):
    from dscoder.tokenizer.bpe import load_tokenizer

    docs = list(iter_documents([corpus_dir]))
    held = {d for d in docs if is_heldout(d, 4)}
    assert 0 < len(held) < len(docs) and held == {d for d in docs if is_heldout(d, 4)}
    tok = load_tokenizer(tok_dir)
    # decode what each split actually packs: no held-out document text appears in a training window
    enc = DocEncoder(tok, fim_rate=0.0, seed=0)
    train = PackedStream([corpus_dir], enc, seq_len=63, heldout_every=4, epochs=1)
    train_text = tok.decode(torch.cat([w for w in iter(lambda: train.next_windows(1), None)]).flatten().tolist())
    held_b = heldout_batches([corpus_dir], DocEncoder(tok, 0.0, seed=1), 63, n_batches=100, rows=1, heldout_every=4)
    held_text = tok.decode(torch.cat(held_b).flatten().tolist())
    for d in held:
        assert d.strip()[:200] not in train_text
    assert any(d.strip()[:100] in held_text for d in held)


def test_special_token_text_in_data_is_not_a_sentinel(tmp_path, tok_dir):
    from dscoder.tokenizer.bpe import load_tokenizer
    from dscoder.tokenizer.special import FIM_HOLE, special_ids

    tok = load_tokenizer(tok_dir)
    ids = special_ids(tok)
    (ids_doc,) = DocEncoder(tok, fim_rate=0.0)([f"x = '{FIM_HOLE}'\n"])
    assert ids_doc[0] == ids.bos and ids_doc[-1] == ids.eos and ids.fim_hole not in ids_doc


def test_packing_bos_eos_and_fim_rate(corpus_dir, tok_dir):
    from dscoder.tokenizer.bpe import load_tokenizer
    from dscoder.tokenizer.special import special_ids

    tok = load_tokenizer(tok_dir)
    ids = special_ids(tok)
    docs = [d for d in iter_documents([corpus_dir]) if not is_heldout(d, 100)]
    for rate, lo, hi in ((0.0, 0, 0), (0.5, 0.25, 0.75), (1.0, 1, 1)):
        stream = PackedStream([corpus_dir], DocEncoder(tok, fim_rate=rate, seed=3), seq_len=31, epochs=1)
        flat = torch.cat([w.flatten() for w in iter(lambda: stream.next_windows(2), None)])
        n_bos = int((flat == ids.bos).sum())
        n_fim = int((flat == ids.fim_begin).sum())
        assert n_bos >= len(docs) - 2                       # one BOS per document (the tail may be cut off)
        assert abs(int((flat == ids.eos).sum()) - n_bos) <= 1   # every document ends with EOS
        assert lo <= n_fim / n_bos <= hi, (rate, n_fim, n_bos)
        # every BOS after the first directly follows an EOS: documents are packed back to back
        pos = (flat == ids.bos).nonzero().flatten()
        assert all(flat[p - 1] == ids.eos for p in pos.tolist() if p > 0)


def test_stream_resumes_exactly_and_shards_rows(corpus_dir, tok_dir):
    from dscoder.tokenizer.bpe import load_tokenizer

    tok = load_tokenizer(tok_dir)
    a = PackedStream([corpus_dir], DocEncoder(tok, 0.5, seed=7), seq_len=31, docs_per_chunk=4)
    for _ in range(5):
        a.next_windows(3)
    state = a.state_dict()
    expected = [a.next_windows(3) for _ in range(100)]        # runs past the end of the corpus: epoch 2
    assert a.epoch >= 1
    b = PackedStream([corpus_dir], DocEncoder(tok, 0.5, seed=999), seq_len=31, docs_per_chunk=4)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.next_windows(3)) for x in expected)
    batch = torch.arange(12).view(6, 2)
    parts = [shard_rows(batch, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == batch[:, 0].tolist() and torch.equal(parts[1], batch[1::3])


@pytest.mark.parametrize("buffer,windows", [(3, 0), (10_000, 0), (10_000, 5)])
def test_shuffled_stream_is_a_permutation_and_resumes_exactly(corpus_dir, tok_dir, buffer, windows):
    from dscoder.tokenizer.bpe import load_tokenizer

    tok = load_tokenizer(tok_dir)
    docs = [d for d in iter_documents([corpus_dir]) if not is_heldout(d, 100)]
    plain = PackedStream([corpus_dir], lambda c: [[len(t)] for t in c], seq_len=1, docs_per_chunk=1,
                         shuffle_docs=buffer, seed=1, epochs=1)
    order = []
    while (w := plain._next_chunk()) is not None:
        order += w
    assert sorted(order) == sorted(docs) and order != docs          # every document once, not in file order
    mk = lambda seed: PackedStream([corpus_dir], DocEncoder(tok, 0.5, seed=seed), seq_len=31, docs_per_chunk=2,
                                   shuffle_docs=buffer, shuffle_windows=windows, seed=seed)
    a = mk(7)
    for _ in range(4):
        a.next_windows(3)
    state = a.state_dict()
    expected = [a.next_windows(3) for _ in range(60)]
    b = mk(999)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.next_windows(3)) for x in expected)


class _CountingBackend:
    """The tokenizer backend, counting the texts handed to encode_batch."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0

    def encode_batch(self, texts, **kw):
        self.texts += len(texts)
        return self.inner.encode_batch(texts, **kw)

    def encode(self, text, **kw):
        return self.inner.encode(text, **kw)


def _encode_as_rank(rank: int, port: int, tok_dir: str, texts: list[str], out: str) -> None:
    import torch.distributed as tdist

    from dscoder.tokenizer.bpe import load_tokenizer
    from dscoder.train.parallel import Dist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        enc = DocEncoder(load_tokenizer(tok_dir), fim_rate=0.5, seed=3, dist=Dist(rank=rank, world=2))
        enc.backend = _CountingBackend(enc.backend)
        ids = enc(texts[:9]) + enc(texts[9:])
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"ids": ids, "tokenized": enc.backend.texts}, f)
    finally:
        tdist.destroy_process_group()


def test_two_ranks_split_the_tokenizing_and_get_the_single_process_ids(corpus_dir, tok_dir, tmp_path):
    """Each of 2 ranks tokenizes half of every chunk; after the all-gather both hold exactly what one process
    computes alone, FIM draws included (they depend on the document's position, not on who encodes it)."""
    import socket

    import torch.multiprocessing as mp

    from dscoder.tokenizer.bpe import load_tokenizer

    texts = list(iter_documents([corpus_dir]))[:20]
    single = DocEncoder(load_tokenizer(tok_dir), fim_rate=0.5, seed=3)
    expected = single(texts[:9]) + single(texts[9:])
    assert 0 < sum(single.ids.fim_begin in x for x in expected) < len(texts)         # some FIM, some not
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_encode_as_rank, args=(port, str(tok_dir), texts, str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[0]["ids"] == expected and got[1]["ids"] == expected
    assert [g["tokenized"] for g in got] == [5 + 6, 4 + 5]       # chunks of 9 and 11 texts, split r::2
