"""Import parsing per language, Algorithm 1 ordering, and repo-level sample construction (paper §2.2)."""
import random
import time

import pytest

from dscoder.data.document import FileRecord, RepoFiles
from dscoder.data.languages import detect_language
from dscoder.data.repo_order import (build_samples, dependency_order, parse_imports, path_comment,
                                     resolve_dependencies)


def _files(spec: dict[str, str]) -> list[FileRecord]:
    return [FileRecord("r", p, c, detect_language(p)) for p, c in sorted(spec.items())]


def _deps(spec: dict[str, str]) -> dict[str, set[str]]:
    return resolve_dependencies(_files(spec))


def test_python_absolute_relative_and_package_imports():
    deps = _deps({
        "src/app/__init__.py": "",
        "src/app/main.py": "import os\nimport app.util as u, app.models\nfrom .sub import thing\n"
                           "from . import config\nfrom ..outside import x\n",
        "src/app/util.py": "from app.models import (\n    Model,\n    Other,\n)\n",
        "src/app/models.py": "X = 1\n",
        "src/app/config.py": "",
        "src/app/sub/__init__.py": "from .deep import y  # comment\n",
        "src/app/sub/deep.py": "",
        "scripts/run.py": "import helpers\n",
        "scripts/helpers.py": "",
    })
    assert deps["src/app/main.py"] == {"src/app/util.py", "src/app/models.py", "src/app/sub/__init__.py",
                                       "src/app/config.py"}
    assert deps["src/app/util.py"] == {"src/app/models.py"}
    assert deps["src/app/sub/__init__.py"] == {"src/app/sub/deep.py"}
    assert deps["scripts/run.py"] == {"scripts/helpers.py"}      # script-style sibling import
    assert deps["src/app/models.py"] == set()


def test_java_imports_by_suffix_static_and_wildcard():
    deps = _deps({
        "src/main/java/com/acme/App.java": "package com.acme;\nimport com.acme.util.Strings;\n"
                                           "import static com.acme.util.Maths.square;\nimport java.util.List;\n"
                                           "import com.acme.model.*;\n",
        "src/main/java/com/acme/util/Strings.java": "package com.acme.util;\n",
        "src/main/java/com/acme/util/Maths.java": "package com.acme.util;\n",
        "src/main/java/com/acme/model/User.java": "package com.acme.model;\n",
        "src/main/java/com/acme/model/Group.java": "package com.acme.model;\n",
    })
    assert deps["src/main/java/com/acme/App.java"] == {
        "src/main/java/com/acme/util/Strings.java", "src/main/java/com/acme/util/Maths.java",
        "src/main/java/com/acme/model/User.java", "src/main/java/com/acme/model/Group.java"}


def test_csharp_using_resolves_to_namespace_declarations():
    deps = _deps({
        "App/Program.cs": "using System;\nusing Acme.Core;\nusing static Acme.Util.Helpers;\nnamespace App { }\n",
        "Core/Engine.cs": "namespace Acme.Core\n{\n  class Engine {}\n}\n",
        "Core/Parts.cs": "namespace Acme.Core;\nclass Part {}\n",
        "Util/Helpers.cs": "namespace Acme.Util { static class Helpers {} }\n",
    })
    assert deps["App/Program.cs"] == {"Core/Engine.cs", "Core/Parts.cs"}    # `using static` names a class


def test_c_cpp_includes_relative_then_repo_wide():
    deps = _deps({
        "src/main.c": '#include <stdio.h>\n#include "util.h"\n#  include "../include/api.h"\n#include "log.h"\n',
        "src/util.h": "int f(void);\n",
        "include/api.h": "",
        "lib/log/log.h": "",
        "lib/x.cpp": '#include <mylib/core.hpp>\n#include "vector"\n',
        "third/mylib/core.hpp": "",
    })
    assert deps["src/main.c"] == {"src/util.h", "include/api.h", "lib/log/log.h"}
    assert deps["lib/x.cpp"] == {"third/mylib/core.hpp"}


def test_js_ts_import_export_require_and_index_resolution():
    deps = _deps({
        "web/app.ts": "import { a } from './lib/a';\nimport def, * as ns from \"./lib\";\nimport 'react';\n"
                      "export { b } from './b.js';\nconst c = require('../shared/c');\nconst d = await import('./d');\n",
        "web/lib/a.ts": "export const a = 1;\n",
        "web/lib/index.js": "module.exports = {};\n",
        "web/b.ts": "export const b = 2;\n",
        "shared/c.js": "",
        "web/d.tsx": "",
    })
    assert deps["web/app.ts"] == {"web/lib/a.ts", "web/lib/index.js", "web/b.ts", "shared/c.js", "web/d.tsx"}


