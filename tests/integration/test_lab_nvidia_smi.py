"""The lab's nvidia-smi prints what the real one prints, for the options our code and runbooks use."""

import csv
import io
import os
import re

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FIELDS = "index,uuid,name,memory.used,memory.total,utilization.gpu,temperature.gpu,persistence_mode"


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def rows(text):
    return list(csv.reader(io.StringIO(text), skipinitialspace=True))


def shape(value):
    """What a parser relies on: the kind of each value, with its unit."""
    value = re.sub(r"GPU-[0-9a-f-]{36}", "<uuid>", value)
    value = re.sub(r"MIG-[0-9a-f-]{36}", "<mig-uuid>", value)
    return re.sub(r"\d+", "<n>", value)


def test_query_gpu_csv_matches_the_real_format(host):
    fake = rows(host.run("nvidia-smi", "--query-gpu=" + FIELDS, "--format=csv").stdout)
    real = rows(fixture("query-gpu.csv"))
    assert fake[0] == real[0]  # the header, units included
    assert [shape(v) for v in fake[1]] == [shape(v) for v in real[1]]
    assert len(fake) == 9


def test_noheader_nounits_parses_to_numbers(host):
    fake = rows(host.run("nvidia-smi", "--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu",
                         "--format=csv,noheader,nounits").stdout)
    real = rows(fixture("query-gpu-noheader-nounits.csv"))
    assert [shape(v) for v in fake[0]] == [shape(v) for v in real[0]]
    index, used, total, util = fake[0][0], fake[0][3], fake[0][4], fake[0][5]
    assert (int(index), int(used), int(total), int(util)) == (0, 20480, 81559, 35)


def test_values_agree_with_nvml(host):
    nvml = host.nvml()["gpus"]
    fake = rows(host.run("nvidia-smi", "--query-gpu=uuid,memory.used", "--format=csv,noheader,nounits").stdout)
    assert [(u, int(m)) for u, m in fake] == [(g["uuid"], g["memory"]["used"] >> 20) for g in nvml]


def test_list_gpus_matches_the_real_format_including_mig(gpu_state):
    gpu_state.run("inferops-lab", "mig", "1", "on", "--profiles", "3g.40gb")
    fake = gpu_state.run("nvidia-smi", "-L").stdout.splitlines()
    real = fixture("list-gpus.txt").splitlines()
    assert [shape(line) for line in fake[:3]] == [shape(line) for line in real]


def test_unknown_field_is_refused(host):
    result = host.run("nvidia-smi", "--query-gpu=index,bogus", "--format=csv", check=False)
    assert result.returncode != 0
    assert 'Field "bogus" is not a valid field to query.' in result.stdout


def test_query_long_has_the_sections_runbooks_grep(host):
    out = host.run("nvidia-smi", "-q", "-i", "0").stdout
    for key in ("Driver Version", "Product Name", "Persistence Mode", "GPU UUID", "FB Memory Usage",
                "Utilization", "Processes", "Process ID"):
        assert key in out


def test_driver_not_loaded_exits_9_with_the_real_message(gpu_state):
    gpu_state.run("inferops-lab", "driver", "unload")
    result = gpu_state.run("nvidia-smi", check=False)
    assert result.returncode == 9
    assert result.stdout == fixture("driver-not-loaded.txt")


def test_reset_is_refused_while_a_process_holds_the_gpu(host):
    result = host.run("nvidia-smi", "--gpu-reset", "-i", "0", check=False)
    assert result.returncode == 255
    assert shape(result.stdout) == shape(fixture("reset-refused.txt"))


def test_reset_is_refused_by_persistence_mode_until_pm_is_off(gpu_state):
    gpu_state.run("inferops-lab", "leak", "3", "--memory", "6GiB")
    refused = gpu_state.run("nvidia-smi", "--gpu-reset", "-i", "3", check=False)
    assert refused.returncode == 255 and "In use by another client" in refused.stdout

    pm_off = gpu_state.run("nvidia-smi", "-pm", "0", "-i", "3")
    assert "Disabled persistence mode for GPU" in pm_off.stdout and "All done." in pm_off.stdout
    reset = gpu_state.run("nvidia-smi", "--gpu-reset", "-i", "3")
    assert re.fullmatch(r"GPU 00000000:[0-9A-F]{2}:00\.0 was successfully reset\.\n", reset.stdout)
    gpu = gpu_state.nvml()["gpus"][3]
    assert gpu["memory"]["used"] == 0 and gpu["persistence"] == 0


def test_a_hung_nvidia_smi_blocks(gpu_state):
    gpu_state.run("inferops-lab", "smi-hang", "on")
    result = gpu_state.run("timeout", "2", "nvidia-smi", "-L", check=False)
    assert result.returncode == 124


def test_hidden_nvidia_smi_is_not_on_path(gpu_state):
    gpu_state.run("inferops-lab", "hide", "nvidia-smi")
    assert gpu_state.sh("command -v nvidia-smi", check=False).returncode == 1
