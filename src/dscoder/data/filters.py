"""StarCoder-style rule filters and exact dedup (v1 paper §2.1).

Each rule is a pure function `rule(rec: FileRecord) -> str | None`: None keeps the file, a string is the drop
reason. `RULE_FILTERS` lists them in the order they run; `apply_filters` runs them over one repository.

    repo, drops = apply_filters(repo)          # drops carry stage "filter" and the first failing rule's reason

The paper's rules, as written there (thresholds in characters):
- average line length > 100, or maximum line length > 1000;
- fewer than 25% alphabetic characters;
- `<?xml version=` within the first 100 characters, unless the file is XSLT;
- HTML whose visible text is < 20% of the file or < 100 characters;
- JSON/YAML outside 50-5000 characters.
`content_hash` is the exact-dedup key; the pipeline removes exact duplicates across the whole build, after
repo-level near-dedup (see `data.pipeline`).

All rules are linear and run at C speed (str methods, one regex pass), so they never dominate the pipeline.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import regex

from .document import Drop, FileRecord, RepoFiles

MAX_AVG_LINE = 100
MAX_LINE = 1000
MIN_ALPHA_FRACTION = 0.25
XML_HEADER = "<?xml version="
XML_HEADER_WINDOW = 100
MIN_HTML_VISIBLE_FRACTION = 0.20
MIN_HTML_VISIBLE_CHARS = 100
DATA_SIZE_WINDOW = (50, 5000)

# Everything that is not a letter (any script): deleting these leaves exactly the alphabetic characters.
_NON_ALPHA = regex.compile(r"[^\p{L}]+")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# A tag with no `<` inside: an unclosed `<` ("a < b") then costs one scan up to the next `<`, keeping it linear.
_TAG = re.compile(r"<[^<>]*>")
_HIDDEN_BLOCKS = (("<!--", "-->"), ("<script", "</script>"), ("<style", "</style>"))


def rule_line_length(rec: FileRecord) -> str | None:
    """Average line length > 100 or longest line > 1000 characters (minified or generated code)."""
    lengths = rec.line_lengths
    if max(lengths) > MAX_LINE:
        return f"max_line_length>{MAX_LINE}"
    if sum(lengths) / len(lengths) > MAX_AVG_LINE:
        return f"avg_line_length>{MAX_AVG_LINE}"
    return None


def alpha_fraction(text: str) -> float:
    """Share of alphabetic characters (Unicode letters) in `text`; 0.0 for an empty string."""
    if not text:
        return 0.0
    # ASCII letters: bytes.translate deletes them at memcpy speed (UTF-8 bytes of other characters are >= 0x80,
    # never ASCII letters); the Unicode letter test runs only on the non-ASCII characters, usually few.
    raw = text.encode("utf-8", "surrogatepass")
    letters = len(raw) - len(raw.translate(None, _ASCII_LETTERS))
    if not text.isascii():
        letters += len(_NON_ALPHA.sub("", "".join(_NON_ASCII.findall(text))))
    return letters / len(text)


def rule_alpha_fraction(rec: FileRecord) -> str | None:
    """Fewer than 25% alphabetic characters (data dumps, numeric tables, encoded blobs)."""
    if alpha_fraction(rec.content) < MIN_ALPHA_FRACTION:
        return f"alpha_fraction<{MIN_ALPHA_FRACTION}"
    return None


def rule_xml_header(rec: FileRecord) -> str | None:
    """An XML document (header in the first 100 characters) that is not XSLT: data, not code."""
    if rec.language != "xslt" and XML_HEADER in rec.content[:XML_HEADER_WINDOW]:
        return "xml_header"
    return None


def _cut_blocks(text: str, start: str, end: str) -> str:
    """Remove every `start ... end` block (case-insensitive); an unclosed block runs to the end of the text."""
    start_re = re.compile(re.escape(start), re.IGNORECASE)
    end_re = re.compile(re.escape(end), re.IGNORECASE)
    out, pos = [], 0
    while (m := start_re.search(text, pos)) is not None:
        out.append(text[pos:m.start()])
        close = end_re.search(text, m.end())
        pos = len(text) if close is None else close.end()
    out.append(text[pos:])
    return "".join(out)


def visible_text(html: str) -> str:
    """What a browser shows: comments, <script> and <style> bodies and tags removed, whitespace collapsed."""
    for start, end in _HIDDEN_BLOCKS:
        html = _cut_blocks(html, start, end)
    return " ".join(_TAG.sub(" ", html).split())


def rule_html_visible_text(rec: FileRecord) -> str | None:
    """HTML whose visible text is < 20% of the file or < 100 characters (mostly markup or script)."""
    if rec.language != "html":
        return None
    shown = len(visible_text(rec.content))
    if shown < MIN_HTML_VISIBLE_CHARS or shown < MIN_HTML_VISIBLE_FRACTION * len(rec.content):
        return "html_visible_text"
    return None


def rule_data_size(rec: FileRecord) -> str | None:
    """JSON or YAML outside 50-5000 characters (trivial stubs or bulk data)."""
    lo, hi = DATA_SIZE_WINDOW
    if rec.language in ("json", "yaml") and not lo <= len(rec.content) <= hi:
        return "json_yaml_size"
    return None


RuleFilter = Callable[[FileRecord], "str | None"]
# Cheapest and most selective first: the first failing rule names the drop.
RULE_FILTERS: list[RuleFilter] = [
    rule_data_size, rule_xml_header, rule_line_length, rule_alpha_fraction, rule_html_visible_text,
]


def first_failure(rec: FileRecord, rules: list[RuleFilter] = RULE_FILTERS) -> str | None:
    """The reason of the first rule that drops `rec`, or None when all keep it."""
    for rule in rules:
        reason = rule(rec)
        if reason is not None:
            return reason
    return None


def apply_filters(repo: RepoFiles, rules: list[RuleFilter] = RULE_FILTERS) -> tuple[RepoFiles, list[Drop]]:
    """Run the rule filters over one repository: (kept files, a Drop with stage "filter" per dropped file)."""
    kept, drops = [], []
    for rec in repo.files:
        reason = first_failure(rec, rules)
        if reason is None:
            kept.append(rec)
        else:
            drops.append(Drop(repo.repo, rec.path, "filter", reason))
    return RepoFiles(repo.repo, kept), drops


def content_hash(text: str) -> str:
    """Exact-duplicate key of a file: SHA-256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
