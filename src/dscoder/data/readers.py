"""Read raw repositories safely into `RepoFiles` (v1 paper §2: the GitHub crawl).
Bad inputs are handled as datatrove's readers and The Stack v2's download step handle them.

    for repo, drops in iter_repos(["corpus/"], max_file_bytes=1 << 20):
        ...   # one item per repository: files sorted by path, plus every file refused, with its reason

Trees and bare repositories can also be listed first and read in parts (`scan_unit`, then `read_refs` on any
slice of the list): the data pipeline's work units.

Sources (`plan_sources` turns each into units of work, one per repository where it can tell them apart):
- a folder is ONE repository when it has a `.git` entry, is a bare git repository (`HEAD`, `objects/`, `refs/`),
  or holds any non-hidden regular file at its top level; otherwise it is a folder of repositories, each
  non-hidden subfolder one repository (working tree, or bare git read through `git ls-tree` + `git cat-file`);
- a git working tree holds the files `git ls-files -co --exclude-standard` lists (tracked, plus untracked ones
  .gitignore does not exclude), read from disk; if git cannot list it, the folder is walked (and the `.git`
  Drop says so); a bare repository is read at HEAD through git;
- `.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`, `.zip`: one repository, with a single top-level folder
  stripped (GitHub's `name-main/`); when the archive holds only folders, two or more, each is one repository,
  named `archive/folder`;
- `.parquet`, `.jsonl`, `.jsonl.gz` rows with columns `repo` (or `repo_name`/`max_stars_repo_name`), `path`
  (or `max_stars_repo_path`) and `content`: rows are grouped by repository per source file. A bad line drops
  only that record; its Drop rides with the source's first repository.

Safety: sizes come from stat (or the archive/git header) before anything is read; NUL in the first 8 KiB or a
known binary extension means binary; UTF-8 (BOM stripped) or BOM-marked UTF-16/32 is decoded, anything else is
dropped as "encoding"; symlinks are never followed (reasons `symlink_escape`, `symlink_loop`, `symlink`); `.git`
internals, vendored folders and minified files are skipped by path; archive members with `..` or absolute
names are refused; a file of no language in `data.languages` ("unknown_language") or outside `languages=`
("language_excluded") is never opened; a truncated or corrupt archive or git store yields its repository with
no files and one Drop ("truncated_archive", "archive_bomb" past 100x expansion, "git_error"), never a partial
repository passed off as complete. Git runs with `core.fsmonitor` off, so a repository's own config cannot
make it start a program. Archives and tables are read by `data.packed`.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .document import Drop, FileRecord, RepoFiles
from .languages import detect_language, normalize_languages

DEFAULT_MAX_FILE_BYTES = 1 << 20
BINARY_SNIFF_BYTES = 8192
STAGE = "read"

VENDOR_DIRS = frozenset({
    "vendor", "vendors", "node_modules", "third_party", "third-party", "thirdparty", "3rdparty", "3rd_party",
    "bower_components", "jspm_packages", "site-packages", "dist-packages", "__pycache__", ".venv", "venv",
    ".tox", "Pods", "Carthage", ".yarn", ".bundle", "external", "externals",
})
MINIFIED_SUFFIXES = (".min.js", ".min.css", "-min.js", ".min.mjs", ".bundle.js", ".js.map", ".css.map")
BINARY_EXTENSIONS = frozenset((
    ".png .jpg .jpeg .gif .bmp .ico .icns .tif .tiff .webp .psd .svgz .pdf .ps .eps .zip .gz .tgz .bz2 .xz .zst "
    ".7z .rar .tar .jar .war .ear .whl .egg .pyc .pyo .pyd .so .dll .dylib .exe .bin .o .a .lib .obj .class "
    ".dex .apk .ipa .wasm .mp3 .mp4 .wav .ogg .flac .avi .mov .mkv .webm .woff .woff2 .ttf .otf .eot .db "
    ".sqlite .sqlite3 .npy .npz .pkl .pickle .pt .pth .onnx .safetensors .h5 .hdf5 .parquet .arrow .doc .docx "
    ".xls .xlsx .ppt .pptx .dat .iso .img .dmg .deb .rpm .swf .fla .blend .fbx .glb"
).split())
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
FAILURE_REASONS = frozenset({"git_error", "truncated_archive", "archive_bomb"})
_CONTROL = frozenset(chr(c) for c in range(32)) - {" "}


# ---------------------------------------------------------------- pure checks

def path_skip_reason(path: str) -> str | None:
    """Why a repository path is skipped before any read: git_internal, vendored, minified or binary; else None."""
    parts = path.split("/")
    if ".git" in parts:
        return "git_internal"
    if any(p in VENDOR_DIRS for p in parts[:-1]):
        return "vendored"
    name = parts[-1].lower()
    if name.endswith(MINIFIED_SUFFIXES):
        return "minified"
    dot = name.rfind(".")
    if dot > 0 and name[dot:] in BINARY_EXTENSIONS:
        return "binary"
    return None


def bad_name(path: str) -> bool:
    """True when a path cannot travel safely: not valid UTF-8 (surrogate-escaped), or holds control characters."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return not _CONTROL.isdisjoint(path)


