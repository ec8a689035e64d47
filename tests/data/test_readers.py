"""Safe reading of every source kind, and every bad input a data pipeline meets (datatrove, The Stack v2)
counted with its reason."""
import gzip
import io
import json
import os
import subprocess
import tarfile
import time
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscoder.data.readers import decode_content, iter_repos, plan_sources, safe_member_path
from dscoder.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(64)
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 123\n"
GOOD_PY = "import os\n\n\ndef main():\n    return os.getcwd()\n"


def _reasons(drops):
    return {d.path: d.reason for d in drops}


def _one(sources, **kw):
    items = list(iter_repos(sources, **kw))
    assert len(items) == 1
    return items[0]


def _write(root, rel, data):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def test_working_tree_bad_inputs(tmp_path):
    repo = tmp_path / "proj"
    _write(repo, "main.py", GOOD_PY)
    _write(repo, "pkg/util.py", "\ufeffX = 1\n".encode("utf-8"))                   # UTF-8 BOM: stripped
    _write(repo, "pkg/wide.py", "\ufeffY = 'ü'\n".encode("utf-16-le"))           # UTF-16 BOM: decoded, kept
    _write(repo, "fake.py", PNG)
    _write(repo, "cache.pyc", b"\x42\x0d\x0d\x0a" + bytes(16))
    _write(repo, "latin.py", "s = 'café'\n".encode("latin-1"))
    _write(repo, "empty.py", b"")
    _write(repo, "blank.py", b"  \n\n")
    _write(repo, "model.py", LFS)
    _write(repo, "node_modules/dep/index.js", "module.exports = 1;\n")
    _write(repo, ".git/config", "[core]\n")
    _write(repo, "static/app.min.js", "var a=1;\n")
    _write(repo, "README", "hello\n")
    huge = repo / "huge.js"
    huge.touch()
    os.truncate(huge, 2 << 30)                       # 2 GiB sparse: reading it would take seconds, stat does not
    (repo / "pkg" / "loop").symlink_to("..")         # a directory link to its own parent
    (repo / "passwd.py").symlink_to("/etc/passwd")   # escapes the repository
    (repo / "alias.py").symlink_to("main.py")        # in-repo alias: the target is read once, at its own path
    os.mkfifo(repo / "pipe.py")                      # opening a FIFO for reading would block forever
    t0 = time.perf_counter()
    files, drops = _one([repo])
    assert time.perf_counter() - t0 < 5
    assert files.repo == "proj"
    assert [f.path for f in files.files] == ["main.py", "pkg/util.py", "pkg/wide.py"]
    assert files.files[1].content == "X = 1\n" and files.files[2].content == "Y = 'ü'\n"
    assert all(f.language == "python" and f.repo == "proj" for f in files.files)
    assert _reasons(drops) == {
        "fake.py": "binary", "cache.pyc": "binary", "latin.py": "encoding", "empty.py": "empty",
        "blank.py": "empty", "model.py": "lfs_pointer", "node_modules/": "vendored", ".git/": "git_internal",
        "static/app.min.js": "minified", "README": "unknown_language", "huge.js": "too_large",
        "pkg/loop": "symlink_loop", "passwd.py": "symlink_escape", "alias.py": "symlink", "pipe.py": "not_regular",
    }
    assert next(d for d in drops if d.path == "passwd.py").detail == "/etc/passwd"
    assert all(d.stage == "read" and d.repo == "proj" for d in drops)


def test_cap_and_language_filter(tmp_path):
    repo = tmp_path / "r"
    _write(repo, "a.py", "x = 1\n" * 100)        # 600 bytes
    _write(repo, "b.go", "package b\n")
    files, drops = _one([repo], max_file_bytes=500, languages=["go"])
    assert [f.path for f in files.files] == ["b.go"]
    assert _reasons(drops) == {"a.py": "language_excluded"}
    files, drops = _one([repo], max_file_bytes=500)
    assert _reasons(drops) == {"a.py": "too_large"} and "600 bytes" in drops[0].detail


def test_bad_filename_is_dropped(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "ok.py").write_text(GOOD_PY)
    with open(os.path.join(os.fsencode(repo), b"bad\xff.py"), "wb") as f:
        f.write(b"x = 1\n")
    files, drops = _one([repo])
    assert [f.path for f in files.files] == ["ok.py"]
    assert [d.reason for d in drops] == ["bad_filename"]


def test_folder_of_repos_and_unique_names(tmp_path):
    corpus = tmp_path / "corpus"
    _write(corpus, "beta/x.py", GOOD_PY)
    _write(corpus, "alpha/src/y.rs", "fn main() {}\n")
    _write(corpus, ".hidden/z.py", GOOD_PY)
    other = tmp_path / "elsewhere" / "alpha"
    _write(other, "w.py", GOOD_PY)
    units = plan_sources([corpus, other])
    assert [(u.kind, u.name) for u in units] == [("tree", "alpha"), ("tree", "beta"), ("tree", "alpha#2")]
    repos = [r.repo for r, _ in iter_repos([corpus, other])]
    assert repos == ["alpha", "beta", "alpha#2"]


