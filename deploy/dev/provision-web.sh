#!/usr/bin/env bash
# Installs the dashboard's npm dependencies (uPlot, from the lockfile) and, with the argument
# `chromium`, Debian's Chromium for the browser tests (Playwright drives it through
# executable_path; no browser download). Later runs find both and return at once.
set -euo pipefail
say() { printf '[provision] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "${1:-}" = chromium ] && ! command -v chromium >/dev/null 2>&1; then
    say "apt-get install chromium (browser tests)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# The dashboard's severity and status icons are emoji; without a colour emoji font the
# screenshots show empty boxes where users' browsers show icons.
if [ "${1:-}" = chromium ] && [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then
    say "apt-get install fonts-noto-color-emoji (browser tests)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji >/dev/null
fi

web="services/gateway/src/signalfire/gateway/web"
if [ ! -f "$web/node_modules/uplot/dist/uPlot.esm.js" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    command -v npm >/dev/null 2>&1 || { say "npm is needed for the dashboard's packages: apt-get install npm"; exit 1; }
    say "npm ci (dashboard packages)"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
