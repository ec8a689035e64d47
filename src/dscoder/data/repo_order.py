"""Repository-level samples: intra-repo dependency parsing and Algorithm 1 ordering (v1 paper §2.2).

For each repository, the imports of every file in a language we can parse (Python, Java, C#, C, C++,
JavaScript/TypeScript, Go, Rust) are resolved to files of the *same* repository; the dependency graph is split
into weakly connected components, and each component is ordered by Algorithm 1 (repeatedly take the unvisited file
of minimum in-degree, so a cycle never blocks; applied per strongly connected set, see `dependency_order`) and
becomes one training sample: its files concatenated, each
preceded by a path comment. Files of other languages form one sample each.

The path comment is `# {path}` for every language: DeepSeek's README builds repo-level prompts as `#utils.py`,
`# model.py` ... and I#116 says to keep `#` even for C++, so `path_comment` is the one helper that both this
module and inference prompts use (DeepSeek-Coder's README).

Import parsing is regex-based: the paper says its dependencies come from regexes over invocation statements
("import", "using", "include"); a full parser buys little for resolving file names. Files of one package use each
other without imports, so those edges come from the package instead: Go files of one directory with the same
`package` clause depend on each other (one cycle, ordered by path); a Java file depends on each file of its
`package` whose top-level type name it mentions. Known gaps: Python `importlib` and C macros that build include
names are invisible.

The pipeline runs this in two steps: `file_facts` per file (in parallel, next to the file's content) and
`order_facts` per repository (paths and facts only).

    >>> from dscoder.data.document import FileRecord, RepoFiles
    >>> repo = RepoFiles("r", [FileRecord("r", "a.py", "import b\\n", "python"),
    ...                        FileRecord("r", "b.py", "X = 1\\n", "python")])
    >>> [s.paths for s in build_samples(repo)]
    [['b.py', 'a.py']]
"""
from __future__ import annotations

import heapq
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .document import FileRecord, RepoFiles, Sample
from .languages import LANGUAGES, comment_syntax

# ----------------------------------------------------------------------------------------------- path comment

def path_comment(path: str, language: str | None = None, style: str = "hash") -> str:
    """The comment line (no newline) that precedes a file in a repo-level sample or prompt.

    style "hash" (default, DeepSeek README §4.4 and I#116): `# {path}` whatever the language.
    style "native": the language's own line comment (`// a/b.cpp`, `<!-- x.html -->`)."""
    if style == "hash":
        return f"# {path}"
    if style == "native":
        prefix, suffix = comment_syntax(language)
        return f"{prefix} {path}{suffix}"
    raise ValueError(f"unknown path comment style {style!r}; use 'hash' or 'native'")


# ----------------------------------------------------------------------------------------------- parsing

