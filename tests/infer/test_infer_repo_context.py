"""Repository-level completion context: the current file's in-repo dependencies (import parser + Algorithm 1), each
under its path comment ahead of the current file; the budget keeps the cursor window's share, then dependencies give
way farthest first (outlined, cut to the definitions used, dropped), then the prefix is trimmed from the top and the
suffix from the bottom; cursor positions are checked. The budget tests count tokens with a BPE tokenizer trained on
this package's source and complete at a cursor in a copy of this package's own files."""
import ast
import functools
import shutil
from pathlib import Path

import pytest

from dscoder.errors import UserError
from dscoder.infer.repo_context import FIM_OVERHEAD, ContextFile, cursor_split, fit_context, outline, repo_cursor

SRC = Path(__file__).resolve().parents[2] / "src" / "dscoder"
REAL = ["__init__.py", "errors.py", "args.py", "infer/__init__.py", "infer/repo_context.py", "data/__init__.py",
        "data/document.py", "data/languages.py", "data/readers.py", "data/repo_order.py"]

UTIL = "CONST = 41\n\n\ndef helper(x):\n    return x + CONST\n"
MODELS = "from pkg.util import helper\n\n\nclass Model:\n    def run(self):\n        return helper(1)\n"
APP = "import os\nfrom pkg.models import Model\n\n\ndef main():\n    m = Model()\n    return m.run()\n"


def chars(s: str) -> int:
    return len(s)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {"pkg/__init__.py": "", "pkg/util.py": UTIL, "pkg/models.py": MODELS, "app.py": APP,
             "unrelated.py": "print('not imported')\n", "README.md": "# demo\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_dependencies_come_first_in_algorithm_1_order_under_path_comments(repo):
    cur = repo_cursor(str(repo), "app.py", 6, 9)
    assert [(f.path, f.distance) for f in cur.files] == [("pkg/util.py", 2), ("pkg/models.py", 1)]
    assert cur.prefix == APP[:APP.index("Model()")] and cur.suffix == APP[APP.index("Model()"):]
    prefix, suffix = fit_context(cur.files, cur.prefix, cur.suffix, chars, 10_000, current=cur.path)
    assert prefix == f"# pkg/util.py\n{UTIL}# pkg/models.py\n{MODELS}# app.py\n{cur.prefix}"
    assert suffix == cur.suffix


def test_budget_drops_the_farthest_first_then_trims_prefix_top_and_suffix_bottom():
    files = [ContextFile("far.py", "F = 1\n" * 5, 2), ContextFile("near.py", "N = 2\n" * 5, 1)]
    prefix, suffix = "".join(f"p{i}\n" for i in range(10)), "".join(f"s{i}\n" for i in range(10))
    block = len("# far.py\n") + 30
    full = 2 * block + len(prefix) + len(suffix) + 4
    p, s = fit_context(files, prefix, suffix, chars, full - 1)
    assert p == "# near.py\n" + "N = 2\n" * 5 + prefix and s == suffix
    p, s = fit_context(files, prefix, suffix, chars, len(prefix) + len(suffix) + 4)
    assert p == prefix and s == suffix
    p, s = fit_context(files, prefix, suffix, chars, 4 + 18)
    assert len(p) + len(s) <= 18 and prefix.endswith(p) and suffix.startswith(s)
    assert p.startswith("p") and p.endswith("p9\n") and s.startswith("s0\n")


def test_cursor_positions_are_checked(repo):
    assert cursor_split("ab\ncd\n", 2, 3) == ("ab\ncd", "\n")
    assert cursor_split("ab\ncd\n", 3, 1) == ("ab\ncd\n", "")
    for line, col in [(4, 1), (1, 4), (2, 0)]:
        with pytest.raises(UserError, match="--line|--col"):
            cursor_split("ab\ncd\n", line, col)
    with pytest.raises(UserError, match="--file missing.py"):
        repo_cursor(str(repo), "missing.py", 1, 1)
    with pytest.raises(UserError, match="--repo"):
        repo_cursor(str(repo / "nope"), "app.py", 1, 1)


@pytest.fixture(scope="module")
def count(tmp_path_factory):
    """Tokens of a text under a BPE tokenizer (vocabulary 400) trained on this package's infer/ and data/ source."""
    from dscoder.infer.text import encode
    from dscoder.tokenizer.bpe import train_tokenizer
    texts = [p.read_text() for p in sorted((SRC / "infer").glob("*.py")) + sorted((SRC / "data").glob("*.py"))]
    tok = train_tokenizer(texts, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))
    return functools.lru_cache(maxsize=None)(lambda s: len(encode(tok, s)))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A cursor in a copy of this package's files: repo_context.py, at `raise UserError(` in read_repo."""
    root = tmp_path_factory.mktemp("real")
    for rel in REAL:
        (root / "dscoder" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / rel, root / "dscoder" / rel)
    lines = (SRC / "infer" / "repo_context.py").read_text().splitlines()
    line = next(i for i, x in enumerate(lines, 1) if x.strip().startswith('raise UserError(f"--repo'))
    return repo_cursor(str(root), "dscoder/infer/repo_context.py", line, lines[line - 1].index("UserError") + 1)


