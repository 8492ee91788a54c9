"""nvidia_driver: what it plans on the platforms this machine cannot install (Ubuntu, RHEL), checked by variable
resolution, and the refusals that must come before anything is installed."""

import json
import os
import subprocess

import pytest

from ansible_run import INVENTORY, ROOT, ansible_env

PLAYBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks")


def playbook(name, extra_vars, inventory=None, local=False):
    cmd = ["ansible-playbook", os.path.join(PLAYBOOKS, name), "-e", json.dumps(extra_vars)]
    cmd += ["-i", "localhost,", "-c", "local"] if local else ["-i", inventory or INVENTORY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), timeout=600, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        details = (name, proc.returncode, proc.stdout, proc.stderr)
        raise AssertionError("%s did not print JSON (rc %d):\n%s\n%s" % details)


def plan(platform, **role_vars):
    extra = dict(role_vars, nvidia_driver_platform=platform)
    extra.setdefault("ansible_python_interpreter", os.path.join(ROOT, ".venv", "bin", "python"))
    rc, report = playbook("driver_plan.yml", extra, local=True)
    assert rc == 0, json.dumps(report)[-2000:]
    tasks = report["plays"][0]["tasks"]
    return [t for t in tasks if t["task"]["name"] == "Show the plan"][0]["hosts"]["localhost"]["nvidia_driver_plan"]


UBUNTU_2404 = {"distribution": "Ubuntu", "version": "24.04", "major": "24", "family": "Debian", "arch": "x86_64",
               "container": False}
UBUNTU_2204 = dict(UBUNTU_2404, version="22.04", major="22")
RHEL9 = {"distribution": "RedHat", "version": "9.5", "major": "9", "family": "RedHat", "arch": "x86_64",
         "container": False}
ROCKY9 = dict(RHEL9, distribution="Rocky")
RHEL10 = dict(RHEL9, version="10.0", major="10")


