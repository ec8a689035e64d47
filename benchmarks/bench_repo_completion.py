"""Repository-level completion, measured: exact match on masked lines with and without repository context.

The repositories were not in training: Python packages installed in this checkout's .venv (the demo model trains on
the interpreter's standard library, and the data build skips any site-packages folder). Each package is laid out as
its source repository would be (`NAME/NAME/...`) in a temporary folder and read by the data pipeline's reader.

A line is masked when it is one simple statement on one line (no comment, ASCII) that uses a name its file imports
with `from ... import name` from another file of the same repository, where that name is defined at top level.
Up to --per-repo such lines per repository, at most --per-file from one file, are drawn with --seed.

Each masked line (its indentation too: BPE merges indentation with the word after it) is filled in by the same
model (greedy, stopping at the newline), within the same token budget:
  without context  `# {path}` and the file above the line as the FIM prefix, the file below it as the suffix;
  with context     the same, after the file's in-repo dependencies (the import parser, Algorithm 1 order, each
                   under its path comment), fitted to the budget by `infer.repo_context.fit_context`, the one
                   builder behind `dscoder complete`, /infill and /v1/completions' extra_files.
Exact match: the generated line equals the masked one, surrounding whitespace stripped. Also printed: how often the
file defining the masked line's symbol made it into the prompt.

    .venv/bin/python benchmarks/bench_repo_completion.py                    # runs/demo/final (make demo)
    .venv/bin/python benchmarks/bench_repo_completion.py --model DIR --repos PATH [PATH ...] --context 2048

--context (prompt and new tokens together) defaults to 512 and 2048 tokens: the demo pretrains at --seq-len 512, so
its model never saw a later position; but fit_context drops every dependency before it trims the current file, so a
dependency reaches the prompt only when it fits beside the whole current file.
"""
from __future__ import annotations

import argparse
import ast
import functools
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "runs" / "demo" / "final"
# pure-Python packages pinned in constraints.txt; none is in the standard library the demo trains on
PACKAGES = ("starlette", "uvicorn", "h11", "anyio", "markdown_it", "jsonschema", "referencing", "click", "typer",
            "rich", "jinja2", "packaging")
SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Raise, ast.Assert, ast.Delete)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"checkpoint folder (default: {DEMO_MODEL.relative_to(ROOT)})")
    p.add_argument("--repos", nargs="+", default=None, metavar="PATH",
                   help="repository folders, or package folders (laid out as NAME/NAME); default: "
                        + ", ".join(PACKAGES) + " from the venv")
    p.add_argument("--per-repo", type=int, default=25, help="masked lines per repository at most")
    p.add_argument("--per-file", type=int, default=3, help="masked lines per file at most")
    p.add_argument("--context", type=int, nargs="+", default=[512, 2048], metavar="N",
                   help="tokens of prompt + completion; one table per value")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch", type=int, default=16, help="prompts generated together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args()
    if args.model is None:
        if not (DEMO_MODEL / "config.json").is_file():
            p.exit(2, f"error: no model at {DEMO_MODEL}: run `make demo` (or `python -m dscoder.demo --out "
                      f"runs/demo`) to train it, or pass --model DIR\n")
        args.model = str(DEMO_MODEL)
    for name in ("per_repo", "per_file", "max_new_tokens", "batch", "threads"):
        if getattr(args, name) < 1:
            p.exit(2, f"error: --{name.replace('_', '-')} must be at least 1\n")
    if min(args.context) <= args.max_new_tokens:
        p.exit(2, "error: every --context must be larger than --max-new-tokens\n")
    return args


def default_repos() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])
    found = [site / n for n in PACKAGES if (site / n / "__init__.py").is_file()]
    if not found:
        sys.exit(f"error: none of {', '.join(PACKAGES)} is installed under {site}: run `make setup`, or pass --repos")
    return found


