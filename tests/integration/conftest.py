"""Fixtures for tests against the lab. The `lab` stage of `make test` starts it (`labctl up`); these tests fail,
rather than skip, when it is not there."""

import subprocess

import pytest

from labhost import LabHost


def _lab_hosts():
    result = subprocess.run(["docker", "ps", "--filter", "label=inferops.lab=host", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=False)
    return sorted(result.stdout.split())


def pytest_configure(config):
    config.addinivalue_line("markers", "realvllm: tests on the real vLLM image; `make test` runs them in the realvllm "
                            "stage")
    config.addinivalue_line("markers", "runbooks: runbook tests; `make test` runs them in the Molecule scenario "
                            "`runbooks`, not in the lab stage")
    config.addinivalue_line("markers", "gateway: tests of the deployed gateway; `make test` runs them in the Molecule "
                            "scenario `gateway`, not in the lab stage")


@pytest.fixture(scope="session")
def lab_hosts():
    names = _lab_hosts()
    if not names:
        pytest.fail("no lab host is running: start the lab with `make lab-up`")
    return [LabHost(name) for name in names]


@pytest.fixture(scope="session")
def host(lab_hosts):
    return lab_hosts[0]


@pytest.fixture
def gpu_state(host):
    """Gives the test the lab host and puts its GPU state, faults and foreign workloads back afterwards."""
    saved = host.read("/etc/inferops-lab/gpus.json")
    holders = set(host.run("pgrep", "-f", "inferops-lab hold", check=False).stdout.split())
    yield host
    host.write("/etc/inferops-lab/gpus.json", saved)
    for pid in set(host.run("pgrep", "-f", "inferops-lab hold", check=False).stdout.split()) - holders:
        host.run("kill", pid, check=False)
    for link in ("nvml", "nvidia-smi"):
        host.run("inferops-lab", "unhide", link)


@pytest.fixture
def containers(host):
    """Names appended here are removed after the test, with the faults set on their ports."""
    created = []
    yield created
    host.remove(*created)
    host.run("rm", "-f", "/etc/inferops-lab/vllm-faults.json", check=False)
