#!/usr/bin/env bash
# Puts Debian 12's Prometheus tools (promtool, amtool, prometheus, the node and blackbox exporters) in build/tools/bin,
# unpacked from the distribution's packages without installing them: installing would start their daemons here.
# They are the same releases the monitoring role installs on a Debian 12 monitoring host, so the rules, the
# configuration and the tests are checked by the tools that will run them.
# Idempotent: the packages are fetched again only when a binary is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=build/tools/bin
wanted=(promtool prometheus amtool prometheus-node-exporter prometheus-blackbox-exporter)
missing=0
for tool in "${wanted[@]}"; do
    [ -x "$dest/$tool" ] || missing=1
done
[ "$missing" = 0 ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-prometheus-tools: unpacking Debian's prometheus, alertmanager, node exporter and blackbox exporter"
# Downloaded as root into the private mktemp directory (apt-get would drop to _apt, which cannot write there).
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root prometheus prometheus-alertmanager prometheus-node-exporter \
    prometheus-blackbox-exporter)
mkdir -p "$dest"
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done
for tool in "${wanted[@]}"; do
    install -m 0755 "$work/root/usr/bin/$tool" "$dest/$tool"
done
"$dest/promtool" --version 2>&1 | head -n 1