def as_repo(path: Path, tmp: Path) -> Path:
    """A package folder (it has __init__.py) copied to TMP/NAME/NAME, as its repository holds it; else `path`."""
    if not (path / "__init__.py").is_file():
        return path
    dest = tmp / path.name / path.name
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    return dest.parent


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


@dataclass
class Masked:
    repo: str
    path: str
    line: int             # 1-based
    target: str           # the line's text, stripped (compared with the stripped middle)
    homes: list[str]      # the other files that define the symbols it uses


def masked_lines(records, repo: str, rng: random.Random, per_repo: int, per_file: int) -> list[Masked]:
    """Candidate lines of every Python file of one repository (see the module docstring), drawn by `rng`."""
    roots = {p.removeprefix("src/").split("/")[0].removesuffix(".py") for p in (r.path for r in records)}
    trees = {}
    for r in records:
        if r.path.endswith(".py"):
            try:
                trees[r.path] = (r.content, ast.parse(r.content))
            except (SyntaxError, ValueError):
                continue
    defined = {path: top_level_names(tree) for path, (_, tree) in trees.items()}
    picked: list[Masked] = []
    for path, (text, tree) in sorted(trees.items()):
        foreign: dict[str, list[str]] = {}       # local name -> the other files defining it
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in roots):
                for a in node.names:
                    homes = sorted(p for p, names in defined.items() if p != path and a.name in names)
                    if homes and a.name != "*" and (a.asname or a.name) not in defined[path]:
                        foreign[a.asname or a.name] = homes
        lines = text.splitlines()
        here = {}
        for node in ast.walk(tree):
            if not isinstance(node, SIMPLE) or node.lineno != node.end_lineno:
                continue
            line = lines[node.lineno - 1]
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in foreign}
            if (used and line.isascii() and line[node.col_offset:node.end_col_offset] == line.strip()
                    and len(line.strip()) >= 6):
                here[node.lineno] = Masked(repo, path, node.lineno, line.strip(),
                                           sorted({h for u in used for h in foreign[u]}))
        picked += rng.sample(sorted(here.values(), key=lambda m: m.line), min(per_file, len(here)))
    return sorted(rng.sample(picked, min(per_repo, len(picked))), key=lambda m: (m.path, m.line))


def clip(lines: list[str], chars: int, keep_end: bool) -> str:
    """The whole lines at the end (keep_end) or start of `lines` that first reach `chars` characters."""
    out, n = [], 0
    for line in reversed(lines) if keep_end else lines:
        if n >= chars:
            break
        out.append(line)
        n += len(line)
    return "".join(reversed(out) if keep_end else out)


def prompts(m: Masked, text: str, deps, count, budget: int, longest: int) -> dict[str, tuple[str, str]]:
    """(FIM prefix, suffix) without and with repository context, both within `budget` tokens. The file is first
    clipped to budget * `longest` (the longest token's length) characters either side of the line, which changes
    nothing fit_context keeps (no run of lines within the budget is longer) but spares it tokenizing whole files."""
    from dscoder.infer.repo_context import fit_context
    lines = text.splitlines(keepends=True)
    prefix = clip(lines[:m.line - 1], budget * longest, keep_end=True)    # the hole is the whole line, indent too
    suffix = "\n" + clip(lines[m.line:], budget * longest, keep_end=False)
    return {"without": fit_context([], prefix, suffix, count, budget, current=m.path),
            "with": fit_context(deps, prefix, suffix, count, budget, current=m.path)}


def generate(engine, tok, pairs: list[tuple[str, str]], args) -> list[str]:
    """The greedy middle line for every (prefix, suffix); a prompt met twice is generated once."""
    from dscoder.infer.text import decoder, infill_ids, stop_ids
    unique = list(dict.fromkeys(pairs))
    done: dict[tuple[str, str], str] = {}
    for i in range(0, len(unique), args.batch):
        part = unique[i:i + args.batch]
        outs = engine.generate([infill_ids(tok, p, s) for p, s in part], max_new_tokens=args.max_new_tokens,
                               stop_strings=["\n"], stop_ids=stop_ids(tok, "fim"), decode=decoder(tok))
        done.update(zip(part, (o.text for o in outs)))
    return [done[p] for p in pairs]


