#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; `playwright install` cannot
# download browsers here). Idempotent: does nothing when /usr/bin/chromium exists.
# Skips with a note (exit 0) where apt-get is not available or we are not root: the browser
# tests then skip and say why.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "install_browser: no apt-get or not root; browser tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
