"""The embedded default crawl of `dscoder data web`: small WARC files generated offline, for the tests, the demo
and `benchmarks/bench_web_recall.py`.

    corpus = write_default_corpus("crawl/")        # crawl/seed.warc.gz, crawl/pool.warc.gz, crawl/labels.json
    dscoder data web crawl/pool.warc.gz --seed-pages crawl/seed.warc.gz --out web/ --buckets 200000

No page is fetched: pages are assembled from templates by a seeded generator, so the same `seed` gives the same
bytes. Domains (reserved `.test` names) and what the recall iterations should do with them:

- `docs.pylib.test/library/` : Python library reference pages (prose + `>>>` sessions + code). The seed is drawn
  from here, and the pool holds more of them: the first classifier recalls them.
- `rustlang.test/book/`      : Rust tutorial chapters: programming prose (shared with the Python pages) around Rust
  code. Pages with much shared prose are recalled by the first classifier, the rest are not.
- `rustlang.test/std/`       : Rust API reference: Rust signatures and examples with little shared prose. The first
  classifier misses most of them; once `/book/` is annotated and joins the seed, iteration 2 recovers them.
- `rustlang.test/blog/`      : community news on the code domain: not code, never annotated (its path differs).
- `news.test`, `recipes.test`, `travel.test`: prose.

The pool WARC also holds records that are not pages or are bad pages (a request record, a 404, an image, a page
under 50 words) so that the read stage's counting is exercised. `labels.json` maps every pool URL to its group
(`python`, `rust-book`, `rust-std`, `rust-blog`, `news`, `recipes`, `travel`); code groups are `CODE_GROUPS`.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

CODE_GROUPS = ("python", "rust-book", "rust-std")
_DATE = "2024-01-01T00:00:00Z"          # fixed, so that the same seed writes the same bytes

_MODULES = ("os path json csv re math random time datetime heapq bisect array struct zlib gzip shutil glob fnmatch "
            "string textwrap difflib enum functools itertools operator pathlib pickle copy pprint typing socket "
            "select signal threading queue sched contextlib abc atexit logging argparse getopt sqlite3 hashlib hmac "
            "secrets base64 binascii codecs io tempfile filecmp statistics fractions decimal numbers cmath").split()
_PY_NOUNS = "list dict tuple string bytes object value argument iterator file path buffer sequence key item".split()
_PY_VERBS = "returns raises accepts converts reads writes creates removes yields compares parses formats".split()
_PROG = ("the function returns a new value of the given type when the argument is valid; otherwise an error is "
         "raised and the caller must handle it. each method of the object takes the default parameter and the "
         "result is a list of items in the same order as the input sequence. this example shows how a variable "
         "is passed to the function and how the return value is used in a loop over the elements").split()
_RUST_TYPES = "Vec String HashMap Option Result Box Rc Arc RefCell Cell BTreeMap VecDeque Mutex".split()
_RUST_FNS = "push pop insert remove get len is_empty iter map filter collect unwrap expect clone take".split()
_TOPICS = {
    "news": ("council election minister vote parliament mayor campaign budget tax reform protest strike economy "
             "inflation market investors shares bank court judge trial police report official statement "
             "government policy health hospital school teachers weather storm flood season league match coach "
             "players goal victory championship").split(),
    "recipes": ("flour sugar butter eggs milk salt pepper garlic onion tomato basil oregano olive oil oven bake "
                "minutes simmer boil stir whisk knead dough crust sauce soup stew roast chicken beef pork lemon "
                "cream cheese chocolate vanilla cinnamon honey serve plate bowl pan skillet tablespoon cup").split(),
    "travel": ("beach mountain island village museum cathedral castle harbour hotel hostel flight train ferry "
               "passport luggage guide tour hiking trail sunset market street festival culture cuisine coast "
               "valley lake river bridge square palace temple garden view visitors tickets season").split(),
    "rust-blog": ("community team conference meetup volunteers thanks contributors survey announcement release "
                  "party celebrate welcome newcomers mentoring event venue travel speakers talks sponsors "
                  "organisers photos gathering friends year highlights").split(),
}
_GLUE = "the a of and to in is was for on with that at by from this it as be are were has had will".split()


def _prose(rng: random.Random, vocab: list[str], words: int) -> str:
    out = []
    for _ in range(words):
        out.append(rng.choice(_GLUE) if rng.random() < 0.45 else rng.choice(vocab))
    return " ".join(out).capitalize() + "."


def _python_page(rng: random.Random, k: int) -> tuple[str, str]:
    mod = _MODULES[k % len(_MODULES)]
    fns = [f"{rng.choice(['get', 'read', 'make', 'parse', 'load', 'split', 'join'])}_{rng.choice(_PY_NOUNS)}"
           for _ in range(4)]
    parts = [f"<h1>{mod} — {rng.choice(_PY_NOUNS)} utilities</h1>"]
    for fn in fns:
        arg, noun = rng.choice(_PY_NOUNS), rng.choice(_PY_NOUNS)
        parts.append(f"<p><code>{mod}.{fn}({arg}, default=None)</code> {rng.choice(_PY_VERBS)} a {noun} from "
                     f"the {arg}. {' '.join(rng.sample(_PROG, 18))}.</p>")
        parts.append(f"<pre>&gt;&gt;&gt; import {mod}\n&gt;&gt;&gt; {mod}.{fn}([1, 2, 3])\n[1, 2, 3]\n"
                     f"def {fn}_all(items, key=None):\n    result = []\n    for item in items:\n"
                     f"        if item is not None:\n            result.append({mod}.{fn}(item))\n"
                     f"    return result\n</pre>")
    return f"https://docs.pylib.test/library/{mod}-{k}.html", _html(f"{mod}", parts)


_RUST_TERMS = ("ownership borrow lifetime trait crate allocation panic thread safety unsafe pointer reference slice "
               "closure generic macro cargo compiler struct enum").split()


def _rust_snippet(rng: random.Random) -> str:
    t, f = rng.choice(_RUST_TYPES), rng.choice(_RUST_FNS)
    return rng.choice([f"let mut v = {t}::new(); v.{f}(42);", f"impl&lt;T&gt; {t}&lt;T&gt; {{ pub fn {f}(&amp;self) }}",
                       f"fn main() {{ let x: {t}&lt;u8&gt; = {t}::default(); }}"])


def _rust_book_page(rng: random.Random, k: int) -> tuple[str, str]:
    shared = rng.random()                 # how much Python-like programming prose the chapter has
    parts = [f"<h1>Chapter {k}: {rng.choice(_RUST_TERMS)} and {rng.choice(_RUST_TERMS)}</h1>"]
    for _ in range(4):
        words = " ".join(rng.sample(_PROG, 30)) + "." if rng.random() < shared else \
            _prose(rng, _RUST_TERMS + _TOPICS["rust-blog"], 40)
        parts.append(f"<p>{words}</p><pre>{_rust_snippet(rng)}</pre>")
    return f"https://rustlang.test/book/ch{k:02d}.html", _html(f"chapter {k}", parts)


def _rust_std_page(rng: random.Random, k: int) -> tuple[str, str]:
    t = _RUST_TYPES[k % len(_RUST_TYPES)]
    parts = [f"<h1>Struct std::collections::{t}</h1>"]
    for _ in range(5):
        parts.append(f"<p>{_prose(rng, _RUST_TERMS, 40)}</p><pre>{_rust_snippet(rng)}</pre>")
    return f"https://rustlang.test/std/{t.lower()}-{k}.html", _html(t, parts)


def _prose_page(rng: random.Random, group: str, k: int) -> tuple[str, str]:
    vocab = _TOPICS[group]
    parts = [f"<h1>{' '.join(rng.sample(vocab, 3)).title()}</h1>"]
    parts += [f"<p>{_prose(rng, vocab, rng.randint(30, 60))}</p>" for _ in range(rng.randint(3, 6))]
    host = "rustlang.test/blog" if group == "rust-blog" else f"{group}.test/{rng.choice(['2023', '2024', 'a'])}"
    return f"https://{host}/{'-'.join(rng.sample(vocab, 2))}-{k}.html", _html(group, parts)


def _html(title: str, parts: list[str]) -> str:
    nav = "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/contact'>Contact</a></nav>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{nav}"
            f"<main>{''.join(parts)}</main><footer>Copyright 2024. All rights reserved.</footer></body></html>")


POOL_SIZES = {"python": 80, "rust-book": 40, "rust-std": 40, "rust-blog": 20, "news": 300, "recipes": 300,
              "travel": 300}
SEED_SIZE = 120


def generate(seed: int = 0, scale: int = 1) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(seed pages [(url, html)], pool pages [(url, html, group)] `scale` times `POOL_SIZES`), shuffled by `seed`."""
    rng = random.Random(seed)
    seed_pages = [_python_page(rng, k) for k in range(SEED_SIZE)]
    makers = {"python": lambda k: _python_page(rng, SEED_SIZE + k), "rust-book": lambda k: _rust_book_page(rng, k),
              "rust-std": lambda k: _rust_std_page(rng, k)}
    pool = []
    for group, n in POOL_SIZES.items():
        make = makers.get(group, lambda k, g=group: _prose_page(rng, g, k))
        pool += [(*make(k), group) for k in range(n * scale)]
    rng.shuffle(pool)
    return seed_pages, pool


