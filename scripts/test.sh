#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite, live Slurm clusters included.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# The report test opens the page in a real browser.
if ! command -v chromium >/dev/null; then
  echo "==> installing chromium (for the report rendering test)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
venv=${ACCORDION_VENV:-/opt/accordion/venv}
cd "$here"
ACCORDION_REQUIRE_LIVE=1 exec "$venv/bin/python" -m pytest -v -p no:cacheprovider "$@" tests
