"""StarCoder rule filters of v1 §2.1: each rule keeps a normal file and drops the case it targets."""
import time

import pytest

from dscoder.data.document import FileRecord, RepoFiles
from dscoder.data.filters import (
    RULE_FILTERS, alpha_fraction, apply_filters, content_hash, rule_alpha_fraction,
    rule_data_size, rule_html_visible_text, rule_line_length, rule_xml_header, visible_text,
)

CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


def rec(content, lang="python", path="f"):
    return FileRecord("r", path, content, lang)


def test_line_length_rules():
    assert rule_line_length(rec(CODE)) is None
    assert rule_line_length(rec("x = '" + "a" * 1001 + "'\n" + "y = 1\n" * 20)) == "max_line_length>1000"
    assert rule_line_length(rec(("v = '" + "b" * 150 + "'\n") * 10)) == "avg_line_length>100"
    assert rule_line_length(rec(("v = '" + "b" * 90 + "'\n") * 10)) is None     # 96 chars a line: kept


def test_alpha_fraction_rule():
    assert rule_alpha_fraction(rec(CODE)) is None
    table = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,\n" * 40
    assert rule_alpha_fraction(rec(table)) == "alpha_fraction<0.25"
    assert alpha_fraction("ab12") == 0.5 and alpha_fraction("") == 0.0
    assert alpha_fraction("Ωλ12") == 0.5          # non-ASCII letters count as letters
    assert rule_alpha_fraction(rec("переменная = 1  # комментарий\n")) is None
    assert alpha_fraction("aé1中-２ǅ") == 4 / 7      # letters of any script, ASCII counted apart; digits are not


def test_xml_header_rule():
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n<project><name>x</name></project>\n'
    assert rule_xml_header(rec(xml, "html")) == "xml_header"
    assert rule_xml_header(rec(xml, "xslt")) is None
    assert rule_xml_header(rec(" " * 120 + xml, "html")) is None           # header past the first 100 chars
    assert rule_xml_header(rec(CODE)) is None


def test_html_visible_text_rule():
    prose = "<p>" + "This page explains how the parser handles nested blocks of code in detail. " * 4 + "</p>"
    page = f"<html><head><title>Docs</title></head><body>{prose}</body></html>\n"
    assert rule_html_visible_text(rec(page, "html")) is None
    scripted = "<html><script>" + "var x = 1;\n" * 200 + "</script><p>Hi</p></html>"
    assert rule_html_visible_text(rec(scripted, "html")) == "html_visible_text"
    short = "<html><body><p>Hello world</p></body></html>"
    assert rule_html_visible_text(rec(short, "html")) == "html_visible_text"
    assert rule_html_visible_text(rec(scripted, "javascript")) is None      # the rule is for HTML only
    assert visible_text("<!-- c --><STYLE>p{}</STYLE><b>a</b> &lt; 1 < 2") == "a &lt; 1 < 2"


def test_html_visible_text_is_linear_on_unclosed_brackets():
    nasty = "<p>" + "a < b " * 100_000 + "<script>" * 10_000
    t0 = time.perf_counter()
    rule_html_visible_text(rec(nasty, "html"))
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("lang", ["json", "yaml"])
def test_json_yaml_size_window(lang):
    assert rule_data_size(rec('{"a": 1}', lang)) == "json_yaml_size"
    assert rule_data_size(rec('{"key": "' + "v" * 60 + '"}', lang)) is None
    assert rule_data_size(rec('{"k": "' + "v" * 5000 + '"}', lang)) == "json_yaml_size"
    assert rule_data_size(rec('{"a": 1}', "python")) is None


def test_apply_filters_reports_first_reason():
    repo = RepoFiles("r", [rec(CODE, path="a.py"), rec("0," * 600, path="b.py"),
                           rec("{}", "json", path="c.json")])
    kept, drops = apply_filters(repo)
    assert [f.path for f in kept.files] == ["a.py"]
    assert [(d.path, d.stage, d.reason) for d in drops] == [
        ("b.py", "filter", "max_line_length>1000"), ("c.json", "filter", "json_yaml_size")]
    assert len(RULE_FILTERS) == 5


def test_content_hash_is_sha256_of_the_exact_utf8_bytes():
    """The exact-dedup key: SHA-256 of the UTF-8 bytes (FIPS 180-2 test vector for "abc"), with no
    normalisation: composed and decomposed "é" differ, one trailing space differs, lone surrogates hash."""
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash("\u00e9") == "4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c"
    assert content_hash("e\u0301") == "bf12767b0f2a56b2190075bae8169f656e3ce8d6357d4aff184bc6c7ea48f9f6"
    assert content_hash("\ud800") == "91a681b998555fb475479817b126c94e57e52011fa1842c5d188795a4a05226b"
    assert content_hash(CODE) != content_hash(CODE + " ")
