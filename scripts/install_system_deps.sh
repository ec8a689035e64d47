#!/usr/bin/env bash
# System packages: bubblewrap (the eval sandbox), chromium (the playground's browser test, driven by Playwright;
# never `playwright install`, which downloads a browser build of its own) and the cheap MultiPL-E toolchains.
# Best effort and idempotent: needs root and apt (npm for TypeScript); never fails `make setup`.
#   bubblewrap  -> bwrap (sandbox)          php-cli   -> php (PHP)
#   chromium    -> chromium (tests/serve/test_playground_browser.py)
#   mono-mcs    -> mcs + mono (C#)          npm: typescript -> tsc (TypeScript, run by node)
#   golang-go   -> go (~330 MB installed; only with DSCODER_SETUP_GO=1)
# Already expected on the image: g++, default-jdk-headless (javac), nodejs + npm, bash, rustc (rustup).
set -u
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v php >/dev/null || need+=(php-cli)
command -v chromium >/dev/null || need+=(chromium)
command -v mcs >/dev/null || need+=(mono-mcs)
[ "${DSCODER_SETUP_GO:-0}" = 1 ] && ! command -v go >/dev/null && need+=(golang-go)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: not root or no apt-get; skipping ${need[*]} (sandbox falls back to a weaker mode; languages skip;" \
         "the playground browser test fails without chromium)"
  else
    echo "installing ${need[*]} with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
      >/dev/null 2>&1 || echo "note: apt-get install ${need[*]} failed; continuing"
  fi
fi
if ! command -v tsc >/dev/null && command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing typescript with npm"
    npm install -g --no-audit --no-fund typescript >/dev/null 2>&1 || echo "note: npm install typescript failed; continuing"
  else
    echo "note: not root; skipping the global typescript install (TypeScript tasks will be skipped)"
  fi
fi
exit 0
