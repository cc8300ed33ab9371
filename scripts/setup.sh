#!/usr/bin/env bash
# Installs everything Accordion needs on Debian 12 (run as root) and puts `accordion` on the PATH.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "scripts/setup.sh: run as root" >&2; exit 1; }

packages=(slurmctld slurmd slurm-client slurmdbd mariadb-server munge openmpi-bin libopenmpi-dev gcc catatonit runc
          iproute2 util-linux procps python3-venv
          oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql postgresql openssh-server openssh-client
          gridengine-master gridengine-exec gridengine-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  # Accordion starts munged and slurmctld per cluster itself: keep the packages from starting theirs.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  # Grid Engine's packages would ask for a master host and cell and build one system-wide cell under
  # /var/lib/gridengine; Accordion makes a cell per cluster itself, so answer "do not configure".
  printf '%s\n' 'gridengine-common shared/gridengineconfig boolean false' \
    'gridengine-master shared/gridengineconfig boolean false' | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# OAR refuses jobs from root: the demo and tests submit OAR jobs as this ordinary user.
id hpcuser >/dev/null 2>&1 || useradd --create-home --shell /bin/bash hpcuser

venv=${ACCORDION_VENV:-/opt/accordion/venv}
# Debian's own Python, whatever python3 is first on root's PATH (a pyenv one lives under /root, where
# ordinary users cannot run it: their login shells and workflow tools use this venv too).
if [ -f "$venv/pyvenv.cfg" ] && ! grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg"; then
  echo "==> $venv was made from another Python; making it again from /usr/bin/python3"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  /usr/bin/python3 -m venv "$venv"
fi
echo "==> installing accordion into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
ln -sf "$venv/bin/accordion" /usr/local/bin/accordion
echo "==> ready: $(command -v accordion)"
