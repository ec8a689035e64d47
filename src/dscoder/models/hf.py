"""Hugging Face checkpoint folders in and out: the interop behind `dscoder.load_model` (v1 paper §3.3 models,
released as `LlamaForCausalLM` / `DeepseekV2ForCausalLM` folders; the released config.json files).

    model = load_model("deepseek-coder-1.3b-base")               # any HF folder: config.json + weights
    model = load_model("ckpt", device="cuda", dtype="bfloat16")
    model = load_model("ckpt", quantize="int8")                   # int8 Linear weights (models/quant.py)
    model = build_model(get_preset("tiny"))                       # fresh, initialised
    save_pretrained(model, "out")            # config.json, model.safetensors, generation_config.json

Weights are read from `model.safetensors`, sharded safetensors with `model.safetensors.index.json`, or
`pytorch_model*.bin` (loaded with `weights_only=True`: a checkpoint never runs code). Loading is strict: a
missing or unexpected tensor is an error that names it, except the `rotary_emb.inv_freq` buffers old
checkpoints carry (they are recomputed from config.json). Every bad input is a `UserError`.

Integrity: a folder written by `train/checkpoint.py` holds `manifest.json` (size and sha256 of every file). When
it is there, every file the loader reads (config.json, the shard index, the weights) must match it, so weights
overwritten or corrupted in place are refused, naming the file, instead of generating junk. sha256 reads the
whole file (0.5 GiB/s on one busy core of the 2-core CI machine: 5 s for a 1.3B model in bf16, 2 min for 33B),
so a digest is remembered under the file's (path, inode, size, mtime_ns, ctime_ns), in this process and in
`$XDG_CACHE_HOME/dscoder/sha256.json` (default ~/.cache; the newest 512 files), and the next load of an unchanged
file costs one stat. Any write to the file changes its mtime and ctime, and user code cannot set ctime, so a
changed file is always hashed again. Nothing is written next to the model: its folder may be read-only or shared.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..durable import sha256_file
from ..errors import UserError
from .config import DeepseekV2Config, ModelConfig, config_from_hf

# model_type -> "module:Class"; imported on first use so a v1 user never imports the MoE code
MODEL_CLASSES = {
    "llama": "dscoder.models.llama:Transformer",
    "deepseek_v2": "dscoder.models.deepseek_v2:DeepseekV2",
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
MANIFEST = "manifest.json"          # written by train/checkpoint.py: {"files": {name: {"size", "sha256"}}}
_SHA256: dict[str, str] = {}       # "path|inode|size|mtime_ns|ctime_ns" -> sha256, this process
_SHA256_KEEP = 512                  # entries kept in the cache file


def model_class(model_type: str) -> type[nn.Module]:
    if model_type not in MODEL_CLASSES:
        raise UserError(f"unsupported model_type {model_type!r}; supported: {', '.join(MODEL_CLASSES)}")
    module, name = MODEL_CLASSES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(config: ModelConfig | DeepseekV2Config) -> nn.Module:
    """A fresh model for `config`, weights initialised (normal(0, initializer_range), norms to one)."""
    model = model_class(config.model_type)(config)
    model.init_weights()
    return model


# --- reading ----------------------------------------------------------------------------------------------
def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise UserError(f"{str(folder)!r} is a file, not a model folder: give the folder that holds config.json "
                        "and the weights")
    raise UserError(f"model folder {str(folder)!r} does not exist")


def _sha256_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dscoder" / "sha256.json"


def _sha256(file: Path, st: os.stat_result) -> str:
    """sha256 of `file` (stat `st`), from the process or file cache when the file is unchanged."""
    key = f"{file.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    if key in _SHA256:
        return _SHA256[key]
    cache_file = _sha256_cache_file()
    try:
        saved = json.loads(cache_file.read_text(encoding="utf-8"))
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    digest = saved.get(key)
    if not isinstance(digest, str):
        digest = sha256_file(file)
        saved.pop(key, None)
        saved[key] = digest
        try:  # best effort: a read-only home only costs the next process a rehash
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(list(saved.items())[-_SHA256_KEEP:])), encoding="utf-8")
            os.replace(tmp, cache_file)
        except OSError:
            pass
    _SHA256[key] = digest
    return digest


def verify_manifest(folder: Path, files: list[Path]) -> None:
    """If `folder` holds manifest.json, check each of `files` against its recorded size and sha256 (UserError
    naming the first file that differs). Without a manifest there is nothing to check against."""
    man = folder / MANIFEST
    if not man.is_file():
        return
    try:
        listed = json.loads(man.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{man} is unreadable ({type(e).__name__}: {e}), so the weights cannot be checked "
                        "against it") from None
    hint = f"(if you changed it on purpose, delete {MANIFEST})"
    for file in files:
        name = file.relative_to(folder).as_posix()
        info = listed.get(name)
        if not isinstance(info, dict) or "size" not in info or "sha256" not in info:
            raise UserError(f"{file} is not listed in {man}: the folder changed after it was saved {hint}")
        st = file.stat()
        if st.st_size != info["size"]:
            raise UserError(f"{file} has {st.st_size} bytes but {MANIFEST} records {info['size']}: truncated or "
                            f"replaced after it was saved {hint}")
        if _sha256(file, st) != info["sha256"]:
            raise UserError(f"{file} does not match the sha256 in {MANIFEST}: corrupt, or overwritten after it "
                            f"was saved {hint}")


def read_config(path: str | os.PathLike) -> ModelConfig | DeepseekV2Config:
    """The config of an HF folder; a missing, corrupt or unsupported config.json is a UserError."""
    folder = _folder(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{cfg_file} not found: a Hugging Face model folder needs config.json")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_file} is not valid JSON ({e}); the file may be truncated") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_file} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("model_type") not in MODEL_CLASSES:
        raise UserError(f"{cfg_file}: unsupported model_type {raw.get('model_type')!r}; "
                        f"supported: {', '.join(MODEL_CLASSES)}")
    try:
        return config_from_hf(raw)
    except (UserError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{cfg_file}: {str(e).removeprefix('config.json: ')}") from None


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(file), device="cpu")
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"weights file {file} not found (listed in the index but missing)") from None
    except pickle.UnpicklingError:  # torch's own message is a page of advice to turn the safety off
        raise UserError(f"refusing to load {file}: it pickles objects other than tensors, which could run code "
                        "(read with torch.load(weights_only=True)); convert it to safetensors with a tool you "
                        "trust") from None
    except Exception as e:  # safetensors/pickle/zip errors have no common base; all mean a bad file
        raise UserError(f"cannot read weights file {file}: {type(e).__name__}: {e} "
                        "(is it truncated or corrupt?)") from None
    if not isinstance(sd, dict):
        raise UserError(f"weights file {file} does not hold a state dict")
    return sd


def _weight_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(weight files, the shard index they came from or None)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                return [folder / f for f in sorted(set(weight_map.values()))], index
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{index} is not a valid shard index ({type(e).__name__}: {e})") from None
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], None
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins, None
    raise UserError(f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
                    "or pytorch_model*.bin")


def load_state_dict_from_folder(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder's weights (CPU, checkpoint dtype), shards merged; checked against
    manifest.json (with config.json) when the folder has one."""
    folder = _folder(path)
    files, index = _weight_files(folder)
    verify_manifest(folder, [f for f in (folder / "config.json", index, *files) if f is not None and f.is_file()])
    sd: dict[str, torch.Tensor] = {}
    for file in files:
        sd.update(_load_file(file))
    return sd