_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+?)[ \t]*(?:#.*)?$", re.M)
_PY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+\(?([\w \t,*\n]+?)\)?[ \t]*(?:#.*)?$", re.M)
_JAVA = re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?([\w.]+(?:\.\*)?)[ \t]*;", re.M)
_CS_USING = re.compile(r"^[ \t]*(?:global[ \t]+)?using[ \t]+(?:static[ \t]+)?(?:\w+[ \t]*=[ \t]*)?([\w.]+)[ \t]*;", re.M)
_CS_NAMESPACE = re.compile(r"^[ \t]*namespace[ \t]+([\w.]+)", re.M)
_C_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*(?:"([^"\n]+)"|<([^>\n]+)>)', re.M)
_JS = re.compile(r"""(?:^|[^\w$.])(?:import|export)\b[^'"`;]*?\bfrom[ \t]*['"]([^'"\n]+)['"]"""
                 r"""|(?:^|[^\w$.])import[ \t]*\(?[ \t]*['"]([^'"\n]+)['"]"""
                 r"""|\brequire[ \t]*\([ \t]*['"]([^'"\n]+)['"][ \t]*\)""", re.M)
_GO_SINGLE = re.compile(r'^[ \t]*import[ \t]+(?:[\w.]+[ \t]+)?"([^"\n]+)"', re.M)
_GO_BLOCK = re.compile(r"^[ \t]*import[ \t]*\(([^)]*)\)", re.M)
_GO_SPEC = re.compile(r'"([^"\n]+)"')
_JAVA_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([\w.]+)[ \t]*;", re.M)
# top-level declarations start in column 0 (nested types are indented in any formatted source)
_JAVA_TYPE = re.compile(r"^(?:(?:public|protected|private|abstract|final|static|sealed|non-sealed|strictfp)[ \t]+)*"
                        r"(?:class|interface|enum|record|@interface)[ \t]+([A-Za-z_$][\w$]*)", re.M)
_JAVA_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_GO_PACKAGE = re.compile(r"^package[ \t]+(\w+)", re.M)
_RUST_MOD = re.compile(r"^[ \t]*(?:pub(?:\([\w: ]+\))?[ \t]+)?mod[ \t]+(\w+)[ \t]*;", re.M)
_RUST_USE = re.compile(r"^[ \t]*(?:pub(?:\([\w: ]+\))?[ \t]+)?use[ \t]+((?:crate|super|self)::[^;]+);", re.M)


def _import_lines(text: str) -> str:
    """The lines of `text` that contain "import", each with the line after it, joined by newlines.

    Both Python import patterns start at a line holding "import" and span at most that line and the next
    (`from x import (` continues on one more line), so running them over this excerpt finds exactly what
    they find over the whole file, with a tenth of the regex work (lines are found by str.find, in C)."""
    spans: list[list[int]] = []
    pos = text.find("import")
    while pos >= 0:
        start = text.rfind("\n", 0, pos) + 1
        eol = text.find("\n", pos)
        end = -1 if eol < 0 else text.find("\n", eol + 1)
        end = len(text) if end < 0 else end
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end                   # overlapping excerpts merge, so no match is split
        else:
            spans.append([start, end])
        pos = -1 if eol < 0 else text.find("import", eol)
    return "\n".join(text[a:b] for a, b in spans)


def _py_imports(text: str) -> list[str]:
    out: list[str] = []
    text = _import_lines(text)
    for m in _PY_IMPORT.finditer(text):
        for part in m.group(1).split(","):
            name = part.split()[0] if part.split() else ""
            if name:
                out.append(name)
    for m in _PY_FROM.finditer(text):
        base = m.group(1)
        if base.strip("."):
            out.append(base)     # `from . import x` names modules x, not the package's __init__
        for part in m.group(2).replace("\n", " ").split(","):
            words = part.split()
            if words and words[0] != "*":
                # `from pkg import mod` may name a submodule: offer "pkg.mod" too; resolution drops misses
                out.append(f"{base}{'' if base.endswith('.') else '.'}{words[0]}")
    return out


def _rust_uses(text: str) -> list[str]:
    """`use crate::a::{b, c::D};` -> ["crate::a::b", "crate::a::c::D"] (one level of braces)."""
    out: list[str] = []
    for m in _RUST_USE.finditer(text):
        spec = re.sub(r"\s+", "", m.group(1))
        head, brace, rest = spec.partition("{")
        if not brace:
            out.append(spec.split(" as ")[0])
            continue
        for item in rest.rstrip("}").split(","):
            item = item.split("{")[0].strip(":")
            out.append(head + item if item and item != "self" else head.rstrip(":"))
    return out


def parse_imports(rec: FileRecord) -> list[str]:
    """Raw import specifiers of one file, in source order (module names, include strings, package paths).

    Python: dotted names, relative ones keep their leading dots (".x", "..pkg.mod"); Java: "pkg.Cls" or "pkg.*";
    C#: namespaces; C/C++: include strings ('"x.h"' kept as `x.h`, angle ones as `<x.h>`); JS/TS: module
    specifiers; Go: import paths; Rust: "mod:x" for `mod x;` and "crate::a::b" / "super::x" paths."""
    text, lang = rec.content, rec.language
    if lang == "python":
        return _py_imports(text)
    if lang == "java":
        return _JAVA.findall(text)
    if lang == "c-sharp":
        return _CS_USING.findall(text)
    if lang in ("c", "cpp"):
        return [q if q else f"<{a}>" for q, a in _C_INCLUDE.findall(text)]
    if lang in ("javascript", "typescript"):
        return [a or b or c for a, b, c in _JS.findall(text)]
    if lang == "go":
        specs = _GO_SINGLE.findall(text)
        for block in _GO_BLOCK.findall(text):
            specs += _GO_SPEC.findall(block)
        return specs
    if lang == "rust":
        return [f"mod:{m}" for m in _RUST_MOD.findall(text)] + _rust_uses(text)
    return []


# ----------------------------------------------------------------------------------------------- resolution

class _Index:
    """Path lookups over one repository's files: exact, by path suffix (at a '/' boundary) and by directory."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = set(paths)
        self.by_dir: dict[str, list[str]] = defaultdict(list)
        # every '/'-boundary suffix of every path -> the paths ending so, in path order: one dict lookup per
        # import instead of a scan over all files sharing a basename (thousands of `__init__.py` in big repos)
        self.by_suffix: dict[str, list[str]] = defaultdict(list)
        for p in sorted(self.paths):
            self.by_dir[posixpath.dirname(p)].append(p)
            parts = p.split("/")
            for k in range(len(parts)):
                self.by_suffix["/".join(parts[k:])].append(p)

    def suffix(self, rel: str) -> list[str]:
        """Files whose path is `rel` or ends with `/rel`."""
        return list(self.by_suffix.get(rel.lstrip("/"), ()))

    def first(self, candidates: Iterable[str]) -> list[str]:
        """The first candidate path that exists (exactly, once normalised), as a 0/1-element list."""
        for c in candidates:
            if not c or c[0] == "." or "/." in c or "//" in c or c[-1] == "/":     # else normpath(c) == c
                c = posixpath.normpath(c)
            if c in self.paths:
                return [c]
        return []


def _join(a: str, b: str) -> str:
    """posixpath.join(a, b) for a `b` that does not start with "/" (resolution's hot path)."""
    return a + b if not a or a[-1] == "/" else f"{a}/{b}"


def _resolve_python(spec: str, path: str, ix: _Index) -> list[str]:
    dots = len(spec) - len(spec.lstrip("."))
    mod = spec[dots:].replace(".", "/")
    if dots:
        base = posixpath.dirname(path)
        for _ in range(dots - 1):
            base = posixpath.dirname(base)
        stem = posixpath.join(base, mod) if mod else base
        return ix.first([stem + ".py", stem + "/__init__.py"] if mod else [stem + "/__init__.py"])
    if not mod:
        return []
    # script-style sibling import first, then the best suffix match (src/ layouts): shortest path, then name
    here = posixpath.dirname(path)
    stem = _join(here, mod)                  # mod starts with spec's first non-dot character, never "/"
    sibling = ix.first([stem + ".py", stem + "/__init__.py"])
    hits = sibling or ix.suffix(mod + ".py") or ix.suffix(mod + "/__init__.py")
    return [min(hits, key=lambda p: (p.count("/"), p))] if hits else []


_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".d.ts")


def _resolve_js(spec: str, path: str, ix: _Index) -> list[str]:
    if not spec.startswith((".", "/")):
        return []    # bare specifiers are packages from node_modules, not repo files
    stem = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec)).lstrip("/")
    cands = [stem] + [stem + e for e in _JS_EXTS] + [f"{stem}/index{e}" for e in _JS_EXTS]
    if stem.endswith((".js", ".jsx", ".mjs", ".cjs")):   # ESM TypeScript imports name the compiled .js file
        base = stem.rsplit(".", 1)[0]
        cands += [base + e for e in (".ts", ".tsx", ".mts", ".cts")]
    return ix.first(cands)


