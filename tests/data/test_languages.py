"""Language table: every name of the v1 README list, extension and file-name lookup, user-given names."""
import ast
import re
from pathlib import Path

import pytest

from dscoder.data.languages import LANGUAGE_NAMES, LANGUAGES, comment_syntax, detect_language, normalize_languages
from dscoder.errors import UserError

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "004_715a5d9b27a27873.txt"
# A copy of the README list, so the test still runs where ../shared is absent.
V1_LIST_HEAD = ["ada", "agda", "alloy", "antlr", "applescript", "assembly", "augeas", "awk", "batchfile"]


def test_table_holds_the_v1_readme_list():
    assert len(LANGUAGES) == 89 and len(LANGUAGE_NAMES) == 89      # README says 87, its list names 89
    assert list(LANGUAGE_NAMES[:9]) == V1_LIST_HEAD and LANGUAGE_NAMES[-1] == "zig"
    if SEED.is_file():
        listed = ast.literal_eval(re.search(r"\['ada'.*?\]", SEED.read_text(), re.S).group(0))
        assert set(listed) == set(LANGUAGE_NAMES)


@pytest.mark.parametrize("path,lang", [
    ("src/pkg/mod.py", "python"), ("Main.java", "java"), ("a/b.cs", "c-sharp"), ("x.cpp", "cpp"),
    ("x.hpp", "cpp"), ("lib.h", "c"), ("k.cu", "cuda"), ("app.tsx", "typescript"), ("index.mjs", "javascript"),
    ("main.go", "go"), ("lib.rs", "rust"), ("Makefile", "makefile"), ("build/CMakeLists.txt", "cmake"),
    ("Dockerfile", "dockerfile"), ("script.R", "r"), ("boot.S", "assembly"), ("Types.hs-boot", "haskell"),
    ("conf/.eslintrc.json", "json"), ("ci.yml", "yaml"), ("page.HTML", "html"), ("x.xsl", "xslt"),
    ("notebook.ipynb", "jupyter-notebook"), ("q.sparql", "sparql"), ("m.zig", "zig"), ("doc.rst", "restructuredtext"),
])
def test_detect_language(path, lang):
    assert detect_language(path) == lang


@pytest.mark.parametrize("path", ["README", "LICENSE", "notes.txt", "archive.tar.gz", ".bashrc", "image.png", "x."])
def test_unknown_is_none(path):
    assert detect_language(path) is None


def test_every_row_is_reachable_and_flags():
    for lang in LANGUAGES.values():
        probe = lang.filenames[0] if lang.filenames else "f" + lang.extensions[0]
        assert detect_language(probe) == lang.name
    assert {n for n, l in LANGUAGES.items() if l.imports} == {
        "python", "java", "c-sharp", "c", "cpp", "javascript", "typescript", "go", "rust"}
    assert comment_syntax("python") == ("#", "") and comment_syntax("java") == ("//", "")
    assert comment_syntax("html") == ("<!--", " -->") and comment_syntax(None) == ("#", "")


def test_normalize_languages():
    assert normalize_languages(["Python", "c++", "C#", "js"]) == {"python", "cpp", "c-sharp", "javascript"}
    with pytest.raises(UserError, match="pyhton"):
        normalize_languages(["python", "pyhton"])
