#!/usr/bin/env bash
# Make sure a headless-capable Chromium is available for the browser tests (tests/e2e).
#
# Uses Debian's `chromium` package (never `playwright install`, which downloads a browser build).
# Idempotent: returns at once when /usr/bin/chromium is already there. Needs root (or sudo) the
# first time. Also installs an emoji font when missing, so screenshots show the cost footer's
# "💲" instead of an empty box (optional: a failure there is only a warning).
set -euo pipefail

CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "browser.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

updated=0
apt_install() {
    if [ "$updated" -eq 0 ]; then as_root apt-get update -qq; updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if [ ! -x "$CHROMIUM" ]; then
    command -v apt-get >/dev/null || { echo "browser.sh: no $CHROMIUM and no apt-get; install Chromium and set CHROMIUM_PATH" >&2; exit 1; }
    apt_install chromium
fi

if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null | grep -q "ok installed"; then
    apt_install fonts-noto-color-emoji || echo "browser.sh: warning: could not install fonts-noto-color-emoji" >&2
fi

"$CHROMIUM" --version 2>/dev/null | grep -i chromium || { echo "browser.sh: $CHROMIUM does not run" >&2; exit 1; }