def _resolve_c(spec: str, path: str, ix: _Index) -> list[str]:
    if spec.startswith("<"):
        return ix.suffix(spec[1:-1])[:1] if "/" in spec else []   # <pkg/x.h> may be the project's own header
    local = ix.first([posixpath.join(posixpath.dirname(path), spec)])
    return local or ix.suffix(posixpath.normpath(spec))[:1]


def _resolve_java(spec: str, ix: _Index) -> list[str]:
    parts = spec.split(".")
    if parts[-1] == "*":
        d = "/".join(parts[:-1])
        return [p for dd, files in ix.by_dir.items() if dd == d or dd.endswith("/" + d)
                for p in files if p.endswith(".java")]
    for k in range(len(parts), 1, -1):           # static imports name a member: drop trailing parts
        hits = ix.suffix("/".join(parts[:k]) + ".java")
        if hits:
            return hits[:1]
    return []


def _resolve_go(spec: str, ix: _Index) -> list[str]:
    best = ""
    for d, files in ix.by_dir.items():
        if d and (spec == d or spec.endswith("/" + d)) and len(d) > len(best) \
                and any(f.endswith(".go") for f in files):
            best = d
    return [f for f in ix.by_dir.get(best, ()) if f.endswith(".go")] if best else []


def _rust_module_dir(path: str) -> str:
    """Directory holding the children of the module defined by `path` (foo.rs -> foo/, mod.rs -> its dir)."""
    d, name = posixpath.split(path)
    return d if name in ("mod.rs", "lib.rs", "main.rs") else posixpath.join(d, name[:-3])