def split(cur, prompt: str) -> tuple[str, str]:
    """(repository context, the current file's part) of a FIM prefix."""
    at = prompt.index(f"# {cur.path}\n")
    return prompt[:at], prompt[at + len(f"# {cur.path}\n"):]


def test_the_cursor_window_keeps_its_share_and_the_used_definition_gets_in(real, count):
    """At 1024 tokens the dependencies (tens of thousands of tokens) do not fit whole: the cursor window keeps half
    the budget, the nearest dependencies fill the rest cut to what the file uses, the distance-2 one is gone, and
    the definition of the name at the cursor (errors.UserError) is there. The former rule (local_share=1,
    prune=False) would have dropped every dependency."""
    cur, budget = real, 1024
    assert cur.suffix.startswith("UserError(") and {f.distance for f in cur.files} == {1, 2}
    assert sum(count(f"# {f.path}\n{f.text}") for f in cur.files) > 10 * budget
    p, s = fit_context(cur.files, cur.prefix, cur.suffix, count, budget, current=cur.path)
    assert count(p) + count(s) + FIM_OVERHEAD <= budget
    context, own = split(cur, p)
    room = budget - FIM_OVERHEAD - count(f"# {cur.path}\n")
    assert count(own) + count(s) >= room // 2 and cur.prefix.endswith(own) and cur.suffix.startswith(s)
    assert "# dscoder/errors.py\n" in context and "\nclass UserError(" in context
    present = [f.path for f in cur.files if f"# {f.path}\n" in context]
    assert all(f.distance == 1 for f in cur.files if f.path in present)
    assert [context.index(f"# {x}\n") for x in present] == sorted(context.index(f"# {x}\n") for x in present)
    assert len(context) < sum(len(f.text) for f in cur.files) / 10
    old, old_s = fit_context(cur.files, cur.prefix, cur.suffix, count, budget, current=cur.path, local_share=1.0,
                             prune=False)
    assert old.startswith(f"# {cur.path}\n") and count(old) + count(old_s) + FIM_OVERHEAD <= budget


@pytest.mark.parametrize("budget", [96, 300, 700, 1500, 4000, 12_000, None])
def test_every_budget_is_met_with_whole_lines_and_the_order_kept(real, count, budget):
    cur = real
    whole = "".join(f"# {f.path}\n{f.text}" for f in cur.files)
    head = f"# {cur.path}\n"
    if budget is None:                                   # the sum of the parts' sizes: everything fits whole
        budget = sum(count(f"# {f.path}\n{f.text}") for f in cur.files) + count(head) + count(cur.prefix) + \
            count(cur.suffix) + FIM_OVERHEAD
        assert fit_context(cur.files, cur.prefix, cur.suffix, count, budget, current=cur.path) == \
            (whole + head + cur.prefix, cur.suffix)
    p, s = fit_context(cur.files, cur.prefix, cur.suffix, count, budget, current=cur.path)
    assert count(p) + count(s) + FIM_OVERHEAD <= budget
    context, own = split(cur, p)
    assert cur.prefix.endswith(own) and cur.suffix.startswith(s)
    assert own in ("", cur.prefix) or cur.prefix[-len(own) - 1] == "\n"            # whole lines
    assert s in ("", cur.suffix) or s.endswith("\n")
    present = [f.path for f in cur.files if f"# {f.path}\n" in context]
    assert [context.index(f"# {x}\n") for x in present] == sorted(context.index(f"# {x}\n") for x in present)


