#!/usr/bin/env bash
# Turns the base image into a lab host: Debian's docker.io, and the stand-ins for what a GPU host has
# (NVIDIA's driver user-space, container toolkit hook) and for vLLM. Runs inside the build container.
# Usage: provision.sh STAGE_DIR
set -euo pipefail
stage="$1"
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    docker.io python3-docker python3-requests python3-prometheus-client procps curl openssl iptables less >/dev/null
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
touch -d @0 /var/lib/apt/lists

# The driver's user-space lives in the driver directory; the usual links point at it, as Debian's packages do.
install -D -m 0755 "$stage/libnvidia-ml.so.1" /usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1
ln -sf nvidia/current/libnvidia-ml.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
install -D -m 0755 "$stage/nvidia-smi" /usr/lib/nvidia/current/nvidia-smi
ln -sf /usr/lib/nvidia/current/nvidia-smi /usr/bin/nvidia-smi
install -D -m 0644 "$stage/labgpu.py" /usr/lib/inferops-lab/labgpu.py
install -D -m 0755 "$stage/inferops-lab" /usr/local/bin/inferops-lab
install -D -m 0755 "$stage/nvidia-container-runtime-hook" /usr/bin/nvidia-container-runtime-hook
ldconfig

# The real nvidia-ml-py bindings, as `pip install nvidia-ml-py` would place them for the system Python.
install -D -m 0644 "$stage/pynvml.py" /usr/local/lib/python3.11/dist-packages/pynvml.py

# The vLLM emulator, installed like a virtualenv's `vllm` entry point (the seeds' venv style).
mkdir -p /usr/lib/vllm-emulator /opt/vllm/bin
cp -r "$stage/emulator/." /usr/lib/vllm-emulator/
ln -sf /usr/lib/vllm-emulator/vllm /opt/vllm/bin/vllm
ln -sf /usr/bin/python3 /opt/vllm/bin/python3

install -D -m 0644 "$stage/inferops-lab-init.service" /etc/systemd/system/inferops-lab-init.service
systemctl enable inferops-lab-init.service docker.service >/dev/null 2>&1
# Like /dev/nvidia*, usable by every user: services running as their own user claim GPU memory too.
mkdir -p /var/lib/inferops-lab/claims
chmod 1777 /var/lib/inferops-lab/claims
rm -rf "$stage"
