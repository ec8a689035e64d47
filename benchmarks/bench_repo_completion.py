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
                   builder behind `dscoder complete`, /infill and /v1/completions' extra_files (the cursor window
                   keeps half the budget; the dependencies fill the rest, farthest first outlined, then cut to the
                   definitions the file uses, then dropped).
Measures (CrossCodeEval, Ding et al. 2023, arXiv 2310.11248, reports code EM/ES and identifier EM/F1):
  EM     the generated line equals the masked one, surrounding whitespace stripped;
  ES     edit similarity of the two stripped lines, difflib's ratio (2 * matched characters / both lengths);
  ID-EM  the identifiers (Python NAME tokens that are not keywords) of both lines are the same, in order;
  ID-F1  F1 of the two lines' identifier multisets.
Each is printed without and with context and as the ratio with / without, per repository and overall; so is how
often the file defining the masked line's symbol reached the prompt (`# {path}` present), how often the symbol's own
definition line did (`def NAME`, `class NAME` or `NAME =` at the start of a line, whole or in an outline), and, for
comparison, how often the defining file reached the prompt under the former rule (every dependency dropped before
the current file loses a line: `fit_context(..., local_share=1, prune=False)`; not generated).

    .venv/bin/python benchmarks/bench_repo_completion.py                    # runs/demo/final (make demo)
    .venv/bin/python benchmarks/bench_repo_completion.py --model DIR --repos PATH [PATH ...] --context 2048

--context (prompt and new tokens together) defaults to 512 and 2048 tokens: the demo pretrains at --seq-len 512, so
its model never saw a later position.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import functools
import io
import keyword
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import tokenize
from collections import Counter
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
    symbols: list[str]    # those symbols, as the defining files name them


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
        original: dict[str, str] = {}            # local name -> the name it has in those files
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in roots):
                for a in node.names:
                    homes = sorted(p for p, names in defined.items() if p != path and a.name in names)
                    if homes and a.name != "*" and (a.asname or a.name) not in defined[path]:
                        foreign[a.asname or a.name] = homes
                        original[a.asname or a.name] = a.name
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
                                           sorted({h for u in used for h in foreign[u]}),
                                           sorted({original[u] for u in used}))
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
    """(FIM prefix, suffix) without and with repository context, both within `budget` tokens, and ("former") with
    context under the rule that drops every dependency before the current file loses a line. The file is first
    clipped to budget * `longest` (the longest token's length) characters either side of the line, which changes
    nothing fit_context keeps (no run of lines within the budget is longer) but spares it tokenizing whole files."""
    from dscoder.infer.repo_context import fit_context
    lines = text.splitlines(keepends=True)
    prefix = clip(lines[:m.line - 1], budget * longest, keep_end=True)    # the hole is the whole line, indent too
    suffix = "\n" + clip(lines[m.line:], budget * longest, keep_end=False)
    return {"without": fit_context([], prefix, suffix, count, budget, current=m.path),
            "with": fit_context(deps, prefix, suffix, count, budget, current=m.path),
            "former": fit_context(deps, prefix, suffix, count, budget, current=m.path, local_share=1.0,
                                  prune=False)}


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