def _rust_crate_root(path: str, ix: _Index) -> str:
    d = posixpath.dirname(path)
    while True:
        if ix.first([posixpath.join(d, "lib.rs"), posixpath.join(d, "main.rs")]):
            return d
        if not d:
            return ""
        d = posixpath.dirname(d)


def _resolve_rust(spec: str, path: str, ix: _Index) -> list[str]:
    if spec.startswith("mod:"):
        base = posixpath.join(_rust_module_dir(path), spec[4:])
        return ix.first([base + ".rs", base + "/mod.rs"])
    segs = spec.split("::")
    if segs[0] == "crate":
        base = _rust_crate_root(path, ix)
    else:
        base = _rust_module_dir(path)
        for s in segs:
            if s not in ("super", "self"):
                break
            if s == "super":
                base = posixpath.dirname(base)
    names = [s for s in segs if s not in ("crate", "super", "self")]
    for k in range(len(names), 0, -1):           # longest module prefix that is a file; the rest are items
        stem = posixpath.join(base, *names[:k])
        hit = ix.first([stem + ".rs", stem + "/mod.rs"])
        if hit:
            return hit
    return []


@dataclass(frozen=True)
class FileFacts:
    """What ordering needs of one file, taken from its content once: imports and, where it applies, package."""
    path: str
    language: str | None
    imports: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()         # C#: the namespaces it declares
    package: str = ""                        # Java `package` / Go `package` clause
    types: tuple[str, ...] = ()              # Java: its top-level type names
    names: frozenset[str] = frozenset()      # Java: capitalised identifiers it mentions (type names, by convention)


def parsed(language: str | None) -> bool:
    """True for the languages whose dependencies are parsed (the rest form one sample per file)."""
    return language in LANGUAGES and LANGUAGES[language].imports


def file_facts(rec: FileRecord) -> FileFacts:
    """The ordering facts of one file (empty for languages that are not parsed)."""
    if not parsed(rec.language):
        return FileFacts(rec.path, rec.language)
    text, lang = rec.content, rec.language
    imports = tuple(parse_imports(rec))
    if lang == "c-sharp":
        return FileFacts(rec.path, lang, imports, namespaces=tuple(_CS_NAMESPACE.findall(text)))
    if lang == "java":
        pkg = _JAVA_PACKAGE.search(text)
        names = frozenset(w for w in _JAVA_IDENT.findall(text) if w[0].isupper())
        return FileFacts(rec.path, lang, imports, package=pkg.group(1) if pkg else "",
                         types=tuple(_JAVA_TYPE.findall(text)), names=names)
    if lang == "go":
        pkg = _GO_PACKAGE.search(text)
        return FileFacts(rec.path, lang, imports, package=pkg.group(1) if pkg else "")
    return FileFacts(rec.path, lang, imports)


def resolve_dependencies(files: list[FileRecord]) -> dict[str, set[str]]:
    """path -> the set of paths (same repository) it depends on; every parseable file is a key."""
    return resolve_facts([file_facts(f) for f in files if parsed(f.language)])


def resolve_facts(facts: list[FileFacts]) -> dict[str, set[str]]:
    """`resolve_dependencies` from facts: imports resolved to files of the repository, plus same-package edges.

    Self-dependencies are dropped; unresolved imports (stdlib, third-party packages) are ignored."""
    parse = [f for f in facts if parsed(f.language)]
    ix = _Index(f.path for f in parse)
    namespaces: dict[str, list[str]] = defaultdict(list)
    for f in parse:
        for ns in f.namespaces:
            namespaces[ns].append(f.path)
    deps: dict[str, set[str]] = {}
    # Resolution depends on the importing file only through its directory (Rust: its path), and files of one
    # directory import much the same modules: memoise per (language, spec, directory).
    memo: dict[tuple[str | None, str, str], list[str]] = {}
    for f in parse:
        found: set[str] = set()
        where = f.path if f.language == "rust" else posixpath.dirname(f.path)
        for spec in f.imports:
            key = (f.language, spec, where)
            hits = memo.get(key)
            if hits is None:
                hits = memo[key] = _resolve_one(f, spec, ix, namespaces)
            found.update(hits)
        deps[f.path] = found
    _package_edges(parse, deps)
    for path, found in deps.items():
        found.discard(path)
    return deps


