"""The conformance suite: every check runs against the real vLLM and against the lab's emulator (test ids `real`
and `emulator`) and must pass on both; a few compare the two directly. The suite fails, rather than skips, when
the real image (`tests/lab/labctl.py real-image`) or the lab (`make lab-up`) is missing.

A real server takes about a minute to start on two cores, so each kind starts its servers once, all at the first
test: `main` (two served names, keys from a --config file, as the collection passes them), `aux` (--api-key given
twice, --shutdown-timeout) and the failing command lines (`cli`, two at a time). Emulator checks run first, while
the real servers start; the checks that send SIGTERM run last."""

import pytest

from conformance_setup import CONF, KINDS, Fleet, Fleets
from vllm_servers import EmulatorBackend, Files, RealBackend, lab_hosts


def pytest_configure(config):
    config.addinivalue_line("markers", "stops_server: sends SIGTERM to a shared server; runs after the other checks")
    config.addinivalue_line("markers", "both_servers: compares the real server with the emulator")


def _kind(item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("kind") if callspec else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Emulator checks first (the real servers start meanwhile), then real ones, then the comparisons, then the
    checks that stop servers."""
    kinds = set()

    def rank(pair):
        index, item = pair
        kind = _kind(item)
        kinds.update([kind] if kind else KINDS if item.get_closest_marker("both_servers") else [])
        stage = 3 if item.get_closest_marker("stops_server") else 2 if kind is None else 0 if kind == "emulator" \
            else 1
        return stage, index

    items[:] = [item for _index, item in sorted(enumerate(items), key=rank)]
    config.conformance_kinds = kinds


@pytest.fixture(scope="session")
def fleets(request, tmp_path_factory):
    kinds = getattr(request.config, "conformance_kinds", set(KINDS))
    found = Fleets()
    problem = RealBackend.check()
    if problem:
        # The emulator serves the real image's model directory, so it needs the image too.
        found.errors = dict((kind, problem) for kind in KINDS)
        yield found
        return
    files = Files(str(tmp_path_factory.mktemp("conformance")), CONF)
    for kind in sorted(kinds, reverse=True):
        try:
            if kind == "real":
                backend = RealBackend(files)
            else:
                problem = EmulatorBackend.check()
                if problem:
                    found.errors[kind] = problem
                    continue
                backend = EmulatorBackend(files, lab_hosts()[-1])
            found.started[kind] = Fleet(backend)
        except AssertionError as exc:
            found.errors[kind] = "could not start the %s servers: %s" % (kind, exc)
    yield found
    for fleet in found.started.values():
        fleet.close()


@pytest.fixture(scope="session", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="session")
def fleet(kind, fleets):
    return fleets.get(kind)


@pytest.fixture
def main(fleet):
    """The main server, healthy: served as `tiny` and `other`, keys k1 and k2 from its --config file."""
    return fleet.main.wait_ready(fleet.backend.ready_timeout)


@pytest.fixture
def aux(fleet):
    """The second server, healthy: `--api-key a --api-key b c --shutdown-timeout 30`."""
    return fleet.aux.wait_ready(fleet.backend.ready_timeout)


@pytest.fixture
def cli(fleet):
    """case -> CliRun (exit code, stdout, stderr) of the command lines that must fail."""
    return dict((case, future.result(timeout=600)) for case, future in fleet.cli.items())


@pytest.fixture
def real_main(fleets):
    fleet = fleets.get("real")
    return fleet.main.wait_ready(fleet.backend.ready_timeout)


@pytest.fixture
def emulator_main(fleets):
    fleet = fleets.get("emulator")
    return fleet.main.wait_ready(fleet.backend.ready_timeout)
