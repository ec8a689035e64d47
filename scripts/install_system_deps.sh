#!/usr/bin/env bash
# Optional system packages (sandbox + MultiPL-E toolchains). Best effort: needs root and apt; never fails setup.
set -u
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: not root or no apt-get; skipping ${need[*]} (the sandbox falls back to a weaker mode)"; exit 0
fi
echo "installing ${need[*]} with apt-get"
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
  || echo "note: apt-get install ${need[*]} failed; continuing"
exit 0
