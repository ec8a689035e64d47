"""Code evaluation as a library: `run(EvalConfig(...), model=..., tokenizer=...) -> summary dict`.

    from dscoder.eval import EvalConfig, run
    summary = run(EvalConfig("humaneval", model="ckpt/"))                       # a checkpoint folder
    summary = run(EvalConfig("mbpp", limit=50, progress=False), model=engine, tokenizer=tok)
    summary["pass@1"], summary["n_tasks"], summary["statuses"]

`dscoder eval` (eval/harness.py) is a thin command line over the same function.
"""
__all__ = ["EvalConfig", "run"]


def __getattr__(name):  # lazy: importing dscoder.eval does not start the sandbox or load the tasks
    if name == "EvalConfig":
        from dscoder.eval.config import EvalConfig
        return EvalConfig
    if name == "run":
        from dscoder.eval.harness import run
        return run
    raise AttributeError(f"module 'dscoder.eval' has no attribute {name!r}")
