"""inferops.vllm.gpu_select on a lab host, through each backend, with the fallbacks and failure modes."""

import pytest

from ansible_run import run_module

CUDA_IMAGE = "inferops/cuda-base:12.2-lab"
WANT = {"count": 2, "min_free_memory": "64GiB"}


@pytest.fixture
def busy_host(gpu_state):
    """GPU 0 and 3 busy (another job each), GPU 5 with ECC errors, GPU 6 in MIG mode."""
    gpu_state.run("inferops-lab", "occupy", "3", "--memory", "60GiB", "--utilization", "80", "--name", "train-b")
    gpu_state.run("inferops-lab", "ecc", "5", "2")
    gpu_state.run("inferops-lab", "mig", "6", "on", "--profiles", "3g.40gb,3g.40gb")
    return gpu_state


def reasons(result):
    return dict((d["index"], d["reasons"]) for d in result["devices"])


def check_busy_host_selection(result, backend):
    assert not result.failed, result.get("msg")
    assert result["backend"] == backend
    assert result["changed"] is False
    assert result["gpus"] == [7, 4]
    assert result["cuda_visible_devices"] == "7,4"
    assert result["docker_gpus_argv"] == '"device=7,4"'
    assert result["docker_device_requests"] == [{"driver": "nvidia", "device_ids": ["7", "4"],
                                                 "capabilities": [["gpu"]]}]
    why = reasons(result)
    assert why[0] == ["61079 MiB free < min_free_memory 65536 MiB"]
    assert why[3] == ["20119 MiB free < min_free_memory 65536 MiB"]
    assert why[5] == ["2 uncorrected volatile ECC error(s)"]
    assert why[6] == ["MIG enabled (set mig: use to select its MIG devices)"]
    assert [d["index"] for d in result["devices"] if d["selected"]] == [4, 7]


@pytest.mark.parametrize("backend, extra", [("nvml", {}), ("nvidia-smi", {}), ("docker", {"docker_image": CUDA_IMAGE})])
def test_each_backend_on_a_busy_host(busy_host, backend, extra):
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", dict(WANT, backend=backend, **extra))
    check_busy_host_selection(result, backend)


def test_nvml_sees_topology_and_check_mode_gives_the_same_answer(busy_host):
    args = dict(WANT, backend="nvml")
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", args)
    checked = run_module(busy_host.name, "inferops.vllm.gpu_select", args, check=True)
    assert result["topology"] == "node"  # 4 and 7 are on the same NUMA node, not behind one switch
    assert checked["gpus"] == result["gpus"] and checked["changed"] is False


def test_nvidia_smi_fallback_when_libnvidia_ml_is_absent(busy_host):
    busy_host.run("inferops-lab", "hide", "nvml")
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", WANT)
    check_busy_host_selection(result, "nvidia-smi")
    assert result["attempts"][0]["backend"] == "nvml" and not result["attempts"][0]["ok"]
    assert "NVML Shared Library Not Found" in result["attempts"][0]["error"]
    assert "topology" in " ".join(result.get("warnings", []))


def test_docker_fallback_when_neither_exists_on_the_host(busy_host):
    busy_host.run("inferops-lab", "hide", "nvml")
    busy_host.run("inferops-lab", "hide", "nvidia-smi")
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", dict(WANT, docker_image=CUDA_IMAGE))
    check_busy_host_selection(result, "docker")
    assert [a["ok"] for a in result["attempts"]] == [False, False, True]
    assert "could not start" in result["attempts"][1]["error"]


def test_clear_failure_when_every_backend_is_missing(busy_host):
    busy_host.run("inferops-lab", "hide", "nvml")
    busy_host.run("inferops-lab", "hide", "nvidia-smi")
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", WANT)
    assert result.failed
    assert result["msg"].startswith("no backend could read the GPUs: nvml: NVML initialisation")
    assert "nvidia-smi: `nvidia-smi` could not start" in result["msg"]
    assert "docker: skipped: the docker backend runs only when docker_image is given" in result["msg"]
    assert "gpus" not in result


def test_hung_nvidia_smi_is_bounded_by_the_timeout(busy_host):
    busy_host.run("inferops-lab", "hide", "nvml")
    busy_host.run("inferops-lab", "smi-hang", "on")
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", dict(WANT, timeout=2))
    assert result.failed
    assert "did not finish within 2.0s and was killed" in result["msg"]
    assert result.elapsed < 15
    assert busy_host.run("pgrep", "-f", "nvidia-smi --query-gpu", check=False).stdout == ""


def test_not_enough_eligible_gpus_explains_each(busy_host):
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", {"count": 5, "min_free_memory": "64GiB"})
    assert result.failed
    assert result["msg"].startswith("5 GPU(s) requested, 4 eligible on this host:")
    assert "GPU 5: 2 uncorrected volatile ECC error(s)" in result["msg"]


@pytest.mark.parametrize("args, message", [
    ({"count": 0}, "count: 0 is out of range; give a number at least 1"),
    ({"min_free_memory": "40GX"}, "min_free_memory: '40GX' is not a size"),
    ({"exclude": ["12"]}, "exclude: 12 does not exist on this host"),
    ({"max_utilization": 101}, "max_utilization: 101 is out of range; give a number at least 0 and at most 100"),
    ({"backend": "docker", "docker_image": "--privileged"}, "docker_image: '--privileged' is not an image reference"),
])
def test_bad_input_is_a_clear_error(host, args, message):
    result = run_module(host.name, "inferops.vllm.gpu_select", args)
    assert result.failed and message in result["msg"]
    assert "Traceback" not in result.get("module_stderr", "")


def test_mig_device_by_uuid(busy_host):
    result = run_module(busy_host.name, "inferops.vllm.gpu_select",
                        {"mig": "use", "exclude": ["0", "1", "2", "3", "4", "5", "7"], "backend": "nvml"})
    assert not result.failed, result.get("msg")
    assert result["gpus"] == [6] and result["uuids"][0].startswith("MIG-")
    assert result["cuda_visible_devices"] == result["uuids"][0]


def test_dockers_daemon_gives_the_container_exactly_the_selected_gpus(busy_host):
    result = run_module(busy_host.name, "inferops.vllm.gpu_select", dict(WANT, id_type="uuid"))
    seen = busy_host.run("docker", "run", "--rm", "--gpus", result["docker_gpus_argv"], CUDA_IMAGE, "nvidia-smi",
                         "--query-gpu=uuid", "--format=csv,noheader").stdout.split()
    assert sorted(seen) == sorted(result["uuids"])