def safe_member_path(name: str) -> str | None:
    """A normalised relative POSIX path for an archive member or table row, or None if it is absolute or
    climbs out with `..` (path traversal is refused, never repaired)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def decode_content(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for a file's bytes: lfs_pointer, empty, binary or encoding."""
    if data.startswith(LFS_PREFIX):
        return None, "lfs_pointer"
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:     # UTF-16/32 hold NUL bytes by design, so the NUL sniff must come after this
                text = data[len(bom):].decode(codec)
            except UnicodeDecodeError:
                return None, "encoding"
            return _nonempty(text)
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return None, "binary"
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "encoding"
    return _nonempty(text)


def over_cap(size: int, cap: int) -> str:
    """The detail of a "too_large" drop."""
    return f"over the size cap ({size} bytes > {cap})"


def _printable(s: str) -> str:
    """`s` made safe to write anywhere (JSON, Parquet, a terminal): escapes for undecodable bytes and controls."""
    return s.encode("unicode_escape").decode("ascii") if bad_name(s) else s


def _nonempty(text: str) -> tuple[str | None, str | None]:
    if not text or text.isspace():
        return None, "empty"
    return text, None


# ---------------------------------------------------------------- one repository being collected

@dataclass
class _Repo:
    name: str
    max_bytes: int
    languages: frozenset[str] | None
    files: list[FileRecord] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    failed: Drop | None = None

    def drop(self, path: str, reason: str, detail: str = "") -> None:
        self.drops.append(Drop(self.name, _printable(path), STAGE, reason, _printable(detail)))

    def fail(self, reason: str, detail: str) -> None:
        """The whole repository is unreliable (truncated archive, broken git store): emit none of it."""
        self.failed = Drop(self.name, "", STAGE, reason, detail)

    def admit(self, path: str, size: int) -> str | None:
        """Language of a file worth reading, judged from its path and size alone; None after recording a Drop."""
        if bad_name(path):
            self.drop(path, "bad_filename")
            return None
        reason = path_skip_reason(path)
        lang = detect_language(path) if reason is None else None
        if reason is None and lang is None:
            reason = "unknown_language"
        elif reason is None and self.languages is not None and lang not in self.languages:
            reason = "language_excluded"
        elif reason is None and size > self.max_bytes:
            reason = "too_large"
        elif reason is None and size == 0:
            reason = "empty"
        if reason is not None:
            self.drop(path, reason, over_cap(size, self.max_bytes) if reason == "too_large" else "")
            return None
        return lang

    def add_bytes(self, path: str, lang: str, data: bytes) -> None:
        if len(data) > self.max_bytes:      # the file grew, or an archive header lied about its size
            self.drop(path, "too_large", over_cap(len(data), self.max_bytes))
            return
        text, reason = decode_content(data)
        if reason is not None:
            self.drop(path, reason)
        else:
            self.files.append(FileRecord(self.name, path, text, lang))

    def add_text(self, path: str, lang: str, text: str) -> None:
        """A row that arrives already decoded (JSONL/Parquet): same rules as bytes, without re-encoding."""
        try:     # JSON "\ud800" escapes decode to lone surrogates that no writer downstream could encode
            nbytes = len(text) if text.isascii() else len(text.encode("utf-8"))
        except UnicodeEncodeError:
            self.drop(path, "encoding")
            return
        if nbytes > self.max_bytes:
            self.drop(path, "too_large", over_cap(nbytes, self.max_bytes))
        elif text.startswith(LFS_PREFIX.decode()):
            self.drop(path, "lfs_pointer")
        elif "\x00" in text[:BINARY_SNIFF_BYTES]:
            self.drop(path, "binary")
        elif not text or text.isspace():
            self.drop(path, "empty")
        else:
            self.files.append(FileRecord(self.name, path, text.removeprefix("\ufeff"), lang))

    def result(self) -> tuple[RepoFiles, list[Drop]]:
        if self.failed is not None:
            return RepoFiles(self.name, []), [self.failed]
        self.files.sort(key=lambda f: f.path)
        self.drops.sort(key=lambda d: d.path)
        return RepoFiles(self.name, self.files), self.drops


