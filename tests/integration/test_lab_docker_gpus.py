"""The real dockerd in a lab host honours --gpus through the stand-in runtime hook."""

import json


def uuids(host):
    return [g["uuid"] for g in host.nvml()["gpus"]]


def test_quoted_device_list_sees_exactly_those_gpus(host):
    out = host.run("docker", "run", "--rm", "--gpus", '"device=1,2"', "inferops/cuda-base:12.2-lab",
                   "nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader").stdout
    host_uuids = uuids(host)
    # Inside, the GPUs are renumbered from 0, and keep their UUIDs: as with NVIDIA's toolkit.
    assert out.splitlines() == ["0, %s" % host_uuids[1], "1, %s" % host_uuids[2]]


def test_unquoted_device_list_fails_with_dockers_real_error(host):
    result = host.run("docker", "run", "--rm", "--gpus", "device=1,2", "inferops/cuda-base:12.2-lab", "true",
                      check=False)
    assert result.returncode != 0
    assert "cannot set both Count and DeviceIDs on device request" in result.stderr


def test_device_requests_hold_exactly_the_ids(host):
    created = host.run("docker", "create", "--gpus", '"device=4,5"', "inferops/cuda-base:12.2-lab", "true").stdout
    try:
        requests = json.loads(host.run("docker", "inspect", "-f", "{{json .HostConfig.DeviceRequests}}",
                                       created.strip()).stdout)
    finally:
        host.run("docker", "rm", created.strip())
    assert requests[0]["Count"] == 0 and requests[0]["DeviceIDs"] == ["4", "5"]


def test_gpus_by_uuid_and_all(host):
    host_uuids = uuids(host)
    out = host.run("docker", "run", "--rm", "--gpus", '"device=%s"' % host_uuids[7], "inferops/cuda-base:12.2-lab",
                   "nvidia-smi", "-L").stdout
    assert out.strip() == "GPU 0: NVIDIA H100 80GB HBM3 (UUID: %s)" % host_uuids[7]
    count = host.run("docker", "run", "--rm", "--gpus", "all", "inferops/cuda-base:12.2-lab", "nvidia-smi",
                     "--query-gpu=count", "--format=csv,noheader").stdout.splitlines()
    assert count[0] == "8"


def test_unknown_device_is_refused_like_the_toolkit(host):
    result = host.run("docker", "run", "--rm", "--gpus", '"device=9"', "inferops/cuda-base:12.2-lab", "true",
                      check=False)
    assert result.returncode != 0 and "unknown device" in result.stderr


def test_the_hook_records_the_allocation(host):
    cid = host.run("docker", "run", "-d", "--gpus", '"device=3"', "inferops/cuda-base:12.2-lab", "sleep",
                   "30").stdout.strip()
    try:
        record = json.loads(host.read("/var/lib/inferops-lab/allocations/%s.json" % cid))
    finally:
        host.run("docker", "rm", "-f", cid)
    assert record["uuids"] == [uuids(host)[3]] and record["requested"] == "3"


def test_container_processes_appear_with_host_pids(host, containers):
    name = host.emulator(["facebook/opt-125m", "--gpu-memory-utilization", "0.3"], gpus=[6], port=8123)
    containers.append(name)
    host.wait_log(name, "Application startup complete")
    gpu = host.nvml()["gpus"][6]
    assert len(gpu["processes"]) == 1
    pid = gpu["processes"][0]["pid"]
    # The PID is the host's, as the real driver reports it: the host can see it in the container's cgroup.
    assert name in host.run("docker", "ps", "--filter", "id=%s" % host.read(
        "/proc/%d/cgroup" % pid).split("/docker/")[1][:12], "--format", "{{.Names}}").stdout
    assert gpu["processes"][0]["used"] == int(0.3 * 81559) * 1024 * 1024
