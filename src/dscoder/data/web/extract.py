"""HTML bytes -> main text, and URL -> domain / path prefix: the pure steps between a crawled page and the classifier.

Main text comes from Resiliparse (`extract_plain_text(main_content=True)`, Bevendorff et al., ChatNoir's
extractor): navigation, footers and boilerplate go, paragraphs, lists and `<pre>` code blocks stay with their line
breaks. Measured on 150 pages of the Rust book HTML (4.4 MB) on one core: Resiliparse 530 pages/s (15 MB/s),
trafilatura 2.3 36 pages/s (1 MB/s), both keeping the code blocks; hence Resiliparse.

Decoding (bad input costs only itself): the charset the HTTP header declares, else a `<meta>`
charset in the first 4 KiB, else UTF-8, each tried strictly; when the declared one fails (a page that lies about its
charset), UTF-8 and then Resiliparse's detector are tried; a page none of them decodes is dropped as "encoding".
"""
from __future__ import annotations

import codecs
import re
from urllib.parse import urlsplit

MIN_WORDS = 50       # Gopher's "50 to 100,000 words" rule (Rae et al. 2021, A.1.1), lower end: shorter pages go
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)


def header_charset(content_type: str | None) -> str | None:
    """The `charset=` parameter of a Content-Type header value, or None."""
    m = _HEADER_CHARSET.search(content_type or "")
    return m.group(1) if m else None


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(data: bytes, declared: str | None = None) -> str | None:
    """The page as text, by the order in the module docstring; None when no candidate decodes it strictly."""
    meta = _META_CHARSET.search(data[:4096])
    first = _codec(declared) or _codec(meta.group(1).decode("ascii", "replace") if meta else None)
    tried: list[str] = []
    for enc in (first, "utf-8"):
        if enc and enc not in tried:
            tried.append(enc)
            try:
                return data.decode(enc)
            except UnicodeDecodeError:
                continue
    from resiliparse.parse.encoding import detect_encoding

    guess = _codec(detect_encoding(data))
    if guess and guess not in tried:
        try:
            return data.decode(guess)
        except UnicodeDecodeError:
            return None
    return None


def html_to_text(html: str) -> str:
    """Main text of an HTML page (Resiliparse, main-content heuristics on, alt texts off), stripped."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False).strip()


def url_domain(url: str) -> str | None:
    """The host of an http(s) URL, lowercased, without a leading `www.`; None when the URL has no host."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return host[4:] if host.startswith("www.") else host


def path_prefix(url: str) -> str:
    """The URL's first path segment as a folder (`/questions/`); `/` for a page at the top of its site.

    The unit of automatic URL annotation: DeepSeekMath marked e.g. `mathoverflow.net/questions` by hand."""
    try:
        path = urlsplit(url.strip()).path
    except ValueError:
        return "/"
    head, sep, _ = path.lstrip("/").partition("/")
    return f"/{head}/" if sep and head else "/"


def enough_words(text: str) -> bool:
    return len(text.split(None, MIN_WORDS)) >= MIN_WORDS
