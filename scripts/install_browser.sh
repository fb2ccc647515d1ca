#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium).
# Idempotent; does nothing when chromium is already there. Without root/apt the browser
# tests skip themselves with a message instead of failing.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt) for the browser tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
    || echo "warning: could not install chromium; browser tests will be skipped"
else
  echo "note: chromium not installed and no root apt; browser tests will be skipped"
fi
exit 0
