"""Stopping a container through the Docker SDK when Docker gives up on it too early."""

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_docker

pytest.importorskip("docker")
from docker.errors import APIError  # noqa: E402


class Spec(object):
    container_name = "vllm-big"


class SlowToDie(object):
    """Docker's stop answers 500 ("did not receive an exit event"); the container exits `exits_after` polls later."""

    def __init__(self, exits_after):
        self.polls = 0
        self.exits_after = exits_after
        self.attrs = {"State": {"Running": True}}

    def stop(self, timeout):
        raise APIError("500 Server Error: cannot stop container: tried to kill container, but did not receive an "
                       "exit event")

    def reload(self):
        self.polls += 1
        self.attrs["State"]["Running"] = self.polls < self.exits_after


def instance():
    backend = _vllm_docker.DockerInstance.__new__(_vllm_docker.DockerInstance)
    backend.spec = Spec()
    return backend


def fake_time():
    now = [0.0]
    return (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))


def test_a_container_that_exits_after_dockers_own_deadline_counts_as_stopped():
    container = SlowToDie(exits_after=15)
    clock, sleep = fake_time()
    instance().stop(container, 30, clock=clock, sleep=sleep)
    assert container.polls == 15


def test_a_container_that_never_exits_is_an_error_naming_it_and_what_docker_said():
    clock, sleep = fake_time()
    with pytest.raises(_vllm_docker.DockerBackendError, match="stopping vllm-big: .*did not receive an exit event.*"
                                                              "still running 180 s later"):
        instance().stop(SlowToDie(exits_after=10 ** 6), 30, clock=clock, sleep=sleep)
