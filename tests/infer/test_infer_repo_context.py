"""Repository-level completion context: the current file's in-repo dependencies (import parser + Algorithm 1), each
under its path comment ahead of the current file; the budget drops the farthest dependency first, then trims the
prefix from the top and the suffix from the bottom; cursor positions are checked."""
from pathlib import Path

import pytest

from dscoder.errors import UserError
from dscoder.infer.repo_context import ContextFile, cursor_split, fit_context, repo_cursor

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
