"""The real nvidia-ml-py bindings, unchanged, against the lab's fake libnvidia-ml.so.1 on a lab host."""

MIB = 1024 * 1024


def test_pynvml_reads_every_field_of_the_default_host(host):
    report = host.nvml()
    gpus = report["gpus"]
    assert report["driver"] == "535.247.01"
    assert [g["index"] for g in gpus] == list(range(8))
    assert len({g["uuid"] for g in gpus}) == 8 and all(g["uuid"].startswith("GPU-") for g in gpus)
    assert {g["name"] for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert all(g["memory"]["total"] == 81559 * MIB for g in gpus)
    assert all(g["memory"]["used"] + g["memory"]["free"] == g["memory"]["total"] for g in gpus)
    assert all(20 <= g["temperature"] <= 90 for g in gpus)
    assert all(g["persistence"] == 1 for g in gpus)
    assert all(g["mig_mode"] == [0, 0] for g in gpus)
    assert all(g["pci_bus_id"].startswith("00000000:") for g in gpus)
    assert report["by_uuid_index"] == 0
    # GPU 0 is partly used by another job: a live process holds 20 GiB, and it shows in utilization.
    gpu0 = gpus[0]
    assert [p["used"] for p in gpu0["processes"]] == [20480 * MIB]
    assert gpu0["memory"]["used"] == 20480 * MIB
    assert gpu0["utilization"]["gpu"] == 35
    holder = gpu0["processes"][0]["pid"]
    assert "inferops-lab" in host.read("/proc/%d/cmdline" % holder)
    assert all(g["processes"] == [] and g["memory"]["used"] == 0 for g in gpus[1:])


def test_topology_levels_follow_the_pcie_layout(host):
    levels = host.nvml()["topology_from_0"]
    # GPUs 0 and 1 share a PCIe switch; 2 and 3 are on the same NUMA node; 4-7 are across the socket link.
    assert levels["1"] == 10  # NVML_TOPOLOGY_SINGLE
    assert levels["2"] == 40 and levels["3"] == 40  # NVML_TOPOLOGY_NODE
    assert all(levels[str(i)] == 50 for i in range(4, 8))  # NVML_TOPOLOGY_SYSTEM


def test_ecc_errors_show_as_uncorrected_volatile(gpu_state):
    gpu_state.run("inferops-lab", "ecc", "5", "3")
    gpus = gpu_state.nvml()["gpus"]
    assert gpus[5]["ecc_uncorrected_volatile"] == 3
    assert gpus[4]["ecc_uncorrected_volatile"] == 0


def test_mig_mode_gives_not_supported_utilization_and_mig_devices(gpu_state):
    gpu_state.run("inferops-lab", "mig", "2", "on", "--profiles", "3g.40gb,1g.10gb")
    gpu = gpu_state.nvml()["gpus"][2]
    assert gpu["mig_mode"] == [1, 1]
    assert gpu["utilization"]["nvml_error"] == 3  # NVML_ERROR_NOT_SUPPORTED, as on real MIG GPUs
    assert [m["total"] // MIB for m in gpu["mig_devices"]] == [40192, 9856]
    assert all(m["uuid"].startswith("MIG-") and m["parent_uuid"] == gpu["uuid"] for m in gpu["mig_devices"])


def test_a_claim_dies_with_its_process(gpu_state):
    pid = gpu_state.run("inferops-lab", "occupy", "6", "--memory", "8GiB", "--utilization", "50").stdout.strip()
    gpu = gpu_state.nvml()["gpus"][6]
    assert gpu["processes"] == [{"pid": int(pid), "used": 8192 * MIB}]
    gpu_state.run("kill", "-9", pid)
    gpu_state.sh("while kill -0 %s 2>/dev/null; do sleep 0.1; done" % pid)
    gpu = gpu_state.nvml()["gpus"][6]
    assert gpu["processes"] == [] and gpu["memory"]["used"] == 0


def test_driver_not_loaded_is_nvml_error_9(gpu_state):
    gpu_state.run("inferops-lab", "driver", "unload")
    result = gpu_state.run("python3", "-c", "import pynvml\ntry:\n    pynvml.nvmlInit()\n"
                           "except pynvml.NVMLError as e:\n    print(e.value, e)", check=False)
    assert result.stdout.strip() == "9 Driver Not Loaded"


def test_lost_gpu_is_gpu_is_lost(gpu_state):
    gpu_state.run("inferops-lab", "lose", "7")
    result = gpu_state.run("python3", "-c", "import pynvml as n\nn.nvmlInit()\ntry:\n"
                           "    n.nvmlDeviceGetHandleByIndex(7)\nexcept n.NVMLError as e:\n    print(e.value, e)")
    assert result.stdout.strip() == "15 GPU is lost"


def test_missing_library_is_library_not_found(gpu_state):
    gpu_state.run("inferops-lab", "hide", "nvml")
    result = gpu_state.run("python3", "-c", "import pynvml\ntry:\n    pynvml.nvmlInit()\n"
                           "except pynvml.NVMLError as e:\n    print(e.value)", check=False)
    assert result.stdout.strip() == "12"  # NVML_ERROR_LIBRARY_NOT_FOUND
