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
rm -rf build/tools/haproxy
mkdir -p build/tools/haproxy/lib
install -m 0755 "$work/root/usr/sbin/haproxy" build/tools/haproxy/haproxy
cp -a "$work"/root/usr/lib/x86_64-linux-gnu/liblua5.3.so.0* "$work"/root/usr/lib/x86_64-linux-gnu/libopentracing* \
    build/tools/haproxy/lib/
cat >"$dest/haproxy" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")/../haproxy
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/haproxy" "$@"
WRAPPER
chmod 0755 "$dest/haproxy"
# nft, for the vllm role's firewall rules (nft --check asks the kernel, so it checks only where it runs as root).
rm -rf build/tools/nft
mkdir -p build/tools/nft/lib
install -m 0755 "$work/root/usr/sbin/nft" build/tools/nft/nft
cp -a "$work"/root/usr/lib/x86_64-linux-gnu/libnftables.so.1* "$work"/root/usr/lib/x86_64-linux-gnu/libjansson.so.4* \
    build/tools/nft/lib/
cat >"$dest/nft" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")/../nft
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/nft" "$@"
WRAPPER
chmod 0755 "$dest/nft"
# sed reads the whole output: with head, a program still writing after the first line would die of SIGPIPE, and
# pipefail would fail this script at random (it did, in CI).
"$dest/promtool" --version 2>&1 | sed -n 1p
"$dest/haproxy" -v | sed -n 1p
"$dest/nft" --version
