"""Web pages from crawl files: WARC / WARC.gz through warcio, and Parquet / JSONL rows with `url` plus `html` or
`text` through the data pipeline's table reader (`data.packed.iter_table_rows`).

    units = plan_inputs(["crawl/", "extra.parquet"], "--pool")     # UserError for a missing or unknown input
    pages, drops, seen = read_pages(units[0])                        # runs in a worker

A WARC contributes its `response` records (HTTP status 200) and `resource` records whose content type is HTML or
plain text; requests, metadata and warcinfo records are not pages and are not counted. Every other page-like
record and every row that does not become a page is a `Drop` (stage "read") with its reason: `http_status`,
`not_html`, `too_large`, `encoding`, `no_text` (under `extract.MIN_WORDS` words), `bad_url`, `bad_record`,
`bad_json`, `truncated_record`, `malformed_record`, `not_warc`, `truncated_table`.

A damaged WARC costs only its damaged records: when warcio fails on a record (a truncated gzip member, a header
that does not parse), reading resumes at the next record start found in the raw bytes (the next gzip member
header in a .warc.gz, the next `WARC/1.` line in a .warc), and the damaged stretch is one Drop giving its offset.
A file with no readable record at all is one `not_warc` Drop.
"""
from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterable
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ..document import Drop
from .extract import decode_html, enough_words, header_charset, html_to_text, url_domain

STAGE = "read"
MAX_PAGE_BYTES = 5 << 20          # a bigger HTTP body is not a text page (Common Crawl truncates at 1 MiB)
WARC_SUFFIXES = (".warc", ".warc.gz")
TABLE_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_GZIP_MAGIC, _WARC_MAGIC = b"\x1f\x8b\x08", b"WARC/1."


@dataclass(frozen=True)
class Page:
    url: str
    domain: str
    text: str


@dataclass(frozen=True)
class PageUnit:
    """One input file: a WARC ("warc") or a table ("table")."""
    path: str
    kind: str
    name: str          # the path as given, for drops and messages


def _kind(p: Path) -> str | None:
    name = p.name.lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    return None


def plan_inputs(paths: Iterable[str | os.PathLike], what: str) -> list[PageUnit]:
    """The crawl files named by `paths` (files, or folders searched recursively in sorted order).

    UserError naming `what` for a path that does not exist, a file of another kind, or no crawl file at all."""
    units: list[PageUnit] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
            units += [PageUnit(str(f), _kind(f) or "", str(f)) for f in found]
        elif p.is_file():
            kind = _kind(p)
            if kind is None:
                raise UserError(f"{what} {str(raw)!r}: not a crawl file (expected {', '.join(WARC_SUFFIXES)}, "
                                f"{', '.join(TABLE_SUFFIXES)}, or a folder of them)")
            units.append(PageUnit(str(p), kind, str(raw)))
        else:
            raise UserError(f"{what} {str(raw)!r} does not exist")
    if not units:
        raise UserError(f"{what}: no {', '.join(WARC_SUFFIXES + TABLE_SUFFIXES)} file in "
                        f"{', '.join(map(str, paths))}")
    return units


def page_from_body(url: object, body: bytes | str, content_type: str | None, is_html: bool
                   ) -> tuple[Page | None, str]:
    """(page, "") or (None, reason) for one fetched document; `body` is HTML when `is_html`, else plain text."""
    if not isinstance(url, str) or (domain := url_domain(url)) is None:
        return None, "bad_url"
    if len(body) > MAX_PAGE_BYTES:
        return None, "too_large"
    if isinstance(body, bytes):
        decoded = decode_html(body, header_charset(content_type))
        if decoded is None:
            return None, "encoding"
        body = decoded
    text = html_to_text(body) if is_html else body.strip()
    if not enough_words(text):
        return None, "no_text"
    return Page(url.strip(), domain, text), ""


# ------------------------------------------------------------------------------------------------------ WARC

def _record_page(rec) -> tuple[Page | None, str] | None:
    """What one warcio record gives: None for a record that is not a page (request, metadata, warcinfo)."""
    if rec.rec_type not in ("response", "resource"):
        return None
    url = rec.rec_headers.get_header("WARC-Target-URI")
    if rec.rec_type == "response":
        if rec.http_headers is None:
            return None, "malformed_record"
        status = rec.http_headers.get_statuscode()
        if status != "200":
            return None, "http_status"
        ctype = rec.http_headers.get_header("Content-Type")
    else:
        ctype = rec.rec_headers.get_header("Content-Type")
    mime = (ctype or "text/html").split(";")[0].strip().lower()
    if mime not in _HTML_TYPES and mime != "text/plain":
        return None, "not_html"
    body = rec.content_stream().read(MAX_PAGE_BYTES + 1)     # de-chunked and de-compressed by warcio
    return page_from_body(url, body, ctype, mime != "text/plain")


