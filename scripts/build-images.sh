#!/usr/bin/env bash
# Builds Accordion's container images here, from Debian packages, with no registry:
#   localhost/accordion-base:bookworm      debootstrap --variant=minbase + podman import (skipped if present)
#   localhost/accordion-node:VERSION       slurmd, munge, Open MPI runtime          (images/node)
#   localhost/accordion-controller:VERSION slurmctld, munge, Accordion in a venv    (images/controller)
# VERSION is the project version from pyproject.toml; package versions are pinned in images/versions.env.
# Idempotent: installs podman & co. if missing, reuses the base image, skips an image whose inputs (build
# context and pinned versions, recorded in its label org.accordion.inputs) have not changed, and otherwise
# uses podman's layer cache. ACCORDION_REBUILD=1 runs podman build even for unchanged inputs.
#
# podman is configured through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF pointing at images/podman/ (unless
# they are already set), so the host's /etc/containers is not touched. Use the same two variables for any
# podman command that should see these images:  eval "$(scripts/build-images.sh --print-env)"
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/images/podman/containers.conf}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$here/images/podman/storage.conf}
if [ "${1:-}" = "--print-env" ]; then
  printf 'export CONTAINERS_CONF=%q\nexport CONTAINERS_STORAGE_CONF=%q\n' "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "scripts/build-images.sh: run as root" >&2; exit 1; }

t0=$SECONDS
step() { echo "==> [$((SECONDS - t0))s] $*"; }

# ----- host tools -----
packages=(podman runc conmon netavark catatonit debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The containers.conf limits must not exceed the host's hard limits (raising them needs CAP_SYS_RESOURCE;
# podman itself runs with nproc capped at 32768 here, whatever `ulimit -Hu` says: see containers.conf).
# `podman build` ignores default_ulimits (its RUN steps then fail to set nproc/nofile): pass them explicitly.
ulimits=()
for u in $(sed -n 's/^default_ulimits *= *\[\(.*\)\]/\1/p' "$CONTAINERS_CONF" | tr -d '"' | tr ',' ' '); do
  ulimits+=(--ulimit "$u")
done
for pair in "nofile:$(ulimit -Hn)" "nproc:$(ulimit -Hu)"; do
  name=${pair%%:*} hard=${pair#*:}
  want=$(sed -n "s/.*\"$name=\([0-9]*\):\([0-9]*\)\".*/\2/p" "$CONTAINERS_CONF")
  if [ -n "$want" ] && [ "$hard" != unlimited ] && [ "$want" -gt "$hard" ]; then
    echo "scripts/build-images.sh: $CONTAINERS_CONF sets $name=$want, above this host's hard limit $hard" >&2
    exit 1
  fi
done

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$here/pyproject.toml" | head -n 1)
[ -n "$version" ] || { echo "scripts/build-images.sh: no version in pyproject.toml" >&2; exit 1; }
base=localhost/accordion-base:bookworm
node=localhost/accordion-node:$version
controller=localhost/accordion-controller:$version

build_args=()
while IFS='=' read -r k v; do
  case $k in ''|'#'*) continue ;; esac
  build_args+=(--build-arg "$k=$v")
done < "$here/images/versions.env"

# ----- base -----
step "base image $base"
"$here/images/base.sh" "$base"

tree_hash() {  # hash of the files below DIR (names and contents) and of the build arguments
  { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); printf '%s\n' "${build_args[@]}"; } \
    | sha256sum | cut -c1-16
}

build() {  # build TAG CONTEXT_DIR [extra podman build args]
  local tag=$1 ctx=$2; shift 2
  local log old new inputs
  inputs=$(tree_hash "$ctx")
  old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  # Same inputs as the image already tagged: nothing to do (podman's own cache check costs ~10 s on vfs).
  if [ -n "$old" ] && [ "${ACCORDION_REBUILD:-0}" != 1 ] \
     && [ "$(podman image inspect --format '{{index .Labels "org.accordion.inputs"}}' "$tag")" = "$inputs" ]; then
    echo "    up to date (inputs $inputs)"
    return
  fi
  log=$(mktemp /var/tmp/accordion-build.XXXXXX.log)
  # --network host: RUN steps reach the Debian mirror and PyPI without podman creating a bridge (netavark
  # would add iptables rules and turn on ip_forward). --pull=never: the base image is local.
  if ! podman build --pull=never --network host --layers "${ulimits[@]}" -f "$ctx/Containerfile" -t "$tag" \
        --label "org.accordion.inputs=$inputs" --build-arg "ACCORDION_CONTEXT_HASH=$inputs" \
        "${build_args[@]}" "$@" "$ctx" > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "scripts/build-images.sh: building $tag failed; full log: $log" >&2
    exit 1
  fi
  rm -f "$log"
  # A rebuild leaves the previous image untagged: with vfs that is a full copy of the tree, so drop it.
  new=$(podman image inspect --format '{{.Id}}' "$tag")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
}

# ----- node -----
step "node image $node"
build "$node" "$here/images/node"

# ----- controller -----
step "controller image $controller"
ctx=$(mktemp -d /var/tmp/accordion-controller-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$here/images/controller/Containerfile" "$here/images/controller/entrypoint.sh" "$ctx/"
mkdir "$ctx/accordion"
cp "$here/pyproject.toml" "$ctx/accordion/"
# pip in the image trusts what the host trusts (some hosts reach PyPI through a TLS-intercepting proxy).
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && cp "$ca" "$ctx/ca-bundle.crt"
tar -C "$here" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' -c src | tar -C "$ctx/accordion" -x
build "$controller" "$ctx"

# ----- report -----
step "done"
podman image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "^localhost/accordion-(base|node|controller):" || true
echo "storage: $(du -sh "$(podman info --format '{{.Store.GraphRoot}}')" 2>/dev/null | cut -f1) in $(podman info --format '{{.Store.GraphRoot}} ({{.Store.GraphDriverName}})')"
