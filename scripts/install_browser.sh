#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium headless;
# no browser download from the internet is needed). Idempotent: does nothing when chromium is
# already there. Uses apt as root, or passwordless sudo. Never fails the build: without it the
# browser tests skip themselves with a message saying how to install it.
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "note: chromium is not installed and there is no root/sudo for apt; the browser tests will be" \
       "skipped (install it with: sudo apt-get install chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get on this system; install chromium at /usr/bin/chromium for the browser tests"
  exit 0
fi
echo "installing chromium (apt) for the browser tests..."
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
ok=1
for attempt in 1 2; do
  $SUDO apt-get update -qq >"$log" 2>&1 || true
  if $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >>"$log" 2>&1; then
    ok=0
    break
  fi
  sleep 3
done
if [ "$ok" != "0" ] || [ ! -x /usr/bin/chromium ]; then
  echo "warning: could not install chromium; the browser tests will be skipped. apt said:"
  tail -n 5 "$log" | sed 's/^/  /'
else
  echo "chromium installed at /usr/bin/chromium"
fi
rm -f "$log"
exit 0
