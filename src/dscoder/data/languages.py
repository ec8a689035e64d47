"""Language identification by file extension and exact file name (v1 paper §2, Table 1: "87 languages").

The table is data: one `Language` row per language, with the extensions and exact file names that select it,
its line-comment syntax (used for the path comment that precedes each file in a repo-level sample, §2.2) and
whether `data.repo_order` parses its imports. Growing to DeepSeek-Coder-V2's 338 languages is adding rows.

    >>> detect_language("src/app/main.py")
    'python'
    >>> detect_language("build/CMakeLists.txt")
    'cmake'

Ambiguous extensions are resolved once, here, in favour of the language in the v1 list (`.h` -> c, `.m` ->
matlab, `.pl` -> perl, `.v` -> verilog); extension matching is case-insensitive (`.R`, `.S`), file-name matching
is exact. Names follow the v1 README spelling (`c-sharp`, `cpp`, `protocol-buffer`). The README's
"supported languages" list actually holds 89 names for the stated 87; the table carries all 89.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Language:
    name: str
    extensions: tuple[str, ...]          # lower case, with the dot; may be compound (".hs-boot")
    filenames: tuple[str, ...] = ()      # exact base names (Dockerfile, Makefile)
    comment: str | None = "#"            # line-comment prefix; None when the language has no comments
    comment_end: str = ""                # closing part for block-only comment syntaxes ("-->", "*/")
    imports: bool = False                # data.repo_order can parse its intra-repo dependencies


def _L(name: str, exts: str, comment: str | None = "#", comment_end: str = "", filenames: str = "",
       imports: bool = False) -> Language:
    return Language(name, tuple(exts.split()), tuple(filenames.split()), comment, comment_end, imports)


_SLASH, _DASH, _SEMI, _PCT = "//", "--", ";", "%"

# The languages of the DeepSeek-Coder v1 README list (89 names), alphabetically, as that list spells them.
_TABLE: tuple[Language, ...] = (
    _L("ada", ".adb .ads .ada", _DASH),
    _L("agda", ".agda", _DASH),
    _L("alloy", ".als", _SLASH),
    _L("antlr", ".g4", _SLASH),
    _L("applescript", ".applescript", _DASH),
    _L("assembly", ".asm .s .nasm", _SEMI),
    _L("augeas", ".aug", "(*", " *)"),
    _L("awk", ".awk"),
    _L("batchfile", ".bat .cmd", "REM"),
    _L("bluespec", ".bsv", _SLASH),
    _L("c", ".c .h", _SLASH, imports=True),
    _L("c-sharp", ".cs", _SLASH, imports=True),
    _L("clojure", ".clj .cljs .cljc .edn", _SEMI),
    _L("cmake", ".cmake", filenames="CMakeLists.txt"),
    _L("coffeescript", ".coffee"),
    _L("common-lisp", ".lisp .lsp .cl", _SEMI),
    _L("cpp", ".cpp .cc .cxx .c++ .hpp .hh .hxx .h++ .ipp .tpp .inl", _SLASH, imports=True),
    _L("css", ".css", "/*", " */"),
    _L("cuda", ".cu .cuh", _SLASH),
    _L("dart", ".dart", _SLASH),
    _L("dockerfile", ".dockerfile", filenames="Dockerfile Containerfile"),
    _L("elixir", ".ex .exs"),
    _L("elm", ".elm", _DASH),
    _L("emacs-lisp", ".el", _SEMI, filenames=".emacs"),
    _L("erlang", ".erl .hrl", _PCT),
    _L("f-sharp", ".fs .fsi .fsx", _SLASH),
    _L("fortran", ".f .f90 .f95 .f03 .f08 .for .ftn", "!"),
    _L("glsl", ".glsl .vert .frag .geom .comp .tesc .tese", _SLASH),
    _L("go", ".go", _SLASH, imports=True),
    _L("groovy", ".groovy .gradle .gvy", _SLASH, filenames="Jenkinsfile"),
    _L("haskell", ".hs .hs-boot", _DASH),
    _L("html", ".html .htm .xhtml", "<!--", " -->"),
    _L("idris", ".idr", _DASH),
    _L("isabelle", ".thy", "(*", " *)"),
    _L("java", ".java", _SLASH, imports=True),
    _L("java-server-pages", ".jsp", "<%--", " --%>"),
    _L("javascript", ".js .mjs .cjs .jsx", _SLASH, imports=True),
    _L("json", ".json", None),
    _L("julia", ".jl"),
    _L("jupyter-notebook", ".ipynb", None),
    _L("kotlin", ".kt .kts", _SLASH),
    _L("lean", ".lean", _DASH),
    _L("literate-agda", ".lagda", _DASH),
    _L("literate-coffeescript", ".litcoffee"),
    _L("literate-haskell", ".lhs", _DASH),
    _L("lua", ".lua", _DASH),
    _L("makefile", ".mk .mak", filenames="Makefile makefile GNUmakefile"),
    _L("maple", ".mpl"),
    _L("markdown", ".md .markdown", "<!--", " -->"),
    _L("mathematica", ".nb .wl .wls", "(*", " *)"),
    _L("matlab", ".m", _PCT),
    _L("ocaml", ".ml .mli", "(*", " *)"),
    _L("pascal", ".pas .pp .dpr .lpr", _SLASH),
    _L("perl", ".pl .pm .perl"),
    _L("php", ".php .phtml", _SLASH),
    _L("powershell", ".ps1 .psm1 .psd1"),
    _L("prolog", ".pro .prolog", _PCT),
    _L("protocol-buffer", ".proto", _SLASH),
    _L("python", ".py .pyi .pyw", imports=True),
    _L("r", ".r"),
    _L("racket", ".rkt", _SEMI),
    _L("restructuredtext", ".rst", ".."),
    _L("rmarkdown", ".rmd", "<!--", " -->"),
    _L("ruby", ".rb .rake .gemspec", filenames="Rakefile Gemfile"),
    _L("rust", ".rs", _SLASH, imports=True),
    _L("sas", ".sas", "/*", " */"),
    _L("scala", ".scala .sc", _SLASH),
    _L("scheme", ".scm .ss .sld", _SEMI),
    _L("shell", ".sh .bash .zsh"),
    _L("smalltalk", ".st", '"', '"'),
    _L("solidity", ".sol", _SLASH),
    _L("sparql", ".sparql .rq"),
    _L("sql", ".sql", _DASH),
    _L("stan", ".stan", _SLASH),
    _L("standard-ml", ".sml .sig", "(*", " *)"),
    _L("stata", ".do .ado", _SLASH),
    _L("systemverilog", ".sv .svh", _SLASH),
    _L("tcl", ".tcl .tk"),
    _L("tcsh", ".tcsh .csh"),
    _L("tex", ".tex .sty .cls .ltx", _PCT),
    _L("thrift", ".thrift", _SLASH),
    _L("typescript", ".ts .tsx .mts .cts", _SLASH, imports=True),
    _L("verilog", ".v .vh", _SLASH),
    _L("vhdl", ".vhd .vhdl", _DASH),
    _L("visual-basic", ".vb .vbs .bas", "'"),
    _L("xslt", ".xsl .xslt", "<!--", " -->"),
    _L("yacc", ".y .yy .yacc", _SLASH),
    _L("yaml", ".yml .yaml"),
    _L("zig", ".zig", _SLASH),
)

LANGUAGES: dict[str, Language] = {lang.name: lang for lang in _TABLE}
LANGUAGE_NAMES: tuple[str, ...] = tuple(LANGUAGES)


def _index(table: tuple[Language, ...]) -> tuple[dict[str, str], dict[str, str], int]:
    """extension -> language and file name -> language; a clash is a bug in the table, caught at import."""
    by_ext: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for lang in table:
        for key, index in [(e, by_ext) for e in lang.extensions] + [(f, by_name) for f in lang.filenames]:
            if key in index:
                raise ValueError(f"{key!r} claimed by both {index[key]} and {lang.name}")
            index[key] = lang.name
    max_dots = max(e.count(".") for e in by_ext)
    return by_ext, by_name, max_dots


_BY_EXT, _BY_NAME, _MAX_DOTS = _index(_TABLE)


def detect_language(path: str) -> str | None:
    """The canonical language name of `path` (POSIX, any directory part), or None if no rule matches.

    Exact file name first (`Makefile`), then the longest known extension (".hs-boot" before ".boot")."""
    name = posixpath.basename(path)
    lang = _BY_NAME.get(name)
    if lang is not None:
        return lang
    lower = name.lower()
    start = lower.find(".", 1)      # a leading dot is a hidden file, not an extension (".bashrc")
    while start != -1:
        ext = lower[start:]
        if ext.count(".") <= _MAX_DOTS and ext in _BY_EXT:
            return _BY_EXT[ext]
        start = lower.find(".", start + 1)
    return None


def comment_syntax(language: str | None) -> tuple[str, str]:
    """(prefix, suffix) of a one-line comment in `language`; ("#", "") when unknown or comment-less."""
    lang = LANGUAGES.get(language or "")
    if lang is None or lang.comment is None:
        return "#", ""
    return lang.comment, lang.comment_end


_ALIASES = {"c#": "c-sharp", "csharp": "c-sharp", "c++": "cpp", "js": "javascript", "ts": "typescript",
            "py": "python", "sh": "shell", "bash": "shell", "golang": "go", "rs": "rust", "yml": "yaml"}


def normalize_languages(names: Iterable[str]) -> frozenset[str]:
    """Canonical names for user-given language names (case-insensitive, common aliases such as `c++`, `c#`).

    Raises UserError naming every unknown entry, so `--languages pyhton` fails before any work starts."""
    out: set[str] = set()
    unknown: list[str] = []
    for raw in names:
        key = raw.strip().lower()
        key = _ALIASES.get(key, key)
        if key in LANGUAGES:
            out.add(key)
        else:
            unknown.append(raw)
    if unknown:
        raise UserError(f"unknown language(s) {', '.join(map(repr, unknown))}; known: {', '.join(LANGUAGE_NAMES)}")
    return frozenset(out)