def _package_edges(facts: list[FileFacts], deps: dict[str, set[str]]) -> None:
    """Same-package uses, which need no import: Go files of one directory and `package` clause use each other
    freely (each depends on all the others); a Java file depends on the files of its package whose top-level
    type names it mentions."""
    go: dict[tuple[str, str], list[str]] = defaultdict(list)
    java_types: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in facts:
        if f.language == "go" and f.package:
            go[(posixpath.dirname(f.path), f.package)].append(f.path)
        elif f.language == "java":
            for t in f.types:
                java_types[f.package][t].append(f.path)
    for members in go.values():
        for p in members:
            deps[p].update(members)
    for f in facts:
        if f.language == "java" and f.package in java_types:
            declared = java_types[f.package]
            for name in f.names.intersection(declared):
                deps[f.path].update(declared[name])


def _resolve_one(f: FileFacts, spec: str, ix: _Index, namespaces: Mapping[str, list[str]]) -> list[str]:
    lang = f.language
    if lang == "python":
        return _resolve_python(spec, f.path, ix)
    if lang in ("javascript", "typescript"):
        return _resolve_js(spec, f.path, ix)
    if lang in ("c", "cpp"):
        return _resolve_c(spec, f.path, ix)
    if lang == "java":
        return _resolve_java(spec, ix)
    if lang == "c-sharp":
        return list(namespaces.get(spec, ()))
    if lang == "go":
        return _resolve_go(spec, ix)
    if lang == "rust":
        return _resolve_rust(spec, f.path, ix)
    return []


# ----------------------------------------------------------------------------------------------- Algorithm 1

