"""What a failed command printed reaches the module's message redacted: systemctl, systemd-analyze, nvidia-smi."""

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _gpu_reclaim, _systemd

LEAKY = "Environment=VLLM_API_KEY=sk-live-0123456789abcdef\nAuthorization: Bearer tok-0123456789"


@pytest.fixture
def leaky_command(monkeypatch):
    monkeypatch.setattr(_command, "run", lambda argv, timeout: (1, LEAKY, "failed"))


def assert_masked(message):
    assert "sk-live-0123456789abcdef" not in message and "tok-0123456789" not in message
    assert "VLLM_API_KEY=********" in message


def test_systemctl_failures_are_redacted(leaky_command):
    with pytest.raises(_systemd.SystemdError) as failure:
        _systemd.systemctl("start", "vllm-chat.service")
    assert str(failure.value).startswith("`systemctl start vllm-chat.service` exited 1: ")
    assert_masked(str(failure.value))


def test_unit_verification_failures_are_redacted(leaky_command):
    with pytest.raises(_systemd.SystemdError) as failure:
        _systemd.verify("vllm-chat.service", "[Service]\n")
    assert_masked(str(failure.value))


def test_nvidia_smi_output_is_redacted(leaky_command):
    rc, output = _gpu_reclaim._smi(["--gpu-reset", "-i", "0"], 5)
    assert rc == 1
    assert_masked(output)
