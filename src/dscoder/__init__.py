"""dscoder: the DeepSeek-Coder recipe -- data, tokenizer, models, training, inference, evaluation -- in one package.

Stable API:
    dscoder.load_model(path, device="cpu", dtype=None, quantize=None) -> torch.nn.Module  # quantize="int8"
    dscoder.load_tokenizer(path)                                            # a transformers fast tokenizer
    dscoder.Engine(model)                                                   # token ids in, token ids out
"""
__version__ = "0.1.0"

__all__ = ["load_model", "load_tokenizer", "Engine", "__version__"]


def __getattr__(name):  # lazy: `import dscoder` stays cheap for the CLI and data workers
    if name == "load_model":
        from .models.hf import load_model
        return load_model
    if name == "load_tokenizer":
        from .tokenizer.bpe import load_tokenizer
        return load_tokenizer
    if name == "Engine":
        from .infer.engine import Engine
        return Engine
    raise AttributeError(f"module 'dscoder' has no attribute {name!r}")