def test_go_imports_by_package_directory_suffix():
    deps = _deps({
        "cmd/server/main.go": 'package main\n\nimport (\n\t"fmt"\n\tstore "github.com/acme/app/internal/store"\n)\n'
                              'import "github.com/acme/app/pkg/util"\n',
        "internal/store/db.go": "package store\n",
        "internal/store/cache.go": "package store\n",
        "pkg/util/util.go": "package util\n",
    })
    assert deps["cmd/server/main.go"] == {"internal/store/db.go", "internal/store/cache.go", "pkg/util/util.go"}


def test_rust_mod_and_use_paths():
    deps = _deps({
        "src/main.rs": "mod net;\nmod util;\nuse crate::net::{client::Client, server};\nuse std::io;\n",
        "src/net/mod.rs": "pub mod client;\npub mod server;\n",
        "src/net/client.rs": "use super::server::Server;\n",
        "src/net/server.rs": "",
        "src/util.rs": "use crate::net::client;\n",
    })
    assert deps["src/main.rs"] == {"src/net/mod.rs", "src/util.rs", "src/net/client.rs", "src/net/server.rs"}
    assert deps["src/net/mod.rs"] == {"src/net/client.rs", "src/net/server.rs"}
    assert deps["src/net/client.rs"] == {"src/net/server.rs"}
    assert deps["src/util.rs"] == {"src/net/client.rs"}


def test_parse_imports_ignores_unparsed_languages():
    assert parse_imports(FileRecord("r", "a.rb", "require 'x'\n", "ruby")) == []


def test_algorithm1_respects_edges_outside_a_cycle_and_splits_components():
    # a -> b means a depends on b (so b must come first). c <-> d is a cycle; e depends on the cycle.
    deps = {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"c"}, "e": {"d"}, "x": {"y"}, "y": set(), "z": set()}
    orders = dependency_order(deps, deps)
    assert sorted(map(sorted, orders)) == [["a", "b", "c", "d", "e"], ["x", "y"], ["z"]]
    pos = {n: i for o in orders for i, n in enumerate(o)}
    for a, bs in deps.items():
        for b in bs:
            if {a, b} != {"c", "d"}:
                assert pos[b] < pos[a], f"{b} must precede {a}"
    assert dependency_order(deps, deps) == orders      # deterministic


def test_algorithm1_is_fast_on_large_graphs():
    rng = random.Random(0)
    nodes = [f"f{i:05d}" for i in range(10_000)]
    deps = {n: {rng.choice(nodes) for _ in range(3)} for n in nodes}
    t = time.perf_counter()
    orders = dependency_order(nodes, deps)
    assert sum(map(len, orders)) == len(nodes)
    assert time.perf_counter() - t < 5.0            # O(E log V): ~0.2 s here; O(V^2) would take minutes


def test_build_samples_one_per_component_with_path_comments():
    files = _files({
        "app/main.py": "from app import models, views\nprint('main')\n",
        "app/models.py": "from app import views\nclass Model: pass\n",
        "app/views.py": "from app import models\ndef view(): pass\n",     # models <-> views cycle
        "app/__init__.py": "",
        "tools/lint.py": "import sys\n",
        "src/lib.c": '#include "lib.h"\nint f(void) { return 1; }\n',
        "src/lib.h": "int f(void);",
        "README.md": "# Title\n",
        "Makefile": "all:\n\tcc src/lib.c\n",
    })
    samples = build_samples(RepoFiles("r", files))
    groups = [s.paths for s in samples]
    assert sorted(map(sorted, groups)) == sorted([
        ["app/__init__.py", "app/main.py", "app/models.py", "app/views.py"], ["tools/lint.py"],
        ["src/lib.c", "src/lib.h"], ["README.md"], ["Makefile"]])
    by_first = {tuple(s.paths): s for s in samples}
    app = next(s for s in samples if "app/main.py" in s.paths)
    assert app.paths[0] == "app/__init__.py"               # `from app import x` imports the package first
    assert app.paths[-1] == "app/main.py"                  # depends on both cycle members
    c = by_first[("src/lib.h", "src/lib.c")]
    assert c.text == "# src/lib.h\nint f(void);\n# src/lib.c\n#include \"lib.h\"\nint f(void) { return 1; }\n"
    assert c.languages == ["c", "c"]
    for s in samples:
        for p in s.paths:
            assert f"{path_comment(p)}\n" in s.text
    assert len({s.id for s in samples}) == len(samples)
    assert [s.paths for s in build_samples(RepoFiles("r", list(reversed(files))))] == groups