def test_single_repo_rules(tmp_path):
    with_git = tmp_path / "g"
    _write(with_git, "src/a.py", GOOD_PY)
    (with_git / ".git").mkdir()
    assert [u.kind for u in plan_sources([with_git])] == ["tree"]
    top_file = tmp_path / "t"
    _write(top_file, "setup.py", GOOD_PY)
    _write(top_file, "pkg/a.py", GOOD_PY)
    assert [u.name for u in plan_sources([top_file])] == ["t"]


def _git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def test_bare_git_repo_reads_head(tmp_path):
    work, bare = tmp_path / "work", tmp_path / "hub" / "lib.git"
    _write(work, "lib/core.py", GOOD_PY)
    _write(work, "lib/data.bin.py", PNG)
    _write(work, "big.py", "y = 2\n" * 50)
    (work / "link.py").symlink_to("lib/core.py")
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "init", cwd=work)
    bare.parent.mkdir()
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    _git("push", "-q", str(bare), "main", cwd=work)
    (work / "lib" / "core.py").write_text("uncommitted = True\n")   # the bare repo must not see this
    assert [(u.kind, u.name) for u in plan_sources([bare.parent])] == [("bare_git", "lib")]
    files, drops = _one([bare], max_file_bytes=200)
    assert [(f.path, f.content) for f in files.files] == [("lib/core.py", GOOD_PY)]
    assert _reasons(drops) == {"lib/data.bin.py": "binary", "big.py": "too_large", "link.py": "symlink"}


def test_empty_bare_repo_is_a_git_error(tmp_path):
    bare = tmp_path / "empty.git"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    files, drops = _one([bare])
    assert files.files == [] and [d.reason for d in drops] == ["git_error"]


def _tar_gz(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_strips_single_top_folder_and_splits_many(tmp_path):
    one = tmp_path / "proj-1.0.tar.gz"
    _tar_gz(one, {"proj-main/a.py": GOOD_PY.encode(), "proj-main/sub/b.py": b"B = 2\n"})
    files, drops = _one([one])
    assert files.repo == "proj-1.0" and [f.path for f in files.files] == ["a.py", "sub/b.py"] and not drops
    many = tmp_path / "bundle.tgz"
    _tar_gz(many, {"x/a.py": b"A = 1\n", "y/b.py": b"B = 1\n"})
    assert [(r.repo, [f.path for f in r.files]) for r, _ in iter_repos([many])] == [
        ("bundle/x", ["a.py"]), ("bundle/y", ["b.py"])]


def test_truncated_tar_gz_emits_no_partial_repo(tmp_path):
    whole = tmp_path / "whole.tar.gz"
    _tar_gz(whole, {f"r/f{i}.py": os.urandom(3000).hex().encode() for i in range(20)})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    files, drops = _one([cut])
    assert files.repo == "cut" and files.files == []
    assert [(d.reason, d.path) for d in drops] == [("truncated_archive", "")]


def test_zip_traversal_refused(tmp_path):
    z = tmp_path / "repo.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil.py", "import os\n")
        zf.writestr("/abs.py", "import os\n")
        zf.writestr("good.py", GOOD_PY)
    files, drops = _one([z])
    assert [f.path for f in files.files] == ["good.py"]
    assert sorted(d.reason for d in drops) == ["path_traversal", "path_traversal"]
    assert safe_member_path("a/./b//c.py") == "a/b/c.py" and safe_member_path("a/../../x") is None