def _components(nodes: list[str], deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Weakly connected components (union-find), each sorted, ordered by their smallest node."""
    parent = {n: n for n in nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]     # path halving keeps finds near O(1)
            x = parent[x]
        return x

    for a in nodes:
        for b in deps.get(a, ()):
            if b in parent:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = defaultdict(list)
    for n in sorted(nodes):
        groups[find(n)].append(n)
    return sorted(groups.values(), key=lambda g: g[0])


def _strongly_connected(comp: list[str], succ: Mapping[str, list[str]]) -> dict[str, int]:
    """node -> id of its strongly connected component (iterative Tarjan: no recursion limit on big repos)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    scc: dict[str, int] = {}
    next_id = 0
    for root in comp:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            nxt = succ.get(v, [])
            if i < len(nxt):
                work.append((v, i + 1))
                w = nxt[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:                # v roots an SCC: pop it
                cid = next_id
                next_id += 1
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc[w] = cid
                    if w == v:
                        break
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return scc


def _min_indegree_order(members: list[str], succ: Mapping[str, list[str]]) -> list[str]:
    """The paper's rule inside one strongly connected set: take the file of minimum in-degree (ties: path)."""
    inside = set(members)
    indeg = dict.fromkeys(members, 0)
    for b in members:
        for a in succ.get(b, ()):
            if a in inside:
                indeg[a] += 1
    heap = [(indeg[n], n) for n in members]
    heapq.heapify(heap)
    visited: set[str] = set()
    order: list[str] = []
    while heap:
        d, n = heapq.heappop(heap)
        if n in visited or d != indeg[n]:
            continue                              # stale entry: a fresher (lower) in-degree was pushed later
        visited.add(n)
        order.append(n)
        for m in succ.get(n, ()):
            if m in inside and m not in visited:
                indeg[m] -= 1
                heapq.heappush(heap, (indeg[m], m))
    return order


def dependency_order(nodes: Iterable[str], deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Algorithm 1 of the v1 paper: one ordered file list per weakly connected component.

    `deps[a]` holds the files `a` depends on, i.e. graph edges b -> a. The paper repeatedly takes the file of
    minimum in-degree, so that a cycle never blocks. Taken literally, that rule can put a file before its
    dependency when a cycle sits upstream (a -> b -> {c <-> d}: every in-degree is 1, and "a" wins the tie).
    So we apply it where it is needed: strongly connected components are emitted in topological order (the
    ready one with the smallest path first), and the files *inside* a cycle by minimum in-degree (ties:
    smallest path). On acyclic graphs this is exactly Algorithm 1; every edge outside a cycle is respected.
    O(E log V) with heaps; deterministic."""
    nodes = sorted(set(nodes))
    present = set(nodes)
    succ: dict[str, list[str]] = defaultdict(list)
    for a in nodes:
        for b in sorted(set(deps.get(a, ()))):
            if b in present and b != a:
                succ[b].append(a)
    orders: list[list[str]] = []
    for comp in _components(nodes, deps):
        scc = _strongly_connected(comp, succ)
        members: dict[int, list[str]] = defaultdict(list)
        for n in comp:                                 # comp is sorted, so members[c][0] is its smallest path
            members[scc[n]].append(n)
        indeg = dict.fromkeys(members, 0)
        for b in comp:
            for a in succ[b]:
                if scc[a] != scc[b]:
                    indeg[scc[a]] += 1
        ready = [(members[c][0], c) for c, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, c = heapq.heappop(ready)
            order += _min_indegree_order(members[c], succ)
            for b in members[c]:
                for a in succ[b]:
                    if scc[a] != c:
                        indeg[scc[a]] -= 1
                        if indeg[scc[a]] == 0:
                            heapq.heappush(ready, (members[scc[a]][0], scc[a]))
        orders.append(order)
    return orders


# ----------------------------------------------------------------------------------------------- samples

def order_facts(facts: list[FileFacts]) -> list[list[str]]:
    """Algorithm 1 over one repository: its files in groups (one per dependency component, one per file of a
    language that is not parsed), each group in dependency order, groups ordered by their smallest path."""
    parse = [f for f in facts if parsed(f.language)]
    groups = dependency_order([f.path for f in parse], resolve_facts(parse))
    done = {f.path for f in parse}
    groups += [[f.path] for f in facts if f.path not in done]
    groups.sort(key=min)
    return groups


def concat_files(files: list[FileRecord], style: str = "hash") -> str:
    """Files joined as `{path comment}\\n{content}` blocks, each content ending in a newline."""
    parts = []
    for f in files:
        body = f.content if f.content.endswith("\n") else f.content + "\n"
        parts.append(f"{path_comment(f.path, f.language, style)}\n{body}")
    return "".join(parts)


def split_group(group: list[str], sizes: dict[str, int], max_bytes: int | None) -> list[list[str]]:
    """Cut an ordered component into consecutive runs of at most `max_bytes` (a bigger file stands alone).

    Not in the paper: a large repo can form one component of tens of MB (the whole stdlib is one), which a
    short-context run cannot use as one FIM document. The cut keeps Algorithm 1's order: each file still comes
    after the files it depends on, within a run or in an earlier one."""
    if not max_bytes:
        return [group]
    runs, cur, size = [], [], 0
    for p in group:
        if cur and size + sizes[p] > max_bytes:
            runs.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += sizes[p]
    return runs + [cur] if cur else runs


def build_samples(repo: RepoFiles, style: str = "hash", max_sample_bytes: int | None = None) -> list[Sample]:
    """One sample per dependency component (files in Algorithm 1 order), one per file of other languages.

    Samples are ordered by their first path in sorted order; ids are `{repo}:{k}`, stable for a given repo.
    `max_sample_bytes` splits big components at file boundaries (`split_group`); None keeps the paper's rule."""
    by_path = {f.path: f for f in repo.files}
    groups = order_facts([file_facts(f) for f in repo.files])
    sizes = {f.path: f.nbytes for f in repo.files} if max_sample_bytes else {}
    groups = [run for g in groups for run in split_group(g, sizes, max_sample_bytes)]
    samples = []
    for k, group in enumerate(groups):
        files = [by_path[p] for p in group]
        samples.append(Sample(repo=repo.repo, id=f"{repo.repo}:{k}", text=concat_files(files, style),
                              paths=list(group), languages=[f.language or "unknown" for f in files]))
    return samples