def test_farther_and_unused_dependencies_give_way_first(count):
    """Three real files as dependencies of a small current file that uses errors.UserError at the cursor and
    document.FileRecord far above it: the distance-2 file goes first, then, of the two distance-1 files, the one
    used farther from the cursor; outlines come before any drop."""
    files = [ContextFile("dscoder/data/languages.py", (SRC / "data" / "languages.py").read_text(), 2),
             ContextFile("dscoder/errors.py", (SRC / "errors.py").read_text(), 1),
             ContextFile("dscoder/data/document.py", (SRC / "data" / "document.py").read_text(), 1)]
    prefix = ("from .data.document import FileRecord\nfrom .errors import UserError\n\n\nRECORD = FileRecord\n\n\n"
              "def check(x):\n    if not x:\n        raise ")
    suffix = "UserError('empty')\n    return x\n"
    sizes = {f.path: count(f"# {f.path}\n{f.text}") for f in files}
    own = count(prefix) + count(suffix) + FIM_OVERHEAD

    def present(budget):
        p, _ = fit_context(files, prefix, suffix, count, budget)
        return [f.path for f in files if f"# {f.path}\n" in p], p
    names, p = present(own + sum(sizes.values()))
    assert names == [f.path for f in files] and p.endswith(prefix)                   # everything fits whole
    names, p = present(own + sum(sizes.values()) - 1)
    assert len(names) == 3 and "# dscoder/data/languages.py\n" in p and p.count("...\n") > 0  # outlined, not dropped
    shrinking = [present(b)[0] for b in range(own + sum(sizes.values()), 8, -10)]     # budgets, largest first
    first_gone = {f.path: next(k for k, n in enumerate(shrinking) if f.path not in n) for f in files}
    assert first_gone["dscoder/data/languages.py"] < first_gone["dscoder/data/document.py"] \
        < first_gone["dscoder/errors.py"]
    assert all(f.path in n for f in files for n in shrinking[:first_gone[f.path]])     # a dropped one stays out


def test_outline_keeps_every_signature_and_parses(count):
    for path in [SRC / "infer" / "repo_context.py", SRC / "data" / "repo_order.py", SRC / "args.py"]:
        text = path.read_text()
        short = outline(text)
        tree, small = ast.parse(text), ast.parse(short)

        def signatures(t: ast.Module) -> list[str]:        # top-level defs and classes, and the methods of classes
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            return [f"{n.name}.{m.name}" if m is not n else n.name for n in t.body if isinstance(n, kinds)
                    for m in [n, *(n.body if isinstance(n, ast.ClassDef) else [])] if isinstance(m, kinds)]
        assert signatures(small) == signatures(tree) and count(short) < count(text) / 2
        assert all(len(f.body) == 1 and isinstance(f.body[0].value, ast.Constant) for f in ast.walk(small)
                   if isinstance(f, ast.FunctionDef) and f.body[0].lineno > f.lineno)
    assert outline((SRC / "errors.py").read_text(), {"UserError"}) == "class UserError(Exception):\n    ...\n"
    assert outline("def f(:\n", None) is None and outline("X = 1\n") is None       # not Python; nothing to cut
    assert outline("def f(x):\n    \"\"\"Doc.\"\"\"\n    return x\n") == "def f(x):\n    ...\n"
    assert outline("A = 1\ndef f():\n    return A\nclass B:\n    x = 1\n    def g(self):\n        pass\n",
                   {"B"}) == "class B:\n    x = 1\n    def g(self):\n        ...\n"
