#!/usr/bin/env bash
# Puts Debian 12's Prometheus tools (promtool, amtool, prometheus, the node and blackbox exporters), HAProxy and nft in
# build/tools/bin, unpacked from the distribution's packages without installing them: installing would start
# their daemons here. They are the same releases the monitoring and gateway roles install on a Debian 12 host, so
# the rules, the configurations and the tests are checked by the programs that will run them.
# Idempotent: the packages are fetched again only when a program is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=build/tools/bin
wanted=(promtool prometheus amtool prometheus-node-exporter prometheus-blackbox-exporter haproxy nft)
missing=0
for tool in "${wanted[@]}"; do
    [ -x "$dest/$tool" ] || missing=1
done
[ "$missing" = 0 ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-prometheus-tools: unpacking Debian's prometheus, alertmanager, node exporter, blackbox exporter and haproxy"
# Downloaded as root into the private mktemp directory (apt-get would drop to _apt, which cannot write there).
# HAProxy's libraries that a build machine lacks come along; it runs through a wrapper that points at them.
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root prometheus prometheus-alertmanager prometheus-node-exporter \
    prometheus-blackbox-exporter haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1 nftables libnftables1 \
    libjansson4)
mkdir -p "$dest"
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done
for tool in "${wanted[@]}"; do
    [ "$tool" = haproxy ] || [ "$tool" = nft ] && continue
    install -m 0755 "$work/root/usr/bin/$tool" "$dest/$tool"
done
# A program from /usr/sbin with its libraries under build/tools/NAME, run through a wrapper in build/tools/bin that
# points the loader at them. Arguments: NAME, then the library globs (under /usr/lib/x86_64-linux-gnu).
install_with_libraries() {
    local name=$1 glob
    shift
    rm -rf "build/tools/$name"
    mkdir -p "build/tools/$name/lib"
    install -m 0755 "$work/root/usr/sbin/$name" "build/tools/$name/$name"
    for glob in "$@"; do
        # shellcheck disable=SC2086 # the glob is meant to expand
        cp -a "$work"/root/usr/lib/x86_64-linux-gnu/$glob "build/tools/$name/lib/"
    done
    # shellcheck disable=SC2016 # expanded when the wrapper runs
    printf '#!/bin/sh\nhere=$(dirname "$(readlink -f "$0")")/../%s\nLD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/%s" "$@"\n' \
        "$name" "$name" >"$dest/$name"
    chmod 0755 "$dest/$name"
}
install_with_libraries haproxy 'liblua5.3.so.0*' 'libopentracing*'
# nft, for the vllm role's firewall rules (nft --check asks the kernel, so it checks only where it runs as root).
install_with_libraries nft 'libnftables.so.1*' 'libjansson.so.4*'
# sed reads the whole output: with head, a program still writing after the first line would die of SIGPIPE, and
# pipefail would fail this script at random (it did, in CI).
"$dest/promtool" --version 2>&1 | sed -n 1p
"$dest/haproxy" -v | sed -n 1p
"$dest/nft" --version