def identifiers(line: str) -> list[str]:
    """The Python NAME tokens of `line` that are not keywords, in order (up to a token error, as in a cut line)."""
    out = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(line).readline):
            if t.type == tokenize.NAME and not keyword.iskeyword(t.string):
                out.append(t.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def scores(got: str, want: str) -> dict[str, float]:
    """EM, ES, ID-EM and ID-F1 of one generated line against the masked one (module docstring)."""
    got, want = got.strip(), want.strip()
    a, b = identifiers(got), identifiers(want)
    common = sum((Counter(a) & Counter(b)).values())
    f1 = 2 * common / (len(a) + len(b)) if a or b else 1.0
    return {"EM": float(got == want), "ES": difflib.SequenceMatcher(None, got, want, autojunk=False).ratio(),
            "ID-EM": float(a == b), "ID-F1": f1}


def context_part(m: Masked, prompt: str) -> str:
    """The repository context of a FIM prefix: what precedes the current file's path comment."""
    return prompt[:max(0, prompt.rfind(f"# {m.path}\n"))]


def defines(m: Masked, context: str) -> bool:
    """Whether a line of `context` defines one of the symbols the masked line uses."""
    names = "|".join(map(re.escape, m.symbols))
    return re.search(rf"^[ \t]*(?:(?:async[ \t]+)?def|class)[ \t]+(?:{names})\b|^(?:{names})[ \t]*[:=]", context,
                     re.M) is not None


def report(rows: list[tuple[Masked, dict]], got: dict[str, list[str]], context: int, budget: int) -> None:
    n = len(rows)
    sc = {mode: [scores(g, m.target) for (m, _), g in zip(rows, got[mode])] for mode in got}
    home = {mode: [any(f"# {h}\n" in context_part(m, p[mode][0]) for h in m.homes) for m, p in rows]
            for mode in ("without", "with", "former")}
    define = [defines(m, context_part(m, p["with"][0])) for m, p in rows]
    dep = [bool(context_part(m, p["with"][0])) for m, p in rows]
    mean = lambda v, idx: sum(v[i] for i in idx) / len(idx) if idx else float("nan")  # noqa: E731
    col = lambda mode, key: [s[key] for s in sc[mode]]                                 # noqa: E731
    print(f"\n--- {context} tokens of context ({budget} for the prompt) ---")
    print("measure: without / with repository context (percent); file = defining file in the prompt")
    print(f"{'repository':12} {'lines':>5} {'EM':>11} {'ES':>11} {'ID-EM':>11} {'ID-F1':>11} {'file':>9} "
          f"{'definition':>10}")
    for repo in sorted({m.repo for m, _ in rows}) + ["all"]:
        idx = [i for i, (m, _) in enumerate(rows) if repo in ("all", m.repo)]
        cells = " ".join(f"{100 * mean(col('without', k), idx):5.1f}/{100 * mean(col('with', k), idx):5.1f}"
                         for k in ("EM", "ES", "ID-EM", "ID-F1"))
        print(f"{repo:12} {len(idx):5d} {cells} {100 * mean(home['without'], idx):3.0f}/"
              f"{100 * mean(home['with'], idx):3.0f}% {100 * mean(define, idx):9.0f}%")
    every = list(range(n))
    for k in ("EM", "ES", "ID-EM", "ID-F1"):
        a, b = mean(col("without", k), every), mean(col("with", k), every)
        ratio = f"{b / a:.2f}" if a else "n/a (0 without context)"
        print(f"{k:6} without repository context {a:6.1%}, with {b:6.1%}: ratio with/without {ratio}")
    print(f"defining file in the prompt: without context {mean(home['without'], every):.0%} (by construction), with "
          f"{mean(home['with'], every):.0%} (under the former rule {mean(home['former'], every):.0%}); the symbol's "
          f"definition line in {mean(define, every):.0%}; some dependency in {mean(dep, every):.0%}")
    idx = [i for i in every if home["with"][i]]
    print(f"on the {len(idx)} lines whose defining file was in the prompt: EM without "
          f"{mean(col('without', 'EM'), idx):.1%}, with {mean(col('with', 'EM'), idx):.1%}; ES without "
          f"{mean(col('without', 'ES'), idx):.1%}, with {mean(col('with', 'ES'), idx):.1%}")
    for mode in ("without", "with"):
        pair = [(m, g, s["ES"]) for (m, _), g, s in zip(rows, got[mode], sc[mode])]
        m, g, _ = max(pair, key=lambda x: x[2])
        print(f"e.g. {mode:7} {m.repo}/{m.path}:{m.line}  want {m.target!r}  got {g.strip()!r}  (best ES)")


def main() -> int:
    args = parse()
    import torch

    from dscoder.infer.repo_context import FIM_OVERHEAD, dependency_files, read_repo
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
        over = [m for m, r in rows for p, s in r.values() if count(p) + count(s) + FIM_OVERHEAD > budget]
        if over:
            sys.exit(f"error: a prompt for {over[0].path}:{over[0].line} is over the {budget}-token budget")
        got = {mode: generate(engine, tok, [p[mode] for _, p in rows], args) for mode in ("without", "with")}
        report(rows, got, context, budget)
    print(f"\n{time.monotonic() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