def test_jsonl_bad_line_drops_only_itself(tmp_path):
    rows = [{"repo": "o/r", "path": f"m{i}.py", "content": f"V{i} = {i}\n"} for i in range(5)]
    lines = [json.dumps(r).encode() for r in rows]
    lines.insert(2, '{"repo": "o/r", "path": "bad.py", "content": "café"}'.encode("latin-1"))
    lines.insert(4, b"{not json")
    lines.append(json.dumps({"repo": "o/r"}).encode())
    for name, opener in (("t.jsonl", open), ("t.jsonl.gz", gzip.open)):
        src = tmp_path / name
        with opener(src, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        files, drops = _one([src])
        assert files.repo == "o/r" and [f.path for f in files.files] == [f"m{i}.py" for i in range(5)]
        assert sorted(d.reason for d in drops) == ["bad_json", "bad_record", "encoding"]
        assert {d.path for d in drops} == {f"{name}:3", f"{name}:5", f"{name}:8"}


def test_truncated_jsonl_gz(tmp_path):
    src = tmp_path / "t.jsonl.gz"
    payload = b"".join(json.dumps({"repo": "r", "path": f"{i}.py", "content": os.urandom(500).hex()}).encode()
                       + b"\n" for i in range(50))
    src.write_bytes(gzip.compress(payload)[:-100])
    files, drops = _one([src])
    assert files.files == [] and drops[0].reason == "truncated_archive"


def test_parquet_stack_columns(tmp_path):
    src = tmp_path / "stack.parquet"
    pq.write_table(pa.table({
        "max_stars_repo_name": ["b/two", "a/one", "b/two", "a/one"],
        "max_stars_repo_path": ["x.py", "y.java", "../z.py", "n.py"],
        "content": ["X = 1\n", "class Y {}\n", "Z = 1\n", "a\x00b\n"],
    }), src)
    items = list(iter_repos([src]))
    assert [(r.repo, [(f.path, f.language) for f in r.files]) for r, _ in items] == [
        ("a/one", [("y.java", "java")]), ("b/two", [("x.py", "python")])]
    assert [d.reason for _, ds in items for d in ds] == ["binary", "path_traversal"]


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        iter_repos([tmp_path / "nope"])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not a folder"):
        iter_repos([tmp_path / "x.txt"])
    with pytest.raises(UserError, match="max_file_bytes"):
        iter_repos([tmp_path], max_file_bytes=0)
    with pytest.raises(UserError, match="cobol"):
        iter_repos([tmp_path], languages=["cobol"])
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(UserError, match="needs columns"):
        iter_repos([tmp_path / "t.parquet"])


def test_decode_content_units():
    assert decode_content("é\n".encode("utf-16-be").join([b"\xfe\xff", b""])) == ("é\n", None)
    assert decode_content(b"\xff\xfe\x00\xd8") == (None, "encoding")      # lone surrogate in UTF-16
    assert decode_content(b"ok" + b"\x00" * 3) == (None, "binary")
    assert decode_content(b"a" * 9000 + b"\x00") == ("a" * 9000 + "\x00", None)   # NUL sniff is the first 8 KiB


def test_decompression_bomb_refused(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("r/zeros.py")
        info.size = 40 << 20                     # 40 MiB of zeros compress to ~40 KiB
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    files, drops = _one([bomb])
    assert files.files == [] and [d.reason for d in drops] == ["archive_bomb"]


def test_jsonl_lone_surrogate_and_control_names(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text('{"repo": "r", "path": "a.py", "content": "x = \\"\\ud800\\"\\n"}\n'
                   '{"repo": "r", "path": "b\\nc.py", "content": "y = 1\\n"}\n'
                   '{"repo": "r", "path": "ok.py", "content": "z = 1\\n"}\n')
    files, drops = _one([src])
    assert [f.path for f in files.files] == ["ok.py"]
    assert [(d.path, d.reason) for d in drops] == [("a.py", "encoding"), ("b\\nc.py", "bad_filename")]
    for d in drops:
        json.dumps(d.__dict__, ensure_ascii=False).encode("utf-8")     # every Drop can be written out


def test_git_working_tree_honours_gitignore(tmp_path):
    repo = tmp_path / "proj"
    _write(repo, ".gitignore", "build/\n*.gen.py\nlocal_settings.py\n")
    _write(repo, "app.py", GOOD_PY)
    _write(repo, "kept.gen.py", "TRACKED = True\n")             # tracked before the rule: git still lists it
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "app.py", ".gitignore", cwd=repo)
    _git("add", "-f", "kept.gen.py", cwd=repo)
    _git("commit", "-q", "-m", "init", cwd=repo)
    _write(repo, "new_module.py", GOOD_PY + "# untracked, not ignored\n")
    _write(repo, "build/lib/app.py", GOOD_PY)                    # ignored build output
    _write(repo, "other.gen.py", "GENERATED = 1\n")
    _write(repo, "local_settings.py", "SECRET = 'x'\n")
    _write(repo, "node_modules/dep/index.js", "module.exports = 1;\n")
    marker = tmp_path / "fsmonitor_ran"
    hook = _write(tmp_path, "hook.sh", f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    _git("config", "core.fsmonitor", str(hook), cwd=repo)        # a repository's config must not run programs
    files, drops = _one([repo])
    assert [f.path for f in files.files] == ["app.py", "kept.gen.py", "new_module.py"]
    assert _reasons(drops) == {".gitignore": "unknown_language", "node_modules/": "vendored"}
    assert not marker.exists()


def test_git_listing_failure_falls_back_to_the_walk_and_says_so(tmp_path):
    repo = tmp_path / "proj"
    _write(repo, "a.py", GOOD_PY)
    _write(repo, ".git/HEAD", "not a git directory\n")
    files, drops = _one([repo])
    assert [f.path for f in files.files] == ["a.py"]
    git = next(d for d in drops if d.path == ".git/")
    assert git.reason == "git_internal" and "walked the folder without .gitignore" in git.detail


def test_without_git_a_working_tree_is_walked_and_a_bare_repo_fails(tmp_path, monkeypatch):
    repo = tmp_path / "proj"
    _write(repo, "a.py", GOOD_PY)
    _git("init", "-q", "-b", "main", cwd=repo)
    bare = tmp_path / "hub" / "b.git"
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    files, drops = _one([repo])
    assert [f.path for f in files.files] == ["a.py"]
    assert "walked the folder without .gitignore" in next(d for d in drops if d.path == ".git/").detail
    files, drops = _one([bare])
    assert files.files == [] and [d.reason for d in drops] == ["git_error"]
