#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (run as root) for the test suite and the lab:
# the apt packages the tooling needs, and a running Docker engine.
# Idempotent: it installs only what is missing and starts dockerd only when it does not answer.
set -euo pipefail

packages=(docker.io debootstrap gcc libc6-dev make git iptables ca-certificates openssl shellcheck)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

# No systemd runs as PID 1 on these machines, so dockerd is started directly and left running.
log=/var/log/inferops-dockerd.log
echo "setup-host: starting dockerd (log: $log)"
setsid nohup dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "setup-host: dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