def test_path_comment_styles():
    assert path_comment("a/b.cpp", "cpp") == "# a/b.cpp"           # DeepSeek README / I#116: '#' everywhere
    assert path_comment("a/b.cpp", "cpp", style="native") == "// a/b.cpp"
    with pytest.raises(ValueError):
        path_comment("x", None, style="bogus")


def test_split_group_keeps_order_and_caps_size():
    from dscoder.data.repo_order import split_group
    sizes = {"a": 10, "b": 10, "c": 30, "d": 5, "e": 5}
    runs = split_group(["a", "b", "c", "d", "e"], sizes, 20)
    assert runs == [["a", "b"], ["c"], ["d", "e"]]           # a file over the cap stands alone
    assert [p for r in runs for p in r] == ["a", "b", "c", "d", "e"]
    assert split_group(["a", "b"], sizes, None) == [["a", "b"]]


def test_import_excerpt_finds_exactly_what_the_whole_file_gives():
    from dscoder.data.repo_order import _PY_FROM, _PY_IMPORT, _import_lines
    rng = random.Random(0)
    frags = ["import a", "from b import (", "from . import c", "x = 1", "", "  y,", ")", "from d.e import f, g",
             "import h as i, j", "# import k", "from l import", "  m", "s = 'import'", "from n import (\n"]
    texts = ["\n".join(rng.choice(frags) for _ in range(rng.randrange(1, 14))) for _ in range(1500)]
    texts += ["from x import (\nfrom y import z", "importimport\nimport x", "import", "from a import b  # c"]
    for t in texts:
        excerpt = _import_lines(t)
        assert _PY_IMPORT.findall(excerpt) == _PY_IMPORT.findall(t), t
        assert _PY_FROM.findall(excerpt) == _PY_FROM.findall(t), t


def test_suffix_index_matches_the_definition():
    from dscoder.data.repo_order import _Index
    rng = random.Random(1)
    parts = ["a", "b", "pkg", "x.py", "__init__.py", "y.h"]
    paths = {"/".join(rng.choice(parts) for _ in range(rng.randrange(1, 5))) for _ in range(300)}
    ix = _Index(paths)
    for rel in ["x.py", "a/x.py", "/pkg/__init__.py", "b/y.h", "nope.py", "a/b/a/x.py"]:
        want = sorted(p for p in paths if p == rel.lstrip("/") or p.endswith("/" + rel.lstrip("/")))
        assert ix.suffix(rel) == want


def test_go_files_of_one_package_depend_on_each_other_without_imports():
    deps = _deps({
        "store/db.go": "// Package store keeps rows.\npackage store\n\nfunc Open() *DB { return newDB() }\n",
        "store/db_impl.go": "package store\n\ntype DB struct{}\n\nfunc newDB() *DB { return &DB{} }\n",
        "store/db_test.go": "package store_test\n\nimport \"testing\"\n",       # external test package
        "cache/cache.go": "package store\n",                                 # same name, other directory
    })
    assert deps["store/db.go"] == {"store/db_impl.go"} and deps["store/db_impl.go"] == {"store/db.go"}
    assert deps["store/db_test.go"] == set() and deps["cache/cache.go"] == set()
    samples = build_samples(RepoFiles("r", _files({"store/db.go": "package store\n",
                                                   "store/db_impl.go": "package store\n"})))
    assert [s.paths for s in samples] == [["store/db.go", "store/db_impl.go"]]     # one component


def test_java_same_package_type_mentions_are_edges():
    deps = _deps({
        "src/com/acme/App.java": "package com.acme;\n\npublic class App {\n    Repo repo = new Repo();\n}\n",
        "src/com/acme/Repo.java": "package com.acme;\n\nfinal class Repo implements Store {\n    class Inner {}\n}\n",
        "src/com/acme/Store.java": "package com.acme;\n\npublic interface Store {}\n",
        "src/com/other/Inner.java": "package com.other;\n\npublic class Inner { App app; }\n",   # other package
        "src/com/acme/Unused.java": "package com.acme;\n\nenum Unused { A }\n",
    })
    assert deps["src/com/acme/App.java"] == {"src/com/acme/Repo.java"}
    assert deps["src/com/acme/Repo.java"] == {"src/com/acme/Store.java"}    # nested `Inner` declares nothing
    assert deps["src/com/other/Inner.java"] == set() and deps["src/com/acme/Unused.java"] == set()
    order = dependency_order(deps, deps)
    chain = next(g for g in order if "src/com/acme/App.java" in g)
    assert chain == ["src/com/acme/Store.java", "src/com/acme/Repo.java", "src/com/acme/App.java"]