def _failure_reason(exc: BaseException, offset: int, size: int) -> str:
    if offset == 0:                         # not even the first record parses
        return "not_warc"
    import zlib
    if isinstance(exc, (EOFError, zlib.error)) or offset >= size:
        return "truncated_record"
    return "malformed_record"


def _warc_pass(f, unit: PageUnit, pages: list[Page], drops: list[Drop]) -> tuple[int, int, BaseException | None]:
    """Read records from the file position on until the end or the first damage: (page-like records seen,
    offset reached, the error or None). Trailing bytes that warcio stops at silently (a gzip member cut short at
    the end of the file) come back as an EOFError at their offset."""
    from warcio.archiveiterator import ArchiveIterator

    it = ArchiveIterator(f)
    seen = 0
    try:
        for rec in it:
            if rec.format != "warc":        # warcio also reads ARC, and takes any text line for an ARC header
                raise ValueError(f"not a WARC record (read as {rec.format})")
            got = _record_page(rec)
            if got is not None:
                seen += 1
                page, reason = got
                if page is not None:
                    pages.append(page)
                else:
                    drops.append(Drop(unit.name, str(rec.rec_headers.get_header("WARC-Target-URI")), STAGE, reason))
            it.read_to_end()
    except Exception as e:     # noqa: BLE001 - warcio and zlib raise many types on damaged input
        return seen, it.offset, e
    f.seek(it.offset)
    rest = f.read(4096)
    return seen, it.offset, (EOFError("unparsed bytes at the end of the file") if rest.strip() else None)


def read_warc(unit: PageUnit) -> tuple[list[Page], list[Drop], int]:
    """(pages, drops, page-like records seen) of one WARC file; see the module docstring for damage."""
    pages: list[Page] = []
    drops: list[Drop] = []
    seen, pos, in_damage = 0, 0, False
    with open(unit.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return [], [Drop(unit.name, "@0", STAGE, "not_warc", "empty file")], 1
        magic = _GZIP_MAGIC if f.read(2) == _GZIP_MAGIC[:2] else _WARC_MAGIC
        # warcio writes a warning per badly terminated record to stderr; the Drop already reports it
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw, redirect_stderr(io.StringIO()):
            while True:
                f.seek(pos)
                n, at, err = _warc_pass(f, unit, pages, drops)
                seen += n
                if err is None:
                    break
                if n or at > pos:
                    in_damage = False            # a record was read since the last damage: this is new damage
                if not in_damage:
                    seen += 1
                    drops.append(Drop(unit.name, f"@{at}", STAGE, _failure_reason(err, at, size),
                                      " ".join(f"{type(err).__name__}: {err}".split())[:300]))
                    in_damage = True
                pos = raw.find(magic, max(at, pos) + 1)
                if pos < 0:
                    break
    return pages, drops, seen


# ------------------------------------------------------------------------------------------------------ tables

def read_table_pages(unit: PageUnit) -> tuple[list[Page], list[Drop], int]:
    """(pages, drops, rows seen) of a Parquet / JSONL file with `url` and `html` or `text`."""
    from ..packed import corrupt_table_errors, iter_table_rows, parquet_names

    path = Path(unit.path)
    pages: list[Page] = []
    drops: list[Drop] = []
    seen = 0
    try:
        columns: list[str] = []
        if path.name.lower().endswith(".parquet"):
            names = parquet_names(path)
            columns = [c for c in ("url", "html", "text") if c in names]
            if "url" not in columns or len(columns) < 2:
                return [], [Drop(unit.name, "", STAGE, "bad_record",
                                 f"needs columns url and html or text; has {', '.join(names)}")], 1
        for n, row, reason in iter_table_rows(path, columns):
            seen += 1
            page = None
            if row is not None:
                html, text = row.get("html"), row.get("text")
                body = html if isinstance(html, (str, bytes)) and html else text
                if isinstance(body, (str, bytes)):
                    page, reason = page_from_body(row.get("url"), body, None, body is html)
                else:
                    reason = "bad_record"
            if page is None:
                where = row.get("url") if row is not None and isinstance(row.get("url"), str) else f"{unit.name}:{n}"
                drops.append(Drop(unit.name, where, STAGE, reason))
            else:
                pages.append(page)
    except corrupt_table_errors() as e:     # truncated .gz or damaged Parquet: the rows read so far stay
        drops.append(Drop(unit.name, f"{unit.name}:{seen + 1}", STAGE, "truncated_table",
                          " ".join(f"{type(e).__name__}: {e}".split())[:300]))
    return pages, drops, seen


def read_pages(unit: PageUnit) -> tuple[list[Page], list[Drop], int]:
    """One input file's pages, drops and the number of page-like records seen (a module-level function, so a
    process pool can run it)."""
    return read_warc(unit) if unit.kind == "warc" else read_table_pages(unit)