def report(rows: list[tuple[Masked, dict]], got: dict[str, list[str]], context: int, budget: int) -> None:
    n = len(rows)
    hit = {mode: [g.strip() == m.target for (m, _), g in zip(rows, got[mode])] for mode in got}
    home = [any(f"# {h}\n" in p["with"][0] for h in m.homes) for m, p in rows]
    dep = [p["with"] != p["without"] for _, p in rows]
    rate = lambda v, idx: sum(v[i] for i in idx) / len(idx) if idx else float("nan")  # noqa: E731
    print(f"\n--- {context} tokens of context ({budget} for the prompt) ---")
    print(f"{'repository':14} {'lines':>5} {'EM without':>11} {'EM with':>8} {'defining file in prompt':>24}")
    for repo in sorted({m.repo for m, _ in rows}) + ["all"]:
        idx = [i for i, (m, _) in enumerate(rows) if repo in ("all", m.repo)]
        print(f"{repo:14} {len(idx):5d} {rate(hit['without'], idx):11.1%} {rate(hit['with'], idx):8.1%} "
              f"{rate(home, idx):24.1%}")
    em = {mode: sum(v) / n for mode, v in hit.items()}
    ratio = f"{em['with'] / em['without']:.2f}" if em["without"] else "n/a (no exact match without context)"
    print(f"exact match without repository context {em['without']:.1%}, with {em['with']:.1%}: ratio {ratio}")
    idx = [i for i in range(n) if home[i]]
    print(f"some dependency fitted in {sum(dep) / n:.0%} of the prompts, the file defining the symbol in "
          f"{len(idx) / n:.0%}; on those {len(idx)} lines: exact match without {rate(hit['without'], idx):.1%}, "
          f"with {rate(hit['with'], idx):.1%}")
    for mode in ("without", "with"):
        pair = [(m, g) for (m, _), g in zip(rows, got[mode])]
        m, g = next(((m, g) for m, g in pair if g.strip() == m.target), pair[0])
        print(f"e.g. {mode:7} {m.repo}/{m.path}:{m.line}  want {m.target!r}  got {g.strip()!r}")


def main() -> int:
    args = parse()
    import torch

    from dscoder.infer.repo_context import dependency_files, read_repo
    from dscoder.infer.text import encode, load
    torch.set_num_threads(args.threads)
    engine, tok = load(args.model, "cpu")
    count = functools.lru_cache(maxsize=None)(lambda s: len(encode(tok, s)))
    longest = max(len(tok.decode([i])) for i in range(len(tok)))
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    cases = []                    # (Masked, its file's text, its dependencies in prompt order)
    with tempfile.TemporaryDirectory() as tmp:
        for src in [Path(r) for r in args.repos] if args.repos else default_repos():
            if not src.is_dir():
                sys.exit(f"error: --repos {src}: not a folder")
            repo = as_repo(src, Path(tmp))
            records = read_repo(repo)
            text = {r.path: r.content for r in records}
            for m in masked_lines(records, repo.resolve().name, rng, args.per_repo, args.per_file):
                cases.append((m, text[m.path], dependency_files(records, m.path)))
    if not cases:
        sys.exit("error: no line of these repositories uses a symbol defined in another of their files")
    print(f"model {args.model}; {len(cases)} masked lines from {len({m.repo for m, _, _ in cases})} repositories; "
          f"greedy, one line, at most {args.max_new_tokens} new tokens")
    for context in args.context:
        budget = min(context, engine.max_len) - args.max_new_tokens
        rows = [(m, prompts(m, text, deps, count, budget, longest)) for m, text, deps in cases]
        got = {mode: generate(engine, tok, [p[mode] for _, p in rows], args) for mode in ("without", "with")}
        report(rows, got, context, budget)
    print(f"\n{time.monotonic() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
