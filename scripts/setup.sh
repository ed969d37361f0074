#!/usr/bin/env bash
# Set up this checkout on a fresh machine:
#   1. system browsers (Debian's chromium and firefox-esr) when apt-get is usable,
#   2. a virtual environment in .venv with the project and its dev extras.
# Playwright's own browser downloads are not needed (nor reachable on closed networks):
# the library finds system browsers by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need_browsers() {
  ! command -v chromium >/dev/null 2>&1 || ! command -v firefox-esr >/dev/null 2>&1
}

if need_browsers && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing chromium and firefox-esr with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium firefox-esr >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: done ($(.venv/bin/python -c 'import playwright, sys; print("python", sys.version.split()[0], "playwright", playwright.__version__)'))"
