"""Durable files: the fsync / rename / hash steps that shards, checkpoints and results share.

A write is crash-safe when the data is fsynced under a temporary name, renamed into place, and the directory entry
fsynced too (as torch.distributed.checkpoint's filesystem writer commits); a reader trusts a file only when its
recorded sha256 matches.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside `path` durable (best effort: some filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync `tmp`, atomically rename it to `final`, fsync the parent directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


LOCK_NAME = ".lock"


class RunFolderLock:
    """An exclusive `fcntl.flock` on `folder/.lock`, held while one process writes into `folder`.

    The kernel drops a flock when its holder exits, however it exits (SIGKILL included), so a crash never leaves
    a stale lock behind. The holder's pid is written into the file for the message a second process gets:
    `UserError("FOLDER is in use by pid N ...")`. The file is removed on release; an acquirer checks that the
    file it locked is still the one at the path, so removal cannot let two processes hold the lock at once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        import fcntl

        from .errors import UserError
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the folder {str(self.folder)!r}: {e.strerror or e}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(f"cannot write into {str(self.folder)!r}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                who = f"pid {holder}" if holder.isdigit() else "another process"
                raise UserError(f"{self.folder} is in use by {who} (another dscoder run writes there; "
                                "wait for it to finish or choose another folder)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)        # the previous holder removed the file between our open and our flock: retry
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)      # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_folder(folder: str | os.PathLike) -> RunFolderLock:
    """Create `folder` if needed and lock it for this process (see `RunFolderLock`); use as a context manager or
    keep the returned lock alive for the run (it is released when the process exits)."""
    return RunFolderLock(folder).acquire()
