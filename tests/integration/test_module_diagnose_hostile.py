"""Files written safely, through Ansible on a lab host (issue 12): vllm_diagnose refuses a `dest` that is not the
caller's private directory before any probe runs, replaces a symlink planted in `dest` instead of writing through
it as root, and vllm_serve keeps an instance's secrets directory 0700."""

import json

import pytest

from ansible_run import run_module

IMAGE = "inferops/vllm-emulator:0.33.0"
SECRET = "diagnose-hostile-secret-123456"
ROOT = "/tmp/diag-fs"
VICTIM = ROOT + "-victim"
PROBE_PORT = 8394
PROBED = ROOT + "-probed"
# Answers nothing, only notes that something connected: the health probe is the first thing vllm_diagnose does.
LISTENER = ("import socket, sys\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(5); open(sys.argv[2] + '.ready', 'w').close()\n"
            "c, _ = s.accept(); open(sys.argv[2], 'w').write('probed')\n")


@pytest.fixture
def lab(host):
    host.sh("rm -rf %s %s-*" % (ROOT, ROOT))
    host.sh("mkdir -p %s && echo keep > %s && chmod 0644 %s" % (ROOT, VICTIM, VICTIM))
    yield host
    host.sh("rm -rf %s %s-*" % (ROOT, ROOT))


@pytest.fixture
def listener(lab):
    """A port whose connections are recorded: proof of whether a probe ran."""
    lab.write(ROOT + "-listener.py", LISTENER)
    pid = lab.sh("timeout 120 python3 %s-listener.py %d %s >/dev/null 2>&1 </dev/null & echo $!" % (
        ROOT, PROBE_PORT, PROBED)).stdout.strip()
    lab.sh("for i in $(seq 50); do [ -e %s.ready ] && exit 0; sleep 0.1; done; exit 1" % PROBED)
    yield lab
    lab.run("kill", pid, check=False)


def diagnose(host, dest):
    return run_module(host.name, "inferops.vllm.vllm_diagnose", {
        "dest": dest, "health_timeout": 2, "log_lines": 10, "api_keys": [SECRET],
        "instances": [{"name": "watched", "port": PROBE_PORT, "backend": "docker"}]})


def assert_refused_before_any_probe(host, result, message):
    assert result.failed, result
    assert result["msg"].startswith("dest: ") and message in result["msg"], result["msg"]
    said = json.dumps({key: value for key, value in result.items() if key != "invocation"})
    # ansible-core marks every failure "(traceback unavailable)"; a crash would carry the traceback itself.
    assert "Traceback" not in said and result.get("exception", "(traceback unavailable)") == "(traceback unavailable)"
    assert SECRET not in said
    assert host.run("test", "-e", PROBED, check=False).returncode == 1, "a probe ran before dest was refused"


def listing(host, path):
    return host.sh("ls -A %s" % path).stdout


def test_a_symlink_planted_in_dest_is_replaced_and_its_target_left_alone(lab):
    dest = ROOT + "/run"
    lab.sh("mkdir -m 0700 %s && ln -s %s %s/disk.txt && ln -s %s %s/health-watched.json" % (
        dest, VICTIM, dest, VICTIM, dest))
    result = diagnose(lab, dest)
    assert not result.failed, result
    assert lab.read(VICTIM) == "keep\n"
    assert lab.sh("stat -c '%%a %%U' %s" % VICTIM).stdout == "644 root\n"
    kinds = lab.sh("cd %s && stat -c '%%n %%F %%a' *" % dest).stdout.splitlines()
    assert sorted(kinds) == sorted("%s regular file 600" % name for name in result["files"])
    assert "disk.txt" in result["files"] and "health-watched.json" in result["files"]
    assert SECRET not in lab.sh("cat %s/*" % dest).stdout


def test_a_dest_owned_by_someone_else_is_refused_before_any_probe(listener):
    dest = ROOT + "/theirs"
    listener.sh("mkdir -m 0700 %s && chown 65534:65534 %s" % (dest, dest))
    result = diagnose(listener, dest)
    assert_refused_before_any_probe(listener, result, "is owned by uid 65534, not by this user (uid 0)")
    assert listing(listener, dest) == ""


@pytest.mark.parametrize("mode", ["1777", "0755"])
def test_a_dest_others_can_reach_is_refused_before_any_probe(listener, mode):
    dest = ROOT + "/shared"
    listener.sh("mkdir %s && chmod %s %s" % (dest, mode, dest))
    result = diagnose(listener, dest)
    assert_refused_before_any_probe(listener, result, "has mode %s; it must be private (0700)" % mode)
    assert listing(listener, dest) == ""


def test_a_dest_that_is_a_file_is_refused_before_any_probe(listener):
    result = diagnose(listener, VICTIM)
    assert_refused_before_any_probe(listener, result, "is a file, not a directory")
    assert listener.read(VICTIM) == "keep\n"


def test_a_dest_that_is_a_symlink_to_a_private_directory_is_refused_before_any_probe(listener):
    target, dest = ROOT + "/target", ROOT + "/link"
    listener.sh("mkdir -m 0700 %s && ln -s %s %s" % (target, target, dest))
    result = diagnose(listener, dest + "/")
    assert_refused_before_any_probe(listener, result, "is a symlink")
    assert listing(listener, target) == ""


def test_the_listener_does_see_a_probe(listener):
    """The proof above can fail: a dest that is accepted gets its instance probed."""
    result = diagnose(listener, ROOT + "/fresh")
    assert not result.failed, result
    assert listener.sh("for i in $(seq 20); do [ -e %s ] && exit 0; sleep 0.1; done; exit 1" % PROBED).returncode == 0
    assert listener.sh("stat -c %%a %s/fresh" % ROOT).stdout == "700\n"


def test_vllm_serve_tightens_a_loose_secrets_directory_to_0700(host):
    name = "fsmode"
    secrets = "/etc/vllm/secrets/" + name
    args = {"name": name, "state": "stopped", "image": IMAGE, "pull": "never", "model": "facebook/opt-125m",
            "model_params": "125M", "gpus": ["5"], "port": 8395, "check_gpus": False, "api_keys": [SECRET]}
    # Left by earlier releases: the salt was written first, and its directory created 0755.
    host.sh("rm -rf %s && mkdir -p %s && chmod 0755 %s" % (secrets, secrets, secrets))
    try:
        result = run_module(host.name, "inferops.vllm.vllm_serve", args)
        assert not result.failed, result.get("msg")
        assert SECRET not in json.dumps(result)
        assert host.sh("stat -c '%%a %%U' %s" % secrets).stdout == "700 root\n"
        assert host.sh("cd %s && stat -c '%%n %%a' .salt serve-config.yaml" % secrets).stdout == \
            ".salt 600\nserve-config.yaml 600\n"
        host.sh("rm -rf %s" % secrets)
        result = run_module(host.name, "inferops.vllm.vllm_serve", dict(args, state="absent"))
        assert not result.failed, result.get("msg")
        result = run_module(host.name, "inferops.vllm.vllm_serve", args)
        assert not result.failed, result.get("msg")
        assert host.sh("stat -c '%%a %%U' %s" % secrets).stdout == "700 root\n"
    finally:
        run_module(host.name, "inferops.vllm.vllm_serve", {"name": name, "state": "absent"})
