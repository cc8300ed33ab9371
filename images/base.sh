#!/usr/bin/env bash
# Builds the base image localhost/accordion-base:bookworm from Debian packages, without any registry:
# debootstrap --variant=minbase, then `podman import`. Skips the work when the image already exists.
# Usage: images/base.sh [IMAGE]   (root; podman and debootstrap installed: scripts/build-images.sh does both)
set -euo pipefail
image=${1:-localhost/accordion-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if podman image exists "$image"; then
  echo "==> $image exists: skipping debootstrap"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/accordion-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$rootfs"' EXIT
# mktemp makes it 0700, and it becomes the image's /: users other than root (munge, slurm) need to enter it.
chmod 0755 "$rootfs"
echo "==> debootstrap --variant=minbase $suite into $rootfs"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# The same suites as a Debian 12 host: point-release and security updates are where pinned versions live.
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# No documentation or translations in the images (the derived images' apt-get installs honour this).
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/accordion-nodoc" <<'NODOC'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
NODOC
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$rootfs/etc/apt/apt.conf.d/99accordion-norecommends"
# podman provides these at run time.
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

echo "==> podman import -> $image"
tar --numeric-owner -C "$rootfs" -c . \
  | podman import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "==> $image: $(podman image inspect --format '{{.Size}}' "$image") bytes"
