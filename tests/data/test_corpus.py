"""Tokenizer and pretraining input (data.corpus) follow the readers' rules, and skip nothing silently."""
import gzip
import json
import os
import subprocess

import pytest

from dscoder.data.corpus import MAX_FILE_BYTES, CorpusStats, iter_documents
from dscoder.data.readers import iter_repos
from dscoder.errors import UserError

GOOD = "def f(x):\n    return x + 1\n"


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_source_folders_are_read_as_data_build_reads_them(tmp_path):
    src = tmp_path / "repos"
    _write(src / "a" / "main.py", GOOD)
    _write(src / "a" / "wide.py", "\ufeffY = 'ü'\n".encode("utf-16-le"))           # UTF-16 with BOM: decoded
    _write(src / "a" / "node_modules" / "dep" / "index.js", "module.exports = 1;\n")  # vendored: skipped
    _write(src / "a" / "notes.unknownext", "not a language\n")
    _write(src / "a" / "blob.py", b"\x00\x01\x02")
    _write(src / "b" / ".gitignore", "generated.py\n")
    _write(src / "b" / "kept.py", GOOD + "# b\n")
    _write(src / "b" / "generated.py", "GENERATED = 1\n")
    subprocess.run(["git", "init", "-q", str(src / "b")], check=True)
    stats = CorpusStats()
    docs = list(iter_documents([src], stats))
    assert docs == [GOOD, "Y = 'ü'\n", GOOD + "# b\n"]
    assert docs == [f.content for repo, _ in iter_repos([src], MAX_FILE_BYTES) for f in repo.files]
    assert stats.as_dict()["files_skipped"] == {"binary": 1, "unknown_language": 2, "vendored": 1}


def test_bad_jsonl_lines_are_counted_reported_and_bounded(tmp_path, capsys):
    shard = tmp_path / "corpus" / "part.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(300)]
    lines[41] = "{not json"
    lines[99] = json.dumps(["an", "array"])
    lines[150] = json.dumps({"text": 7})
    _write(shard, "\n".join(lines) + "\n")
    _write(tmp_path / "corpus" / "report.md", "# Data build report\n")         # next to shards: not a document
    stats = CorpusStats()
    docs = list(iter_documents([tmp_path / "corpus"], stats))
    assert len(docs) == 297 and docs[0] == "doc 0" and "doc 41" not in docs
    err = capsys.readouterr().err
    assert err == (f"warning: {shard}: skipped 3 of 300 records that are not valid rows with a string 'text' "
                   f"(first at line 42: bad_json)\n")
    summary = stats.as_dict()
    assert (summary["records"], summary["bad_records"]) == (300, 3)
    assert summary["first_bad"] == f"{shard}:42 (bad_json)"
    list(iter_documents([tmp_path / "corpus"], stats))            # a second epoch: nothing counted twice
    assert stats.as_dict() == summary and capsys.readouterr().err == ""
    with pytest.raises(UserError, match=r"3 of 300 records are not valid .*first at line 42.*more than 0.5%"):
        list(iter_documents([shard], max_bad_fraction=0.005))


def test_shard_folder_needs_shards_at_its_top_level(tmp_path):
    """A repository with a JSONL test fixture stays a source tree; the fixture is not read as a shard."""
    repo = tmp_path / "repo"
    _write(repo / "app.py", GOOD)
    _write(repo / "tests" / "fixtures" / "rows.jsonl", json.dumps({"text": "fixture"}) + "\n")
    assert list(iter_documents([repo])) == [GOOD]
    _write(repo / "top.jsonl", json.dumps({"text": "shard"}) + "\n")
    assert list(iter_documents([repo])) == ["fixture", "shard"]


def test_a_file_named_directly_is_decoded_or_reported(tmp_path, capsys):
    wide = _write(tmp_path / "notes.txt", "\ufeffhello\n".encode("utf-16-le"))
    huge = tmp_path / "huge.py"
    huge.touch()
    os.truncate(huge, MAX_FILE_BYTES + 1)
    stats = CorpusStats()
    assert list(iter_documents([wide, huge], stats)) == ["hello\n"]
    assert capsys.readouterr().err == (f"warning: {huge}: skipped, over the size cap ({MAX_FILE_BYTES + 1} bytes > "
                                       f"{MAX_FILE_BYTES})\n")
    assert stats.as_dict()["files_skipped"] == {"too_large": 1}


def test_corrupt_shards_are_errors(tmp_path):
    good = tmp_path / "s.jsonl.gz"
    with gzip.open(good, "wb") as f:
        f.write(b"".join(json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(50)))
    cut = _write(tmp_path / "cut.jsonl.gz", good.read_bytes()[:-12])
    with pytest.raises(UserError, match="cannot read"):
        list(iter_documents([cut]))
    with pytest.raises(UserError, match="no such file"):
        list(iter_documents([tmp_path / "missing"]))
