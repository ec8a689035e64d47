"""Atomic, verifiable training checkpoints (as torch.distributed.checkpoint's filesystem writer commits).

A checkpoint `OUT/checkpoints/step-00000012/` is a Hugging Face folder (config.json, model.safetensors,
generation_config.json, tokenizer files: `dscoder.load_model` opens it directly) plus `train_state.pt`
(optimizer state, RNG states, data-loader position, step, tokens seen, config, world size) and `manifest.json`.

Write protocol, so a kill at any instant leaves either the previous set of checkpoints or the new one:
  1. write everything into `step-N.tmp/` and fsync each file;
  2. write `manifest.json` LAST (every file's size and sha256) and fsync it;
  3. fsync the tmp dir, rename it to `step-N`, fsync the parent dir;
  4. retention: keep the newest `keep_last` complete checkpoints; the one just written is never deleted.
Deleting a folder renames it to `.trash-NAME` first (one atomic step) and only then removes its files, so a kill
mid-delete leaves a trash folder, never a half-emptied `step-N`; `clean_leftovers` removes trash and `.tmp`
folders at the next start. `latest_checkpoint` returns the newest checkpoint whose manifest verifies (sizes and
hashes) together with the reason each newer one was rejected, so a resume needs no manual cleanup.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..durable import fsync_dir, fsync_file, replace_durably, sha256_file
from ..errors import UserError

MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.pt"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_LEFTOVER_RE = re.compile(r"^(\.trash-.+|(step-\d{8}|final|adapter)(\.old)?\.tmp)$")


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, meta: dict[str, Any] | None = None) -> None:
    """fsync every file, then write manifest.json (names, sizes, sha256) and fsync it: the commit marker."""
    files = {}
    for p in _files_under(folder):
        fsync_file(p)
        files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    tmp = folder / (MANIFEST + ".part")
    tmp.write_text(json.dumps({"files": files, **(meta or {})}, indent=1))
    replace_durably(tmp, folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """None when `folder` is a complete checkpoint, else the reason it is not."""
    man = folder / MANIFEST
    if folder.name.endswith(".tmp"):
        return "unfinished (.tmp)"
    if not man.is_file():
        return "no manifest.json (save did not finish)"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest.json ({e})"
    for name, info in files.items():
        p = folder / name
        if not p.is_file():
            return f"missing {name}"
        if p.stat().st_size != info["size"]:
            return f"{name}: size {p.stat().st_size} != {info['size']} in manifest (truncated?)"
        if sha256_file(p) != info["sha256"]:
            return f"{name}: sha256 mismatch (corrupt)"
    return None


def remove_dir(path: Path) -> None:
    """Delete a folder so that a kill at any instant leaves it either whole or renamed to `.trash-NAME`."""
    path = Path(path)
    trash = path.with_name(".trash-" + path.name)
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


def clean_leftovers(folder: Path) -> list[str]:
    """Remove what killed saves and deletes leave in `folder` (`step-N.tmp`, `final.tmp`, `.trash-*`); their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = sorted(p.name for p in folder.iterdir() if p.is_dir() and _LEFTOVER_RE.match(p.name))
    for name in gone:
        shutil.rmtree(folder / name)
    return gone


def _commit(tmp: Path, final: Path) -> None:
    """Rename a finished tmp dir into place, replacing a folder of the same name (torn, or final/ of a shorter run)."""
    trash = None
    if final.exists():
        trash = final.with_name(".trash-" + final.name)
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(final, trash)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def save_hf_folder(final: Path, model: nn.Module, tokenizer=None, extra: dict[str, Any] | None = None,
                   meta: dict[str, Any] | None = None) -> Path:
    """Atomically write an HF folder (weights + config + tokenizer [+ extra torch files]) with a manifest.

    `extra` maps file names to objects saved with torch.save. Used for checkpoints and for OUT/final/."""
    from ..models.hf import save_pretrained

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, obj in (extra or {}).items():
            torch.save(obj, tmp / name)

    return save_folder(final, write, meta)


def save_folder(final: Path, write, meta: dict[str, Any] | None = None) -> Path:
    """Atomically create folder `final` with what `write(tmp_folder)` puts there, plus a manifest (a PEFT adapter
    folder, an HF folder): written into `final.tmp/`, fsynced, renamed into place."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        write_manifest(tmp, meta)
        fsync_dir(tmp)
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-N` folder (complete or not), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | dict | None,
                    train_state: dict[str, Any], tokenizer=None, keep_last: int = 2) -> Path:
    """Write `out_dir/step-{step:08d}` atomically and apply retention; returns its path.

    `model` is the plain (unwrapped) module; `train_state` holds plain data and tensors (torch.load with
    weights_only=True must read it back); the optimizer's state_dict (or an already gathered one, for FSDP) is
    stored under "optimizer"."""
    if keep_last < 1:
        raise UserError(f"--keep-last must be >= 1, got {keep_last}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)
    state = dict(train_state, step=step)
    if optimizer is not None:
        state["optimizer"] = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    path = save_hf_folder(out_dir / f"step-{step:08d}", model, tokenizer, extra={TRAIN_STATE: state},
                          meta={"step": step})
    _retain(out_dir, keep_last, path)
    return path


def _retain(out_dir: Path, keep_last: int, newest: Path) -> None:
    """Keep the newest `keep_last` complete checkpoints; delete every step folder older than those (torn or not:
    a torn folder older than a complete one is never resumed from)."""
    found = list_checkpoints(out_dir)
    oldest_kept = [s for s, p in found if (p / MANIFEST).is_file()][-keep_last:][0]   # `newest` is complete
    for step, p in found:
        if step < oldest_kept and p != newest:
            remove_dir(p)


def latest_checkpoint(out_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint under `out_dir` that verifies, or None; [(newer folder, why it was rejected)])."""
    rejected = []
    for _, path in reversed(list_checkpoints(out_dir)):
        reason = verify(path)
        if reason is None:
            return path, rejected
        rejected.append((path, reason))
    return None, rejected


def checkpoint_step(folder: Path) -> int | None:
    """The step recorded in a complete folder's manifest (a checkpoint or OUT/final), else None."""
    if verify(folder) is not None:
        return None
    step = json.loads((Path(folder) / MANIFEST).read_text()).get("step")
    return int(step) if isinstance(step, int) else None


def load_train_state(path: Path) -> dict[str, Any]:
    """train_state.pt of a verified checkpoint (tensors on CPU)."""
    f = Path(path) / TRAIN_STATE
    if not f.is_file():
        raise UserError(f"{path} has no {TRAIN_STATE}: not a training checkpoint (use --init-from for an HF folder)")
    return torch.load(f, map_location="cpu", weights_only=True, mmap=True)   # tensors are read when used
