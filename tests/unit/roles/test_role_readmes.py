import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_every_role_readme_matches_its_argument_specs():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "role_readme.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_every_role_has_argument_specs():
    roles = sorted(os.listdir(os.path.join(ROOT, "roles")))
    missing = [r for r in roles if not os.path.exists(os.path.join(ROOT, "roles", r, "meta", "argument_specs.yml"))]
    assert roles and not missing, missing
