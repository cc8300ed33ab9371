#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite, live Slurm clusters included.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# The report test opens the page in a real browser; the Kubernetes stand-in serves cluster DNS with dnsmasq;
# the status test reads `accordion status` from a real 80-column terminal (tmux); a never-kill test holds
# slurmd's listen() with strace's fault injection.
for pkg in chromium dnsmasq-base tmux strace; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    echo "==> installing $pkg (tests only)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  fi
done
# The node image the Kubernetes end-to-end test runs (reused when its inputs have not changed).
bash "$here/scripts/build-images.sh"
venv=${ACCORDION_VENV:-/opt/accordion/venv}
cd "$here"
# Style, types and layers first: a broken contract fails in seconds, not after the live tests.
bash "$here/scripts/lint.sh"
ACCORDION_REQUIRE_LIVE=1 exec "$venv/bin/python" -m pytest -v -p no:cacheprovider "$@" tests
