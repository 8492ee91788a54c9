#!/usr/bin/env bash
# Builds the Debian 12 systemd base image used by Molecule and the lab, without any registry:
# debootstrap a minimal root file system, trim it, and `docker import` it.
# Usage: build.sh IMAGE:TAG
set -euo pipefail

image="${1:?usage: build.sh IMAGE:TAG}"
suite=bookworm
packages=python3,python-is-python3,systemd,systemd-sysv,dbus,iproute2,sudo,ca-certificates,python3-apt

# The mirror is the machine's own (its apt sources), never a host written into this repo.
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
if [ -z "$mirror" ]; then
    mirror="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi

rootfs="$(mktemp -d /var/tmp/inferops-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite into $rootfs (mirror: ${mirror:-debootstrap default})"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" ${mirror:+"$mirror"} >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    exit 1
}
rm -f "$rootfs.log"

# Units that cannot work in a container would leave `systemctl is-system-running` degraded.
for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount systemd-remount-fs.service getty.target console-getty.service \
    systemd-firstboot.service systemd-sysusers.service; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done

# Containers get their hostname and resolv.conf from Docker; a fixed machine-id would be shared by every host.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"

rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
# The package lists are gone: date them in the past, so `apt: cache_valid_time` refreshes them first.
touch -d @0 "$rootfs/var/lib/apt/lists"

tar -C "$rootfs" --numeric-owner -c . |
    docker import \
        --change 'ENV container=docker' \
        --change 'CMD ["/lib/systemd/systemd"]' \
        - "$image" >/dev/null
echo "built $image"