def _resolve_dtype(dtype: Any, device: torch.device, sd: dict[str, torch.Tensor]) -> torch.dtype:
    """Requested dtype, else fp32 on CPU and the checkpoint's 16-bit dtype (or bf16) on an accelerator."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype.removeprefix("torch.")]
    if dtype is not None:
        raise UserError(f"dtype must be a torch.dtype or a name like 'bfloat16', got {dtype!r}")
    if device.type == "cpu":
        return torch.float32
    ckpt = next((t.dtype for t in sd.values() if t.is_floating_point()), torch.bfloat16)
    return ckpt if ckpt in (torch.bfloat16, torch.float16) else torch.bfloat16


def _resolve_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"bad device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here; use device='cpu'")
    return dev


def _check_keys(sd: dict[str, torch.Tensor], expected: set[str], where: str) -> None:
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = ([f"missing {len(missing)} tensor(s): {show(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)} tensor(s): {show(unexpected)}"] if unexpected else [])
        raise UserError(f"weights in {where} do not match config.json: " + "; ".join(parts))


_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "zeros_", "ones_", "constant_")
_NO_INIT_LOCK = threading.Lock()
_no_init_users = 0                   # loads inside `_no_init` now; the first patches nn.init, the last restores it
_saved_init: dict[str, Any] = {}


@contextmanager
def _no_init():
    """torch.nn.init's functions do nothing inside (as transformers' `no_init_weights` does): a model built on the
    meta device is overwritten by its checkpoint, and `normal_` on a meta tensor imports torch._dynamo, about 0.7
    CPU-s in every process that loads a model. Counted, so loads in several threads restore the real functions
    once, after the last of them."""
    global _no_init_users
    with _NO_INIT_LOCK:
        if _no_init_users == 0:
            _saved_init.update((name, getattr(nn.init, name)) for name in _INIT_FUNCTIONS)
            for name in _INIT_FUNCTIONS:
                setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        _no_init_users += 1
    try:
        yield
    finally:
        with _NO_INIT_LOCK:
            _no_init_users -= 1
            if _no_init_users == 0:
                for name, fn in _saved_init.items():
                    setattr(nn.init, name, fn)


def load_model(path: str | os.PathLike, device: Any = "cpu", dtype: Any = None,
               quantize: str | None = None) -> nn.Module:
    """The model of an HF folder, on `device` in `dtype`, in eval mode. `quantize="int8"` stores every Linear
    weight as int8 with per-output-channel scales (`models.quant`); None or "none" keeps them in `dtype`."""
    from .quant import check_quantize, quantize_int8
    quantize = check_quantize(quantize)
    config = read_config(path)
    dev = _resolve_device(device)
    sd = {k: v for k, v in load_state_dict_from_folder(path).items() if not k.endswith(_IGNORED_SUFFIXES)}
    target = _resolve_dtype(dtype, dev, sd)
    cls = model_class(config.model_type)
    tied = config.tie_word_embeddings
    if tied and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied checkpoints store the matrix once
    # Build without allocating or initialising weights (the checkpoint overwrites them), then adopt its tensors.
    with torch.device("meta"), _no_init():
        model = cls(config)
    _check_keys(sd, set(model.state_dict()), str(path))
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    try:
        # _check_keys saw every key of the state dict, and the models hold no buffers (RoPE tables live outside
        # the module), so assign=True replaces every meta tensor
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # shape mismatch: config.json and weights disagree
        raise UserError(f"weights in {path} do not fit config.json: {e}") from None
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = model.to(device=dev, dtype=target).eval()
    return quantize_int8(model) if quantize == "int8" else model


# --- writing ----------------------------------------------------------------------------------------------
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_pretrained(model: nn.Module, out_dir: str | os.PathLike) -> None:
    """Write config.json, model.safetensors and generation_config.json into `out_dir` (created if needed).

    Not atomic: callers that need that write to a temporary folder and rename it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    sd = model.state_dict()
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # stored once, as HF does; safetensors refuses shared tensors
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    dtype = next((v.dtype for v in sd.values() if v.is_floating_point()), torch.float32)
    hf = config.to_hf()
    hf["torch_dtype"] = _DTYPE_NAMES.get(dtype, "float32")
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
