"""Parquet shards of `dscoder data build`, written crash-safely (a done marker only after the
output is complete, as datatrove's executor/base.py writes its completions).

Each shard goes to `.part-NNNNN.parquet.tmp`, is fsynced and renamed, then its done marker
`_done/part-NNNNN.json` (row digest + file digest) is written the same way. A rerun skips every shard whose
marker matches both the rows it would write and the file on disk, so a SIGKILL at any point followed by a rerun
leaves output byte-identical to an uninterrupted run. Columns: repo, id, text, paths, languages, bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..durable import replace_durably, sha256_file

SHARD_GLOB = "part-*.parquet"


_SCHEMA = None


def _schema():
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa
        _SCHEMA = pa.schema([("repo", pa.string()), ("id", pa.string()), ("text", pa.string()),
                             ("paths", pa.list_(pa.string())), ("languages", pa.list_(pa.string())),
                             ("bytes", pa.int64())])
    return _SCHEMA


def _rows_digest(samples: list, texts: list[bytes]) -> str:
    """SHA-256 over the rows a shard holds (texts[i] = samples[i].text as UTF-8), each field length-prefixed."""
    h = hashlib.sha256()
    for s, t in zip(samples, texts):
        meta = json.dumps([s.repo, s.id, s.paths, s.languages], ensure_ascii=False).encode("utf-8", "surrogatepass")
        h.update(b"%d %d\n" % (len(meta), len(t)))
        h.update(meta)
        h.update(t)
    return h.hexdigest()


def _string_array(encoded: list[bytes]):
    """An Arrow string array straight from UTF-8 bytes and numpy offsets: no per-row conversion, and no import
    of pandas (which `pa.array` on a Python list triggers, 0.2 s a build). None past int32 offsets."""
    import pyarrow as pa

    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return None
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.astype(np.int32)),
                                       pa.py_buffer(b"".join(encoded)))


def _list_array(lists: list[list[str]]):
    import pyarrow as pa

    values = _string_array([x.encode("utf-8", "surrogatepass") for xs in lists for x in xs])
    offsets = np.zeros(len(lists) + 1, np.int32)
    np.cumsum([len(xs) for xs in lists], out=offsets[1:])
    return None if values is None else pa.ListArray.from_arrays(_int_array(offsets), values)


def _int_array(values: np.ndarray):
    import pyarrow as pa

    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _shard_table(samples: list, texts: list[bytes]):
    """The shard's Arrow table (schema `_schema()`), built from buffers; the generic path for huge shards.
    `samples[i]` has repo, id, paths and languages; `texts[i]` is its text in UTF-8."""
    import pyarrow as pa

    cols = [_string_array([s.repo.encode("utf-8", "surrogatepass") for s in samples]),
            _string_array([s.id.encode("utf-8", "surrogatepass") for s in samples]), _string_array(texts),
            _list_array([s.paths for s in samples]), _list_array([s.languages for s in samples]),
            _int_array(np.array([len(t) for t in texts], np.int64))]
    if any(c is None for c in cols):             # over 2 GiB in a column: let Arrow chunk it
        return pa.table({"repo": [s.repo for s in samples], "id": [s.id for s in samples],
                         "text": [t.decode("utf-8", "surrogatepass") for t in texts], "paths": [s.paths for s in samples],
                         "languages": [s.languages for s in samples], "bytes": [len(t) for t in texts]},
                        schema=_schema())
    return pa.Table.from_arrays(cols, schema=_schema())


def write_shard(out: Path, index: int, samples: list, texts: list[bytes]) -> bool:
    """Write shard `index` unless its done marker matches these rows and the file on disk; True if written.
    `samples[i]` has repo, id, paths and languages; `texts[i]` is its text in UTF-8."""
    return write_table_shard(out, index, _rows_digest(samples, texts), lambda: _shard_table(samples, texts))


def write_table_shard(out: Path, index: int, digest: str, make_table) -> bool:
    """The protocol of `write_shard` for any Arrow table: `digest` identifies the rows, `make_table()` builds the
    table only when the shard must be (re)written; True if written."""
    import pyarrow.parquet as pq

    name = f"part-{index:05d}.parquet"
    final, marker = out / name, out / "_done" / f"part-{index:05d}.json"
    if marker.is_file() and final.is_file():
        try:
            done = json.loads(marker.read_text())
            if done.get("rows_sha256") == digest and done.get("file_sha256") == sha256_file(final):
                return False
        except (OSError, ValueError):
            pass                                 # unreadable marker: rewrite the shard
    marker.unlink(missing_ok=True)               # a stale marker must never vouch for a new file
    tmp = out / f".{name}.tmp"
    table = make_table()
    pq.write_table(table, tmp, compression="zstd")
    replace_durably(tmp, final)
    tmp_marker = marker.with_suffix(".json.tmp")
    tmp_marker.write_text(json.dumps({"rows": table.num_rows, "rows_sha256": digest,
                                      "file_sha256": sha256_file(final)}) + "\n")
    replace_durably(tmp_marker, marker)
    return True


def remove_stale(out: Path, n_shards: int) -> None:
    """Remove shards (and their markers) numbered n_shards or above, left by an older, larger build, and
    temporary files of an interrupted one."""
    for p in out.glob(SHARD_GLOB):
        num = p.stem.split("-", 1)[1]
        if num.isdigit() and len(num) == 5 and int(num) >= n_shards:
            (out / "_done" / f"{p.stem}.json").unlink(missing_ok=True)
            p.unlink()
    for p in out.glob(".part-*.tmp"):
        p.unlink()
