import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.inferops.vllm.plugins.filter.docker_gpus import FilterModule

docker_gpus = FilterModule().filters()["docker_gpus"]


@pytest.mark.parametrize("form, expected", [
    ("argv", '"device=0,3"'),
    ("shell", "'\"device=0,3\"'"),
    ("systemd", '"\\"device=0,3\\""'),
    ("device_requests", [{"driver": "nvidia", "device_ids": ["0", "3"], "capabilities": [["gpu"]]}]),
])
def test_forms(form, expected):
    assert docker_gpus([0, 3], form) == expected


def test_bad_form_names_the_choices():
    with pytest.raises(AnsibleFilterError, match="argv, device_requests, shell, systemd"):
        docker_gpus([0], "csv")


def test_bad_id_is_a_filter_error_not_a_traceback():
    with pytest.raises(AnsibleFilterError, match="'0,1' is not a GPU ID"):
        docker_gpus(["0,1"])