# ---------------------------------------------------------------- folders (working trees)

def _symlink_reason(link: str, rel: str, root: str) -> tuple[str, str]:
    """Classify a symlink without reading through it: escape, loop, broken or an in-repo alias."""
    detail = os.readlink(link)
    try:
        target = os.path.realpath(link, strict=True)
    except OSError as e:
        return ("symlink_loop" if e.errno == errno.ELOOP else "symlink_broken"), detail
    if os.path.commonpath([root, target]) != root:
        return "symlink_escape", detail
    if os.path.isdir(target):
        link_dir = os.path.join(root, posixpath.dirname(rel))
        if os.path.commonpath([target, link_dir]) == target:
            return "symlink_loop", detail     # points at an ancestor: following it would never end
    return "symlink", detail                  # in-repo alias: the target is read at its own path


def _read_regular(path: str, repo: _Repo, rel: str, lang: str) -> None:
    # O_NOFOLLOW closes the race where the entry is swapped for a symlink after scandir looked at it.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        repo.drop(rel, "unreadable", e.strerror or str(e))
        return
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            repo.drop(rel, "not_regular")
            return
        if st.st_size > repo.max_bytes:
            repo.drop(rel, "too_large", over_cap(st.st_size, repo.max_bytes))
            return
        repo.add_bytes(rel, lang, f.read(repo.max_bytes + 1))


