"""Quality screening of v1 §2.4: tree-sitter syntax errors per language and the readability heuristics."""
import base64
import os

import pytest

from dscoder.data.document import FileRecord, RepoFiles
from dscoder.data.quality import apply_quality, parser_for, readability_issue, syntax_error

GOOD_AND_BROKEN = {
    "python": ("x.py", "def f(a):\n    return a * 2\n", "def f(a:\n    return a * 2\n"),
    "java": ("A.java", "class A { int f() { return 1; } }\n", "class A { int f() { return 1; }\n"),
    # C/C++ tolerate small error islands (macros), so their broken samples are blatant breaks.
    "c": ("a.c", "int f(void) { return 1; }\n", "int f(void) { return 1; }\nint x = {{ ;; )) (( ;\n"),
    "cpp": ("a.cpp", "template <class T> T f(T x) { return x; }\n", "int f() {\n  if (x) {\n    return 1;\n"),
    "c-sharp": ("A.cs", "class A { int F() => 1; }\n", "class A { int F() => ; }\n"),
    "javascript": ("a.js", "const f = (a) => a + 1;\n", "const f = (a) => { a + ;\n"),
    "typescript": ("a.ts", "function f(a: number): number { return a; }\n", "function f(a: number: number {}\n"),
    "go": ("a.go", "package a\n\nfunc F() int { return 1 }\n", "package a\n\nfunc F() int { return 1\n"),
    "rust": ("a.rs", "fn f() -> i32 { 1 }\n", "fn f() -> i32 { let x = ; }\n"),
}


@pytest.mark.parametrize("lang", sorted(GOOD_AND_BROKEN))
def test_syntax_error_per_language(lang):
    path, good, broken = GOOD_AND_BROKEN[lang]
    assert parser_for(lang) is not None
    assert syntax_error(FileRecord("r", path, good, lang)) is False
    assert syntax_error(FileRecord("r", path, broken, lang)) is True


def test_tsx_header_and_unchecked_languages():
    tsx = "const App = () => <div className=\"a\">{1}</div>;\n"
    assert syntax_error(FileRecord("r", "App.tsx", tsx, "typescript")) is False
    header = "namespace n { class K { public: int v; }; }\n"
    assert syntax_error(FileRecord("r", "k.h", header, "c")) is False          # .h parses as C++
    assert syntax_error(FileRecord("r", "x.rb", "def f(:\n", "ruby")) is False  # no parser: not checked


def test_c_macro_noise_tolerated_but_real_breaks_not():
    body = "".join(f"int f{i}(int a) {{\n  return a + {i};\n}}\n" for i in range(30))
    macro = "API_EXPORT CALLCONV int g(int a) MAYBE_UNUSED { return a; }\n"   # macros tree-sitter cannot expand
    assert syntax_error(FileRecord("r", "m.c", body + macro + body, "c")) is False
    conflict = "<<<<<<< HEAD\nint v = 1;\n=======\nint v = 2;\n>>>>>>> feature\n"
    assert syntax_error(FileRecord("r", "m.c", body[:300] + conflict + body[:300], "c")) is True
    template = "int ${name}_init(${type} *self) {\n  {% for f in fields %}self->{{f}} = 0;{% endfor %}\n}\n"
    assert syntax_error(FileRecord("r", "t.cpp", template * 5, "cpp")) is True
    python_as_c = "def main():\n    for i in range(3):\n        print(f'{i}')\n\nmain()\n" * 3
    assert syntax_error(FileRecord("r", "p.h", python_as_c, "c")) is True
    assert syntax_error(FileRecord("r", "m.py", "x = 1\n" * 500 + "y = (\n", "python")) is True   # strict


def test_readability():
    code = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(40))
    assert readability_issue(FileRecord("r", "a.py", code, "python")) is None
    blob = base64.b64encode(os.urandom(1500)).decode()
    pem = "KEY = (\n" + "".join(f"    '{blob[i:i + 64]}'\n" for i in range(0, len(blob), 64)) + ")\n"
    assert readability_issue(FileRecord("r", "k.py", code[:400] + pem, "python")) == "encoded_blob"
    table = "static const unsigned char t[] = {\n" + "  0x1f, 0xa0, 0x33, 0x7e, 0x00, 0xff,\n" * 60 + "};\n"
    assert readability_issue(FileRecord("r", "t.c", table, "c")) == "hex_table"
    wide = ("call(" + ", ".join(["argument_value"] * 14) + ")\n") * 10 + "x = 1\n" * 5
    assert readability_issue(FileRecord("r", "w.py", wide, "python")) == "long_lines"
    long_ident = "path = 'src/main/java/com/example/project/module/submodule/SomeVeryLongClassNameHere'\n"
    assert readability_issue(FileRecord("r", "p.py", long_ident * 40, "python")) is None   # no digits: not a blob


def test_apply_quality():
    repo = RepoFiles("r", [FileRecord("r", "a.py", "x = 1\n", "python"),
                           FileRecord("r", "b.py", "def (:\n", "python"),
                           FileRecord("r", "c.md", "# Title\n", "markdown")])
    kept, drops = apply_quality(repo)
    assert [f.path for f in kept.files] == ["a.py", "c.md"]
    assert [(d.path, d.stage, d.reason) for d in drops] == [("b.py", "quality", "syntax_error")]
    kept, drops = apply_quality(repo, check_syntax=False)
    assert len(kept.files) == 3 and drops == []


def test_blob_prescreen_agrees_with_the_regex():
    from dscoder.data.quality import _BLOB_RUN, _DIGIT, BLOB_MIN_RUN, encoded_chars
    blob = base64.b64encode(os.urandom(300)).decode()
    cases = ["x" * (BLOB_MIN_RUN - 1) + "1", "a1" * BLOB_MIN_RUN, "é" + "b2" * 40 + "é", "/" * 200,
             "ab" * 31 + "-" + "cd" * 31 + "9", "k = '" + blob + "'\n", "AB" * 40 + "=="]
    for text in cases:
        assert encoded_chars(text) == sum(len(m) for m in _BLOB_RUN.findall(text) if _DIGIT.search(m))
    assert encoded_chars("a1" * BLOB_MIN_RUN) == 2 * BLOB_MIN_RUN and encoded_chars("x" * (BLOB_MIN_RUN - 2) + "1") == 0


def test_hex_literal_count_agrees_with_the_regex():
    """`hex_literal_chars` finds `_HEX_LITERAL`'s matches through a faster pattern: same total on every string."""
    import random

    from dscoder.data.quality import _HEX_LITERAL, hex_literal_chars
    rng = random.Random(0)
    pieces = ["0", "x", "X", "0x", "0X1", "a", "F", "g", "_", " ", "\n", "é", "٣", "²", "1", ".", "(", "ab"]
    cases = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 24))) for _ in range(3000)]
    cases += ["a0x1F 0x1F", "10x5", "0xABg 0x0x1", "_0x12,0x34", "٣0xff", "0x" * 50]
    for text in cases:
        assert hex_literal_chars(text) == sum(map(len, _HEX_LITERAL.findall(text))), text
    assert hex_literal_chars("a0x1F 0x1F (0xab)") == 8