@pytest.mark.parametrize("platform, repo", [(UBUNTU_2404, "ubuntu2404"), (UBUNTU_2204, "ubuntu2204")])
@pytest.mark.parametrize("branch", ["550", "570", "580"])
def test_ubuntu_uses_nvidias_repo_with_cuda_keyring_and_branch_packages(platform, repo, branch):
    result = plan(platform, nvidia_driver_branch=branch)
    assert result["source"] == "nvidia-apt"
    assert result["repo_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/%s/x86_64/" % repo
    assert result["keyring_package"] == "cuda-keyring_1.1-1_all.deb"
    assert result["keyring"] == "/usr/share/keyrings/cuda-archive-keyring.gpg"
    assert result["userspace_packages"] == ["nvidia-utils-%s" % branch, "libnvidia-compute-%s" % branch]
    assert result["kernel_packages"] == ["nvidia-driver-%s" % branch, "nvidia-dkms-%s" % branch]


def test_ubuntu_open_modules_and_fabric_manager():
    result = plan(UBUNTU_2404, nvidia_driver_branch="570", nvidia_driver_open_modules=True,
                  nvidia_driver_fabric_manager=True)
    assert result["kernel_packages"] == ["nvidia-driver-570-open", "nvidia-dkms-570-open"]
    assert result["fabric_manager_package"] == "nvidia-fabricmanager-570"


def test_ubuntu_on_arm_uses_the_sbsa_repo():
    assert plan(dict(UBUNTU_2404, arch="aarch64"), nvidia_driver_branch="570")["repo_url"].endswith(
        "/ubuntu2404/sbsa/")


STREAMS = [("550", False, "nvidia-driver:550-dkms"), ("570", True, "nvidia-driver:570-open")]


@pytest.mark.parametrize("platform", [RHEL9, ROCKY9])
@pytest.mark.parametrize("branch, open_modules, stream", STREAMS)
def test_rhel9_uses_module_streams_named_for_the_branch(platform, branch, open_modules, stream):
    result = plan(platform, nvidia_driver_branch=branch, nvidia_driver_open_modules=open_modules)
    assert result["source"] == "nvidia-dnf"
    assert result["module_stream"] == stream
    assert result["kernel_packages"] == ["@" + stream]
    assert result["repo_url"] == ("https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/"
                                  "cuda-rhel9.repo")
    assert result["gpg_key_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub"


def test_rhel10_has_no_module_streams():
    result = plan(RHEL10, nvidia_driver_branch="580", nvidia_driver_open_modules=True)
    assert result["module_stream"] == ""
    assert result["kernel_packages"] == ["nvidia-open-580*"]
    assert result["repo_url"].endswith("/rhel10/x86_64/cuda-rhel10.repo")


def test_debian_12_uses_non_free_and_skips_kernel_modules_in_containers():
    debian = {"distribution": "Debian", "version": "12.8", "major": "12", "family": "Debian", "arch": "x86_64"}
    host = plan(dict(debian, container=False))
    assert host["source"] == "debian" and host["components"] == ["main", "contrib", "non-free", "non-free-firmware"]
    assert host["userspace_packages"] == ["nvidia-smi", "libnvidia-ml1"]
    assert host["kernel_modules"] is True
    assert plan(dict(debian, container=True))["kernel_modules"] is False
    assert plan(dict(debian, container=True), nvidia_driver_kernel_modules=True)["kernel_modules"] is True


def role_on(host, **role_vars):
    extra = dict(role_vars, target=host.name)
    return playbook("nvidia_driver.yml", extra)


def failure(report):
    for task in report["plays"][0]["tasks"]:
        for result in task["hosts"].values():
            if result.get("failed"):
                return task["task"]["name"].split(" : ", 1)[-1], result.get("msg", "")
    return None, None


def installed(host, package):
    return host.run("dpkg-query", "-W", "-f=${Status}", package, check=False).stdout == "install ok installed"


def test_reboot_on_a_local_connection_is_refused_before_anything_else():
    extra = {"target": "localhost", "nvidia_driver_reboot": "always", "nvidia_driver_kernel_modules": True,
             "ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python")}
    rc, report = playbook("nvidia_driver.yml", extra, local=True)
    name, message = failure(report)
    assert rc != 0 and name == "Never reboot the control node or a local connection"
    assert "rebooting it would reboot the control node" in message


def test_secure_boot_without_signing_stops_before_install(gpu_state):
    host = gpu_state
    host.write("/usr/local/bin/mokutil", "#!/bin/sh\necho 'SecureBoot enabled'\n")
    host.run("chmod", "+x", "/usr/local/bin/mokutil")
    try:
        rc, report = role_on(host, nvidia_driver_kernel_modules=True, nvidia_driver_reboot="never")
    finally:
        host.run("rm", "-f", "/usr/local/bin/mokutil")
    name, message = failure(report)
    assert rc != 0 and "Secure Boot" in name
    assert "Secure Boot is enabled" in message and "nvidia_driver_secure_boot to sign" in message
    assert not installed(host, "nvidia-smi") and not installed(host, "nvidia-kernel-dkms")


def test_cuda_newer_than_the_driver_is_refused(gpu_state):
    rc, report = role_on(gpu_state, nvidia_driver_cuda_toolkit=True, nvidia_driver_cuda_version="12.4")
    name, message = failure(report)
    assert rc != 0 and name == "The CUDA toolkit asked for is one the driver supports"
    assert "needs a newer driver than branch 535, which supports CUDA up to 12.2" in message
    assert not installed(gpu_state, "nvidia-smi")


def test_secure_boot_signing_makes_a_der_certificate_mokutil_takes_and_keeps_it(host):
    """mokutil --import wants the certificate in DER; the key stays root's alone; a second run changes nothing."""
    host.write("/usr/local/bin/mokutil", "#!/bin/sh\necho \"$@\" >> /tmp/mokutil.calls\n")
    host.run("chmod", "+x", "/usr/local/bin/mokutil")
    host.sh("rm -rf /var/lib/dkms/mok /tmp/mokutil.calls && mkdir -p /etc/dkms/framework.conf.d")
    try:
        rc, report = playbook("secure_boot.yml", {"target": host.name})
        assert rc == 0, failure(report)
        certificate = host.run("openssl", "x509", "-inform", "DER", "-in", "/var/lib/dkms/mok/mok.der", "-noout",
                               "-subject", "-ext", "extendedKeyUsage").stdout
        assert "CN = DKMS module signing key for %s" % host.name in certificate and "Code Signing" in certificate
        modes = host.sh("stat -c '%a %U' /var/lib/dkms/mok /var/lib/dkms/mok/mok.key").stdout.split("\n")
        assert modes[:2] == ["700 root", "600 root"]
        assert host.run("cat", "/tmp/mokutil.calls").stdout == "--import /var/lib/dkms/mok/mok.der --root-pw\n"
        conf = host.run("cat", "/etc/dkms/framework.conf.d/inferops-mok.conf").stdout
        assert "mok_signing_key=/var/lib/dkms/mok/mok.key\nmok_certificate=/var/lib/dkms/mok/mok.der\n" in conf
        der = host.run("sha256sum", "/var/lib/dkms/mok/mok.der").stdout

        rc, report = playbook("secure_boot.yml", {"target": host.name})
        assert rc == 0 and report["stats"][host.name]["changed"] == 0, report["stats"]
        assert host.run("sha256sum", "/var/lib/dkms/mok/mok.der").stdout == der
        assert host.run("cat", "/tmp/mokutil.calls").stdout.count("--import") == 1
    finally:
        host.sh("rm -rf /usr/local/bin/mokutil /tmp/mokutil.calls /var/lib/dkms/mok "
                "/etc/dkms/framework.conf.d/inferops-mok.conf")
