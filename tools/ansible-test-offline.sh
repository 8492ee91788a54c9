#!/usr/bin/env bash
# ansible-test bootstraps pip in its virtualenvs from a script it downloads from a host this machine cannot
# reach. It uses a cached copy when one exists, so we put our own stand-in at that path: it bootstraps pip
# with ensurepip and installs the requested pip version (and anything else asked for) from PyPI.
set -euo pipefail

pip_version=$(python -c '
import sys, types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="%d.%d" % sys.version_info[:2]))["pip"])')
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cat >"$cache" <<'EOF'
"""Offline stand-in for ansible-test's get-pip bootstrap (written by tools/ansible-test-offline.sh)."""
import runpy
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.argv = ["pip", "install", "--upgrade"] + args
runpy.run_module("pip", run_name="__main__", alter_sys=True)
EOF
