"""Where the gateway's tests run in a session that also has tests/monitoring's: just before them.

The gateway's tests mostly wait (on HAProxy's checks, the watchdog, streams, Prometheus) and share one fleet per
worker (the module-scoped `fleet`); tests/monitoring's mostly render with Ansible, several CPU-bound hosts at a
time. pytest-xdist's load scheduling hands each worker consecutive tests, in chunks: with the gateway's first,
one worker usually takes all of them, sets up the fleet once and waits on them while the other renders, instead
of both doing the gateway's waits together at the end of the session."""
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MONITORING = os.path.join(os.path.dirname(HERE), "monitoring")


def _under(item, directory):
    return str(item.path).startswith(directory + os.sep)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    gateway = [item for item in items if _under(item, HERE)]
    others = [item for item in items if not _under(item, HERE)]
    monitoring = [index for index, item in enumerate(others) if _under(item, MONITORING)]
    if gateway and monitoring:
        items[:] = others[:monitoring[0]] + gateway + others[monitoring[0]:]