def _walk_tree(root_real: str, repo: _Repo, git_note: str = "") -> list["FileRef"]:
    """Walk a working tree without following symlinks; stat only; skip .git and vendored folders whole."""
    refs: list[FileRef] = []
    stack = [("", root_real)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            repo.drop(rel_dir or ".", "unreadable", e.strerror or str(e))
            continue
        subdirs = []
        for e in entries:
            rel = rel_dir + e.name
            if e.is_symlink():
                repo.drop(rel, *_symlink_reason(e.path, rel, root_real))
            elif e.is_dir(follow_symlinks=False):
                skip = "git_internal" if e.name == ".git" else "vendored" if e.name in VENDOR_DIRS else None
                if skip:     # one Drop for the whole folder, nothing under it is opened
                    repo.drop(rel + "/", skip, git_note if skip == "git_internal" else "")
                else:
                    subdirs.append((rel + "/", e.path))
            elif not e.is_file(follow_symlinks=False):
                repo.drop(rel, "not_regular")      # FIFOs, sockets, devices: opening one could block forever
            elif (lang := repo.admit(rel, size := e.stat(follow_symlinks=False).st_size)) is not None:
                refs.append(FileRef(rel, lang, size))
        stack.extend(reversed(subdirs))
    return refs


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def _git_listed(root_real: str, repo: _Repo) -> list["FileRef"] | str:
    """The files git would commit (`git ls-files -co --exclude-standard`: tracked plus untracked not ignored by
    .gitignore), checked like the walk's; the error text when git cannot list the tree."""
    # core.fsmonitor=false: a repository's own config could otherwise name a program for git to run
    try:
        ls = subprocess.run(["git", "-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-C", root_real,
                             "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, env=_git_env())
    except OSError as e:             # no git on this machine
        return str(e)
    if ls.returncode != 0:
        return ls.stderr.decode("utf-8", "replace").strip()[:300] or f"exit status {ls.returncode}"
    refs: list[FileRef] = []
    skipped_dirs: set[str] = set()
    for rel in sorted({raw.decode("utf-8", "surrogateescape") for raw in ls.stdout.split(b"\0") if raw}):
        parts = rel.rstrip("/").split("/")
        cut = next((i for i, p in enumerate(parts[:-1]) if p in VENDOR_DIRS), None)
        if cut is not None:          # one Drop per vendored folder, as the walk records it
            folder = "/".join(parts[:cut + 1]) + "/"
            if folder not in skipped_dirs:
                skipped_dirs.add(folder)
                repo.drop(folder, "vendored")
            continue
        path = os.path.join(root_real, rel)
        try:
            st = os.lstat(path)
        except OSError as e:         # tracked but deleted from the working tree
            repo.drop(rel, "unreadable", e.strerror or str(e))
            continue
        if stat.S_ISLNK(st.st_mode):
            repo.drop(rel, *_symlink_reason(path, rel, root_real))
        elif stat.S_ISDIR(st.st_mode):
            repo.drop(rel.rstrip("/") + "/", "submodule")      # a submodule or a nested repository
        elif not stat.S_ISREG(st.st_mode):
            repo.drop(rel, "not_regular")
        elif (lang := repo.admit(rel, st.st_size)) is not None:
            refs.append(FileRef(rel, lang, st.st_size))
    return refs


def _scan_tree(root: Path, repo: _Repo) -> list["FileRef"]:
    """The files of a working tree worth reading, sorted by path. A git working tree is listed through git,
    so .gitignore'd files (build outputs, local environments) are left out as git itself leaves them out."""
    root_real = os.path.realpath(root)
    note = ""
    if os.path.isdir(os.path.join(root_real, ".git")) or os.path.isfile(os.path.join(root_real, ".git")):
        listed = _git_listed(root_real, repo)
        if not isinstance(listed, str):
            return listed
        note = f"git ls-files failed ({listed}); walked the folder without .gitignore"
    return sorted(_walk_tree(root_real, repo, note), key=lambda r: r.path)


def _read_tree_refs(root: Path, refs: Iterable["FileRef"], repo: _Repo) -> None:
    root_real = os.path.realpath(root)
    for ref in refs:
        _read_regular(os.path.join(root_real, ref.path), repo, ref.path, ref.language)


# ---------------------------------------------------------------- bare git repositories

def _git(gitdir: Path, *args: str) -> list[str]:
    # safe.directory: corpora are routinely owned by another user; we only read, never run hooks.
    return ["git", "-c", "safe.directory=*", "--git-dir", str(gitdir), *args]


def _scan_bare_git(gitdir: Path, repo: _Repo) -> list["FileRef"]:
    """HEAD's tree through `git ls-tree -r --long`: sizes and blob ids before anything is read."""
    try:
        ls = subprocess.run(_git(gitdir, "ls-tree", "-r", "-z", "--long", "HEAD"), capture_output=True,
                            env=_git_env())
    except OSError as e:             # no git on this machine
        repo.fail("git_error", str(e)[:500])
        return []
    if ls.returncode != 0:
        repo.fail("git_error", ls.stderr.decode("utf-8", "replace").strip()[:500])
        return []
    refs: list[FileRef] = []
    for entry in filter(None, ls.stdout.split(b"\0")):
        meta, _, raw_path = entry.partition(b"\t")
        mode, kind, sha, size = meta.split()
        path = raw_path.decode("utf-8", "surrogateescape")
        if mode == b"120000":
            repo.drop(path, "symlink", "git symlink entry, not followed")
        elif kind != b"blob":
            repo.drop(path, "submodule" if kind == b"commit" else "not_regular")
        elif (lang := repo.admit(path, int(size))) is not None:
            refs.append(FileRef(path, lang, int(size), sha.decode()))
    return sorted(refs, key=lambda r: r.path)


def _cat_blobs(gitdir: Path, refs: Iterable["FileRef"], repo: _Repo) -> None:
    """Blobs through `git cat-file --batch`; a bad object fails the whole repository."""
    refs = list(refs)
    if not refs:
        return
    # One request at a time: writing all ids first could deadlock once git's stdout pipe fills.
    try:
        proc = subprocess.Popen(_git(gitdir, "cat-file", "--batch"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_git_env())
    except OSError as e:             # no git on this machine
        repo.fail("git_error", str(e)[:500])
        return
    try:
        for sha, path, lang in ((r.blob, r.path, r.language) for r in refs):
            proc.stdin.write(sha.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                raise OSError(f"bad object {sha} for {path}: {b' '.join(header).decode('utf-8', 'replace')}")
            size = int(header[2])
            data = proc.stdout.read(size + 1)[:size]     # + the newline git appends after each blob
            if len(data) != size:
                raise OSError(f"short read of {sha} for {path}")
            repo.add_bytes(path, lang, data)
    except (OSError, ValueError) as e:
        repo.fail("git_error", str(e)[:500])
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.stdout.close()
        proc.wait()


# ---------------------------------------------------------------- planning and the public entry point

def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


@dataclass(frozen=True)
class FileRef:
    """A file of a working tree or bare repository, admitted by path and size but not read yet."""
    path: str        # POSIX, relative to the repository root
    language: str
    size: int        # bytes, from stat or the git tree
    blob: str = ""   # bare repositories: the blob id


@dataclass(frozen=True)
class SourceUnit:
    """One independently readable piece of input (picklable, so executors can hand units to workers)."""
    kind: str    # tree | bare_git | tar | zip | jsonl | parquet
    path: str
    name: str    # repository name (tree, bare_git, archives) or source label (tables)


def _is_bare_git(d: Path) -> bool:
    return (d / "HEAD").is_file() and (d / "objects").is_dir() and (d / "refs").is_dir()


def file_kind(p: Path) -> str | None:
    """"zip", "tar", "parquet" or "jsonl" for a source file, by its name; None for anything else."""
    low = p.name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(_ARCHIVE_SUFFIXES):
        return "tar"
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    return None


def _dir_units(d: Path) -> list[SourceUnit]:
    name = d.resolve().name or "repo"
    if _is_bare_git(d):
        return [SourceUnit("bare_git", str(d), name.removesuffix(".git"))]
    with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    one_repo = any(e.name == ".git" for e in entries) or any(
        e.is_file(follow_symlinks=False) and not e.name.startswith(".") for e in entries)
    if one_repo:
        return [SourceUnit("tree", str(d), name)]
    units = []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue      # symlinked repos are not followed, hidden folders are not repos
        sub = Path(e.path)
        units.append(SourceUnit("bare_git" if _is_bare_git(sub) else "tree", str(sub), e.name.removesuffix(".git")))
    return units


def plan_sources(sources: Iterable[str | Path]) -> list[SourceUnit]:
    """Validate every source up front (UserError before any work) and split it into units, in a fixed order.

    Repository names are made unique across the build by suffixing `#2`, `#3`... to later repeats."""
    units: list[SourceUnit] = []
    sources = list(sources)
    if not sources:
        raise UserError("no sources given: pass folders of repositories, git repositories, archives or tables")
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise UserError(f"source {src} does not exist")
        if p.is_dir():
            units += _dir_units(p)
        elif (kind := file_kind(p)) is not None:
            if kind == "parquet":
                from .packed import parquet_names, table_columns
                try:
                    table_columns(p, parquet_names(p))
                except (OSError, ValueError) as e:
                    raise UserError(f"{src}: not a readable Parquet file ({e})") from None
            units.append(SourceUnit(kind, str(p), _archive_stem(p) if kind in ("tar", "zip") else p.name))
        else:
            raise UserError(f"source {src}: not a folder, .tar(.gz|.bz2|.xz)/.tgz/.zip archive, .parquet or "
                            ".jsonl(.gz) file")
    seen: dict[str, int] = {}
    out = []
    for u in units:
        seen[u.name] = seen.get(u.name, 0) + 1
        out.append(u if seen[u.name] == 1 else SourceUnit(u.kind, u.path, f"{u.name}#{seen[u.name]}"))
    return out


def scan_unit(unit: SourceUnit, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
              languages: frozenset[str] | None = None) -> tuple[list[FileRef] | None, list[Drop]]:
    """List a working tree or bare repository without reading it: (files to read sorted by path, the drops of
    the listing). Archives and tables can only be read whole: (None, [])."""
    if unit.kind not in ("tree", "bare_git"):
        return None, []
    repo = _Repo(unit.name, max_file_bytes, languages)
    refs = (_scan_tree if unit.kind == "tree" else _scan_bare_git)(Path(unit.path), repo)
    return refs, repo.result()[1]


def read_refs(unit: SourceUnit, refs: Iterable[FileRef], max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
              languages: frozenset[str] | None = None) -> tuple[RepoFiles, list[Drop]]:
    """Read listed files (from `scan_unit`) of one tree or bare repository: (files sorted by path, drops)."""
    repo = _Repo(unit.name, max_file_bytes, languages)
    (_read_tree_refs if unit.kind == "tree" else _cat_blobs)(Path(unit.path), refs, repo)
    return repo.result()


def read_unit(unit: SourceUnit, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
              languages: frozenset[str] | None = None) -> Iterator[tuple[RepoFiles, list[Drop]]]:
    """Read one unit: one (RepoFiles, drops) per repository it holds, in a deterministic order."""
    refs, drops = scan_unit(unit, max_file_bytes, languages)
    if refs is not None:
        files, more = read_refs(unit, refs, max_file_bytes, languages)
        failed = [d for d in drops + more if is_failure(d)]
        yield (RepoFiles(unit.name, []), failed) if failed else (files, sorted(drops + more, key=lambda d: d.path))
    else:
        from .packed import read_archive, read_table
        yield from (read_archive if unit.kind in ("tar", "zip") else read_table)(unit, max_file_bytes, languages)


def read_file(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[FileRecord | None, list[Drop]]:
    """One file named by the user (a symlink is resolved: the user chose it), read by the rules of a tree's
    files whatever its language: (record or None, the Drop when it is skipped)."""
    path = Path(path)
    repo = _Repo(path.name, max_file_bytes, None)
    real = os.path.realpath(path)
    try:
        size = os.stat(real).st_size
    except OSError as e:
        repo.drop(str(path), "unreadable", e.strerror or str(e))
        return None, repo.drops
    if size > max_file_bytes:
        repo.drop(str(path), "too_large", over_cap(size, max_file_bytes))
    else:
        _read_regular(real, repo, str(path), detect_language(path.name) or "unknown")
    return (repo.files[0] if repo.files else None), repo.drops


def is_failure(drop: Drop) -> bool:
    """True for the Drop that stands for a whole unreliable repository (broken git store, damaged archive)."""
    return drop.path == "" and drop.reason in FAILURE_REASONS


def iter_repos(sources: Iterable[str | Path], max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               languages: Iterable[str] | None = None) -> Iterator[tuple[RepoFiles, list[Drop]]]:
    """Every repository of every source, in source order, as (RepoFiles sorted by path, drops with reasons).

    Arguments are checked before the first item (UserError), so a bad flag never half-runs a build."""
    if not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise UserError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")
    langs = normalize_languages(languages) if languages is not None else None
    units = plan_sources(sources)
    return (item for unit in units for item in read_unit(unit, max_file_bytes, langs))
