#!/usr/bin/env bash
# Set up this checkout on a fresh machine:
#   1. system browsers (Debian's chromium and firefox-esr) when apt-get is usable,
#   2. a virtual environment in .venv with the project and its dev extras.
# Playwright's own browser downloads are not needed (nor reachable on closed networks):
# the library finds system browsers by itself.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
usage: scripts/setup.sh [-h | --help]

Set up this checkout on a fresh machine:
  1. Debian's chromium, firefox-esr, postgresql (the tests start a private PostgreSQL
     server of their own) and xvfb (for the tests of headed browsers), with apt-get (as
     root, or with sudo), when one is missing and apt-get is there;
  2. a virtual environment in .venv (made with $PYTHON, default python3) holding the
     project and its dev extras (pip install -e '.[dev]').
Then it prints the Python and Playwright versions it set up. Run it again at any time:
what is there already is kept. Playwright's own browser downloads are not needed.
EOF_USAGE
}

case "${1-}" in
  "") ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    echo "setup.sh: unknown argument: $1" >&2
    usage >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/.."

missing_packages() {
  command -v chromium >/dev/null 2>&1 || echo chromium
  command -v firefox-esr >/dev/null 2>&1 || echo firefox-esr
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql
  command -v Xvfb >/dev/null 2>&1 || echo xvfb
}

packages=$(missing_packages | tr '\n' ' ')
if [ -n "${packages// /}" ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${packages}with apt-get"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $packages >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
versions=$(.venv/bin/python -c 'import sys
from importlib.metadata import version
python, playwright = sys.version.split()[0], version("playwright")
print(f"python {python}, playwright {playwright}")')
echo "setup: done ($versions)"
