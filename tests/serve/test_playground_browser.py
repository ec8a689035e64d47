"""The playground page (GET /) driven in headless Chromium by Playwright against a real `dscoder serve` on loopback:
both tabs show text arriving in several pieces that add up to the server's own greedy answer, and a bad request
(a wrong API key, an out-of-range temperature) shows the server's error message on the page.

Chromium comes from the OS packages (scripts/install_system_deps.sh installs `chromium` with apt), never from
`playwright install`, so the test names the binary itself and fails when it is missing."""
from __future__ import annotations

import json
import os
import shutil

import pytest

# Pieces of text the page showed, one entry per change to the watched element (a MutationObserver's callbacks).
WATCH = """(sel) => {
  window.seen = [];
  const el = document.querySelector(sel);
  new MutationObserver(() => {
    const node = document.querySelector(sel + " .reply:last-of-type, " + sel + " .mid") || el;
    const text = node.textContent;
    if (text && text !== window.seen[window.seen.length - 1]) window.seen.push(text);
  }).observe(el, {childList: true, subtree: true, characterData: true});
}"""


def chromium() -> str:
    exe = shutil.which("chromium")
    if not exe:
        raise AssertionError("Chromium is not installed: the playground test drives the OS package `chromium`; "
                             "install it with `bash scripts/install_system_deps.sh` as root (apt-get install "
                             "chromium)")
    return exe


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []   # Chromium refuses to start as root with its sandbox
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=args, headless=True)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        # On a fast machine a whole reply can reach the page in one network read and show as one update; a
        # throttled link (Chrome DevTools' network emulation, 16 KB/s down) delivers the stream in pieces, as a
        # remote server would, so "more than one update" tests the page and not the machine's speed.
        page.context.new_cdp_session(page).send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": 16_000, "uploadThroughput": -1})
        page.goto(server.url + "/")
        yield page
        browser.close()


def use_key(page, key: str) -> None:
    page.fill("#key", key)
    page.press("#key", "Tab")   # `change` fires when the field loses focus, as when a person tabs away


def send(page, button: str) -> None:
    page.click(button)          # the click handler disables the button before its first await
    page.wait_for_function(f"!document.querySelector({button!r}).disabled")


def answer(server, path: str, body: dict) -> dict:
    status, _, raw = server.request("POST", path, body)
    assert status == 200, raw
    return json.loads(raw)["choices"][0]


def test_chat_tab_streams_the_greedy_reply(page, server):
    use_key(page, server.key)
    page.wait_for_function("document.getElementById('model').value === 'tiny-coder'")  # /v1/models asked again
    page.fill("#max", "48")
    page.fill("#temp", "0")
    page.evaluate(WATCH, "#chat-log")
    page.fill("#system", "You write Python.")   # the template's default system prompt alone overflows context 256
    page.fill("#chat-in", "Write a function that adds two numbers.")
    send(page, "#chat-send")
    assert page.inner_text("#error") == ""
    want = answer(server, "/v1/chat/completions", {
        "model": "tiny-coder", "max_tokens": 48, "temperature": 0,
        "messages": [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write a function that adds two numbers."}]})["message"]["content"]
    seen = page.evaluate("window.seen")
    assert want and page.text_content("#chat-log .reply") == want
    assert len(seen) > 1 and seen[-1] == want, seen   # more than one update: the text arrived as a stream
    assert all(want.startswith(s) for s in seen)


def test_fim_tab_streams_the_middle(page, server):
    page.click("#tab-fim")
    assert page.is_visible("#fim-prefix") and not page.is_visible("#chat-in")
    prefix, suffix = "def total_count(items):\n    ", "\n    return total\n"
    page.fill("#fim-prefix", prefix)
    page.fill("#fim-suffix", suffix)
    page.evaluate(WATCH, "#fim-out")
    send(page, "#fim-send")
    assert page.inner_text("#error") == ""
    want = answer(server, "/v1/completions", {"model": "tiny-coder", "prompt": prefix, "suffix": suffix,
                                              "max_tokens": 48, "temperature": 0})["text"]
    seen = page.evaluate("window.seen")
    assert want and page.text_content("#fim-out .mid") == want
    assert page.text_content("#fim-out") == prefix + want + suffix
    assert len(seen) > 1 and seen[-1] == want, seen


def test_bad_requests_show_the_servers_error(page, server):
    page.click("#tab-chat")
    turns = page.locator("#chat-log pre").count()
    use_key(page, "sk-wrong")
    page.fill("#chat-in", "hello")
    send(page, "#chat-send")
    assert page.inner_text("#error").startswith("401: missing or wrong API key")
    # the failed turn leaves the log as it was and gives the text back
    assert page.locator("#chat-log pre").count() == turns and page.input_value("#chat-in") == "hello"

    use_key(page, server.key)
    page.fill("#temp", "5")
    send(page, "#chat-send")
    error = page.inner_text("#error")
    assert error.startswith("400: ") and "temperature" in error, error

    page.fill("#temp", "0")
    page.fill("#max", "4")
    send(page, "#chat-send")   # a good request clears the error
    assert page.inner_text("#error") == "" and page.locator("#chat-log pre").count() == turns + 2