def _write_warc(path: Path, records: list[tuple[str, bytes, str, str]]) -> None:
    """records: (url, body, status line, content type), written as gzipped `response` records by warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, body, status, ctype in records:
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                       warc_headers_dict={"WARC-Date": _DATE})
            w.write_record(rec)


def write_default_corpus(folder: str | Path, seed: int = 0, scale: int = 1) -> dict:
    """Write seed.warc.gz, pool.warc.gz and labels.json under `folder`; returns {"seed", "pool", "labels"}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seed_pages, pool = generate(seed, scale)
    html = "text/html; charset=utf-8"
    _write_warc(folder / "seed.warc.gz", [(u, h.encode(), "200 OK", html) for u, h in seed_pages])
    extra = [("https://news.test/missing.html", b"<html>gone</html>", "404 Not Found", html),
             ("https://news.test/logo.png", b"\x89PNG\r\n\x1a\n", "200 OK", "image/png"),
             ("https://news.test/short.html", b"<html><p>Too short.</p></html>", "200 OK", html)]
    _write_warc(folder / "pool.warc.gz", [(u, h.encode(), "200 OK", html) for u, h, _ in pool] + extra)
    labels = {u: g for u, _, g in pool}
    (folder / "labels.json").write_text(json.dumps(labels, indent=0, sort_keys=True) + "\n")
    return {"seed": folder / "seed.warc.gz", "pool": folder / "pool.warc.gz", "labels": labels}
