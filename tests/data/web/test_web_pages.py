"""Crawl readers of `dscoder data web`: WARC / WARC.gz through warcio, Parquet / JSONL rows; a damaged record
costs only itself, with a reason; decoding and main-text extraction."""
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscoder.data.web.extract import decode_html, html_to_text, path_prefix, url_domain
from dscoder.data.web.pages import PageUnit, plan_inputs, read_pages
from dscoder.errors import UserError

WORDS = " ".join(f"word{i}" for i in range(80))


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each record, as warcio reports them."""
    from warcio.archiveiterator import ArchiveIterator

    out = []
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        for _ in it:
            out.append((it.get_record_offset(), it.get_record_length()))
    return out


def _read(path: Path):
    (unit,) = plan_inputs([path], "--pool")
    return read_pages(unit)


def _write_warc(path: Path, pages: list[tuple[str, bytes, str]], gz: bool = True) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gz)
        for url, body, ctype in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))


def _pages(n: int) -> list[tuple[str, bytes, str]]:
    return [(f"https://site.test/p/{i}.html", f"<html><body><p>page {i} {WORDS}</p></body></html>".encode(),
             "text/html; charset=utf-8") for i in range(n)]


def test_default_pool_reads_every_page_and_counts_the_rest(web_corpus):
    pages, drops, seen = _read(web_corpus["pool"])
    assert len(pages) == len(web_corpus["labels"]) == 1080
    assert seen == 1083
    assert Counter(d.reason for d in drops) == {"http_status": 1, "not_html": 1, "no_text": 1}
    p = pages[0]
    assert p.domain == url_domain(p.url) and p.url in web_corpus["labels"]
    assert "Home" not in p.text.split("\n")[0] and "All rights reserved" not in p.text   # boilerplate gone


def test_truncated_warc_gz_loses_only_its_last_record(tmp_path):
    path = tmp_path / "t.warc.gz"
    _write_warc(path, _pages(5))
    data = path.read_bytes()
    last_off, last_len = _records(path)[-1]
    path.write_bytes(data[:last_off + last_len // 2])
    pages, drops, seen = _read(path)
    assert [p.url for p in pages] == [f"https://site.test/p/{i}.html" for i in range(4)]
    assert [(d.reason, d.path) for d in drops] == [("truncated_record", f"@{last_off}")]
    assert seen == 5


@pytest.mark.parametrize("gz", [True, False])
def test_damaged_record_in_the_middle_costs_only_that_record(tmp_path, gz):
    path = tmp_path / ("m.warc.gz" if gz else "m.warc")
    _write_warc(path, _pages(6), gz=gz)
    data = bytearray(path.read_bytes())
    off, length = _records(path)[2]
    if gz:
        data[off + 20: off + length - 10] = b"\x00" * (length - 30)   # deflate data destroyed, header intact
    else:
        data[off: off + 8] = b"GARBAGE!"                              # the record's WARC/1.x line broken
    path.write_bytes(bytes(data))
    pages, drops, _ = _read(path)
    assert [p.url.rsplit("/", 1)[1] for p in pages] == ["0.html", "1.html", "3.html", "4.html", "5.html"]
    assert len(drops) == 1 and drops[0].reason in ("malformed_record", "truncated_record")
    assert drops[0].path == f"@{off}" and drops[0].detail


# mtime=0: the same bytes (and test id) in every process that collects them (pytest-xdist workers must agree)
@pytest.mark.parametrize("content", [b"", b"this is not a WARC file\n" * 100, gzip.compress(b"hello\n" * 50, mtime=0)],
                         ids=["empty", "text", "gzip-not-warc"])
def test_a_file_that_is_not_a_warc_is_one_counted_drop(tmp_path, content):
    path = tmp_path / "fake.warc.gz"
    path.write_bytes(content)
    pages, drops, seen = _read(path)
    assert pages == [] and seen == 1
    assert [d.reason for d in drops] == ["not_warc"]


def test_wrong_charset_is_decoded_by_fallback_and_undecodable_pages_are_dropped(tmp_path):
    latin = f"<html><body><p>café naïve {WORDS}</p></body></html>".encode("latin-1")
    assert "café" in decode_html(latin, "utf-8")                 # declared utf-8, really latin-1
    assert "café" in decode_html(latin, "no-such-charset")
    utf16 = f"<p>{WORDS}</p>".encode("utf-16-le")
    path = tmp_path / "c.warc.gz"
    _write_warc(path, [("https://a.test/x", latin, "text/html; charset=utf-8"),
                       ("https://a.test/y", utf16, "text/html; charset=utf-16-le"),
                       ("https://a.test/z", b"\xff\xfe\x00\xd8" * 200, "text/html; charset=utf-16-le")])
    pages, drops, _ = _read(path)
    assert [p.url for p in pages] == ["https://a.test/x", "https://a.test/y"]
    assert "café naïve" in pages[0].text
    assert [(d.path, d.reason) for d in drops] == [("https://a.test/z", "encoding")]


def test_tables_take_url_with_html_or_text_and_drop_bad_rows(tmp_path):
    html = f"<html><nav>menu</nav><main><p>{WORDS}</p></main></html>"
    rows = [{"url": "https://t.test/a/1", "html": html}, {"url": "https://t.test/b/2", "text": WORDS},
            {"url": "ftp://t.test/3", "text": WORDS}, {"html": html}, {"url": "https://t.test/4", "text": "short"}]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    pages, drops, seen = _read(jl)
    assert [(p.url, p.domain) for p in pages] == [("https://t.test/a/1", "t.test"), ("https://t.test/b/2", "t.test")]
    assert pages[0].text == WORDS and seen == 6
    assert Counter(d.reason for d in drops) == {"bad_url": 2, "no_text": 1, "bad_json": 1}
    pq.write_table(pa.table({"url": [r.get("url") for r in rows], "html": [r.get("html") for r in rows],
                             "text": [r.get("text") for r in rows]}), tmp_path / "p.parquet")
    pages2, drops2, _ = _read(tmp_path / "p.parquet")
    assert [p.url for p in pages2] == [p.url for p in pages]
    pq.write_table(pa.table({"link": ["x"], "body": ["y"]}), tmp_path / "bad.parquet")
    assert [d.reason for d in _read(tmp_path / "bad.parquet")[1]] == ["bad_record"]


def test_truncated_jsonl_gz_keeps_the_rows_before_the_damage(tmp_path):
    body = "\n".join(json.dumps({"url": f"https://t.test/{i}", "text": WORDS}) for i in range(200)).encode()
    data = gzip.compress(body)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    pages, drops, _ = _read(path)
    assert 0 < len(pages) < 200
    assert [d.reason for d in drops] == ["truncated_table"]


def test_plan_inputs_refuses_missing_unknown_and_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for bad, msg in [(tmp_path / "nope.warc", "does not exist"), (tmp_path / "notes.txt", "not a crawl file"),
                     (tmp_path / "empty", "no .warc")]:
        with pytest.raises(UserError, match=msg):
            plan_inputs([bad], "--pool")
    sub = tmp_path / "crawl" / "deep"
    sub.mkdir(parents=True)
    (sub / "b.warc.gz").write_bytes(b"")
    (tmp_path / "crawl" / "a.jsonl").write_text("")
    assert [(Path(u.path).name, u.kind) for u in plan_inputs([tmp_path / "crawl"], "--pool")] == \
        [("a.jsonl", "table"), ("b.warc.gz", "warc")]


def test_url_helpers_and_extraction_keep_code_blocks():
    assert url_domain("https://WWW.Example.test:8080/a?b") == "example.test"
    assert url_domain("mailto:x@y") is None and url_domain("not a url") is None
    assert path_prefix("https://mathoverflow.net/questions/123/title") == "/questions/"
    assert path_prefix("https://a.test/index.html") == "/" and path_prefix("https://a.test") == "/"
    text = html_to_text("<html><nav><a href='/'>Home</a></nav><main><p>Use it like this:</p>"
                        "<pre>def f(x):\n    return x + 1\n</pre></main></html>")
    assert "def f(x):\n    return x + 1" in text


def test_read_pages_is_picklable_for_worker_processes(web_corpus):
    import pickle

    unit = PageUnit(str(web_corpus["seed"]), "warc", "seed")
    assert pickle.loads(pickle.dumps(unit)) == unit
    assert pickle.loads(pickle.dumps(read_pages)) is read_pages


def test_common_crawl_layout_request_metadata_and_warcinfo_are_not_pages(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "cc.warc.gz"
    url = "https://site.test/docs/a.html"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record("cc.warc.gz", {"software": "test"}))
        req = StatusAndHeaders("GET /docs/a.html HTTP/1.1", [("Host", "site.test")], is_http_request=True)
        w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req))
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
                                protocol="HTTP/1.1")
        body = gzip.compress(f"<html><body><p>{WORDS}</p></body></html>".encode())
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
        w.write_record(w.create_warc_record(url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 12\r\n"),
                                            warc_content_type="application/warc-fields"))
        txt = StatusAndHeaders("200 OK", [("Content-Type", "text/plain; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("https://site.test/robots.txt", "response",
                                            payload=io.BytesIO(WORDS.encode()), http_headers=txt))
    pages, drops, seen = _read(path)
    assert [(p.url, p.text) for p in pages] == [(url, WORDS), ("https://site.test/robots.txt", WORDS)]
    assert drops == [] and seen == 2          # HTTP gzip content-encoding undone by warcio
