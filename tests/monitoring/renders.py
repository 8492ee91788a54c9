"""Rendering the roles' files for many option sets at once, for the tests that only read what was rendered.

ansible-playbook costs seconds to start and each host's templates cost about as much again: one run that renders
for several hosts, one per case, each with its own options and directories, costs far less than one run per case.
Each case's options are in a file the render playbooks read with include_vars (render_case_vars), so that they
override the role's defaults and vars as -e does in a single-case run; -e takes what every case shares.

shared() runs such a render once for the whole test session, pytest-xdist's workers included."""
import fcntl
import json
import os
import re
import shutil
import subprocess

import yaml


# What shared() may produce: {name: (produce, cost)}, registered when the test modules are imported.
_BUNDLES = {}


def register(name, produce, cost):
    """Registers what shared(tmp_path_factory, name) produces, with `cost` (its seconds of CPU, roughly): a worker
    that waits for one bundle meanwhile produces the costliest others nobody has started (prefetch)."""
    _BUNDLES[name] = (produce, cost)
    return name


def _base(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _produce(base, name, produce):
    """Runs `produce` into base/name and writes its result, unless it is there already; the caller holds the
    bundle's lock."""
    directory = base / name
    done = directory / "result.json"
    if not done.exists():
        shutil.rmtree(str(directory), ignore_errors=True)  # what a run that raised left
        directory.mkdir()
        done.write_text(json.dumps(produce(directory)))
    return directory, json.loads(done.read_text())


def _prefetch(base, waiting_for):
    """While another worker produces `waiting_for`: produces the registered bundles no worker has started, the
    costliest first, until `waiting_for` is free. A bundle that fails here is left for the test that needs it."""
    for name, (produce, _cost) in sorted(_BUNDLES.items(), key=lambda item: -item[1][1]):
        if name == waiting_for or (base / name / "result.json").exists():
            continue
        with open(str(base / (name + ".lock")), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                _produce(base, name, produce)
            except Exception:  # noqa: BLE001 (the test that needs it meets the error)
                shutil.rmtree(str(base / name), ignore_errors=True)
        with open(str(base / (waiting_for + ".lock")), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass


def shared(tmp_path_factory, name, produce=None):
    """Runs produce(directory) (which returns something JSON can write; by default what register() gave for
    `name`) once for the whole test session, even when pytest-xdist's workers share it: they share the parent of
    their base temporary directories, and the first one there runs it under a lock while the others wait (doing
    the registered bundles nobody has started meanwhile), then read what it wrote. Returns the directory and that
    result."""
    produce = produce or _BUNDLES[name][0]
    base = _base(tmp_path_factory)
    with open(str(base / (name + ".lock")), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _prefetch(base, name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _produce(base, name, produce)


def case_hosts(tmp, cases, host_vars):
    """The inventory hosts of `cases` ({host name: options}): each gets tmp/NAME, its options in tmp/NAME/vars.json
    (render_case_vars) with what host_vars(case directory) adds to them, and a local connection."""
    hosts = {}
    for name, options in cases.items():
        case = tmp / name
        case.mkdir(parents=True)
        values = dict(host_vars(case))
        values.update(options)
        (case / "vars.json").write_text(json.dumps(values))
        hosts[name] = {"ansible_connection": "local", "render_case_vars": str(case / "vars.json")}
    return hosts


def run_playbook(playbook, inventory, path, extra_vars, timeout=600):
    """ansible-playbook `playbook` on `inventory` (written as YAML to `path`) with `extra_vars` as -e: its
    returncode, stdout and stderr."""
    path.write_text(yaml.safe_dump(inventory))
    result = subprocess.run(["ansible-playbook", playbook, "-i", str(path), "-e", json.dumps(extra_vars)],
                            capture_output=True, text=True, timeout=timeout, check=False)
    return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def recap(stdout):
    """{host: {ok: n, changed: n, unreachable: n, failed: n, ...}} from the PLAY RECAP."""
    found = {}
    section = stdout.rpartition("PLAY RECAP")[2]
    for host, counts in re.findall(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", section, re.M):
        found[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return found


def failures(stdout, hosts=r"\S+"):
    """{host: (the errors printed in its task's section, what is printed under `fatal: [host]: FAILED! =>`)} for
    the hosts whose names match `hosts`. ansible-core 2.19 prints a failed assert's message on an
    `[ERROR]: Task failed: ...` line (even where no_log hides the result), but each message once, for the first
    host that meets it: a host's error is the one of the section of the task it failed in, which says whose it is
    only where the section has one."""
    found = {}
    for section in re.split(r"^(?=TASK \[|PLAY RECAP)", stdout, flags=re.M):
        errors = re.findall(r"^\[ERROR\]: .*", section, re.M)
        for host, result in re.findall(r"^fatal: \[(%s)\]: FAILED! => *\n((?:    .*\n)+)" % hosts, section, re.M):
            found[host] = (errors, result)
    return found


def failure(result, host):
    """What Ansible printed for `host`'s failure in a run of several: its task's error and the lines under its
    `fatal:`. Fails the test where the host did not fail, or where its task's section has more than one error (one
    could not tell which is the host's)."""
    found = failures(result["stdout"])
    assert host in found, (host, result["stdout"][-3000:])
    assert recap(result["stdout"])[host]["failed"] == 1, result["stdout"][-3000:]
    errors, printed = found[host]
    assert len(errors) == 1, errors
    return errors[0] + "\n" + printed


def succeeded(result, host):
    """Fails the test unless the run ended well and `host` failed no task."""
    assert result["returncode"] == 0, result["stdout"][-4000:]
    counts = recap(result["stdout"]).get(host)
    assert counts and counts["failed"] == 0 and counts["unreachable"] == 0, (host, result["stdout"][-4000:])
