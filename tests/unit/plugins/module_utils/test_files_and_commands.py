"""Files written safely and every command bounded (issue 12): the process group dies at the deadline, output is
capped, no symlink or FIFO at a destination is followed, secrets directories are 0700, and vllm_diagnose refuses
a `dest` it cannot trust before any probe runs."""

import os
import stat
import threading
import time

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _diagnose, _files

# A hang guard, not a benchmark: the bound is the timeout plus 2 s.
SLACK = 2.0
NOBODY = 65534


def within(seconds, call, *args, **kwargs):
    """(call's value or exception, elapsed seconds); fails the test, instead of hanging it, past `seconds`."""
    box = {}

    def target():
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed back to the test thread as is
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), "%s still running after %.1fs" % (getattr(call, "__name__", call), elapsed)
    return box.get("error", box.get("value")), elapsed


def gone(pid, wait=2.0):
    """Whether `pid` is dead (or a zombie nobody reaped yet) within `wait` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (IOError, OSError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# ---- commands ----

def test_a_grandchild_holding_the_pipe_is_killed_with_its_group_at_the_deadline(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = "sleep 100 & echo $! > %s; sleep 100" % pidfile
    outcome, elapsed = within(0.5 + SLACK + 3, _command.run, ["sh", "-c", script], 0.5)
    assert isinstance(outcome, _command.CommandError), outcome
    assert "did not finish within 0.5s" in str(outcome)
    assert elapsed < 0.5 + SLACK, elapsed
    assert gone(int(pidfile.read_text())), "the grandchild outlived the deadline"


def test_a_command_that_exits_while_its_background_child_holds_the_pipe_returns_its_result(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = "sleep 100 & echo $! > %s; echo done; echo oops >&2; exit 3" % pidfile
    outcome, elapsed = within(5 + SLACK + 3, _command.run, ["sh", "-c", script], 5)
    assert outcome == (3, "done\n", "oops\n")
    assert elapsed < 5 + SLACK, elapsed
    assert gone(int(pidfile.read_text())), "the background child was left running"


def test_a_plain_command_keeps_its_output_and_exit_status():
    assert _command.run(["sh", "-c", "printf 'a\\nb'; printf err >&2; exit 2"], 5) == (2, "a\nb", "err")


def test_a_command_that_cannot_start_names_itself():
    with pytest.raises(_command.CommandError, match="^`/nonexistent/nvidia-smi` could not start"):
        _command.run(["/nonexistent/nvidia-smi"], 1)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_is_capped_and_the_cut_is_marked(stream):
    flood, other = ("", " >&2") if stream == "stdout" else (" >&2", "")
    # The other stream's last line shows the command ran to its end, its flood drained rather than blocking it.
    script = "head -c 50000000 /dev/zero | tr '\\0' x%s; echo finished%s" % (flood, other)
    outcome, elapsed = within(30, _command.run, ["sh", "-c", script], 20)
    assert not isinstance(outcome, Exception), outcome
    rc, out, err = outcome
    assert rc == 0
    captured, rest = (out, err) if stream == "stdout" else (err, out)
    assert captured.startswith("x" * 1000)
    assert len(captured) <= _command.MAX_OUTPUT + 200
    assert "output cut after %d bytes" % _command.MAX_OUTPUT in captured
    assert rest == "finished\n"


def test_output_under_the_cap_is_not_marked():
    rc, out, _err = _command.run(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' y"], 10)
    assert (rc, out) == (0, "y" * 100000)


# ---- files ----

def test_write_replaces_a_symlink_at_the_destination_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("same\n")
    victim.chmod(0o600)
    link = tmp_path / "conf" / "instance.env"
    link.parent.mkdir()
    link.symlink_to(victim)
    # The victim already holds what would be written, with the mode and owner: reading through the link said
    # "nothing to do" and left the link in place for the next reader to follow.
    assert _files.write(str(link), "same\n", 0o600, os.geteuid(), os.getegid()) is True
    assert not link.is_symlink() and link.read_text() == "same\n"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    _files.write(str(link), "changed\n", 0o600, os.geteuid(), os.getegid())
    assert victim.read_text() == "same\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_write_over_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "instance.env"
    os.mkfifo(str(fifo))
    outcome, _elapsed = within(5, _files.write, str(fifo), "A=1\n", 0o600, os.geteuid(), os.getegid())
    assert outcome is True
    assert stat.S_ISREG(fifo.lstat().st_mode) and fifo.read_text() == "A=1\n"


def test_read_never_follows_a_symlink(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do not read\n")
    (tmp_path / ".salt").symlink_to(secret)
    assert _files.read(str(tmp_path / ".salt")) is None
    assert _files.read(str(tmp_path / "missing")) is None
    (tmp_path / "plain").write_text("abc\n")
    assert _files.read(str(tmp_path / "plain")) == "abc\n"


def test_remove_takes_a_symlink_away_and_leaves_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    assert _files.remove(str(tmp_path / "link")) is True
    assert not os.path.lexists(str(tmp_path / "link")) and victim.read_text() == "keep"
    assert _files.remove(str(tmp_path / "link")) is False


def test_remove_refuses_a_directory_in_place_of_the_file(tmp_path):
    planted = tmp_path / "vllm-chat.env"
    planted.mkdir()
    (planted / "inside").write_text("keep")
    with pytest.raises(_files.FileError, match="vllm-chat.env is a directory, not the file this module manages"):
        _files.remove(str(planted))
    assert (planted / "inside").read_text() == "keep"


def test_a_secrets_directory_write_creates_it_0700_and_owned_like_the_file(tmp_path):
    secrets = tmp_path / "secrets" / "llama"
    _files.write(str(secrets / ".salt"), "salt\n", 0o600, NOBODY, NOBODY, dir_mode=0o700)
    info = secrets.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE((secrets / ".salt").stat().st_mode) == 0o600


def test_ensure_dir_tightens_a_loose_secrets_directory(tmp_path):
    secrets = tmp_path / "llama"
    secrets.mkdir()
    secrets.chmod(0o755)
    assert _files.ensure_dir(str(secrets), 0o700, NOBODY, NOBODY, check_mode=True) is True
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o755
    assert _files.ensure_dir(str(secrets), 0o700, NOBODY, NOBODY) is True
    info = secrets.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert _files.ensure_dir(str(secrets), 0o700, NOBODY, NOBODY) is False


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_ensure_dir_refuses_what_is_not_a_real_directory(tmp_path, kind):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    path = tmp_path / "llama"
    if kind == "symlink":
        path.symlink_to(elsewhere)
    else:
        path.write_text("x")
    with pytest.raises(_files.FileError, match="^%s is a %s, not a directory" % (path, kind)):
        _files.ensure_dir(str(path), 0o700, NOBODY, NOBODY)
    info = elsewhere.stat()
    assert stat.S_IMODE(info.st_mode) == 0o755 and info.st_uid == os.geteuid()


# ---- vllm_diagnose's dest ----

class Probes:
    """Stands in for the health probe and every command, and records that they ran."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(_diagnose._vllm_health, "probe", self.probe)
        monkeypatch.setattr(_diagnose._command, "run", self.run)

    def probe(self, config):
        self.calls.append(("probe", config.name))
        return {"status": "down", "diagnosis": [], "seen": "api_key=%s" % config.secrets[0]}

    def run(self, argv, timeout):
        self.calls.append(tuple(argv))
        return 0, "output of %s\n" % argv[0], ""


INSTANCES = [{"name": "llama", "port": 8000, "backend": "docker"}]
KEY = "sk-diagnose-secret-123456"


def collect(dest):
    return _diagnose.collect(str(dest), INSTANCES, [KEY], health_timeout=1, log_lines=10, timeout=1)


def refusal(probes, dest):
    with pytest.raises(_diagnose.DestError) as caught:
        collect(dest)
    assert probes.calls == [], "a probe ran before dest was refused"
    return str(caught.value)


@pytest.fixture
def probes(monkeypatch):
    return Probes(monkeypatch)


@pytest.mark.parametrize("suffix", ["", "/", "/."])
def test_a_symlink_as_dest_is_refused_before_any_probe(tmp_path, probes, suffix):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    dest = tmp_path / "dest"
    dest.symlink_to(target)
    # A trailing "/" or "/." makes the kernel follow the link whatever O_NOFOLLOW says.
    message = refusal(probes, str(dest) + suffix)
    assert message.startswith("dest: %s is a symlink" % dest), message
    assert list(target.iterdir()) == []


def test_a_dest_owned_by_someone_else_is_refused_before_any_probe(tmp_path, probes):
    dest = tmp_path / "theirs"
    dest.mkdir(mode=0o700)
    os.chown(str(dest), NOBODY, NOBODY)
    message = refusal(probes, dest)
    assert message.startswith("dest: %s is owned by uid %d, not by this user (uid %d)" % (
        dest, NOBODY, os.geteuid())), message
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o755, 0o705])
def test_a_dest_others_can_reach_is_refused_before_any_probe(tmp_path, probes, mode):
    dest = tmp_path / "shared"
    dest.mkdir()
    dest.chmod(mode)
    message = refusal(probes, dest)
    assert message.startswith("dest: %s has mode %04o; it must be private (0700)" % (dest, mode)), message
    assert list(dest.iterdir()) == []


def test_a_dest_that_is_a_file_is_refused_before_any_probe(tmp_path, probes):
    dest = tmp_path / "report.txt"
    dest.write_text("keep\n")
    message = refusal(probes, dest)
    assert message.startswith("dest: %s is a file, not a directory" % dest), message
    assert dest.read_text() == "keep\n"


def test_a_missing_dest_is_created_private_with_private_files_and_secrets_masked(tmp_path, probes):
    dest = tmp_path / "incident" / "now"
    files, statuses, top = collect(dest)
    assert statuses == {"llama": "down"} and top["code"] == "none"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert sorted(os.listdir(str(dest))) == files
    for name in files:
        info = (dest / name).lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, name
        assert KEY not in (dest / name).read_text()


def test_a_symlink_planted_in_dest_is_replaced_not_followed(tmp_path, probes):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    (dest / "disk.txt").symlink_to(victim)
    (dest / "memory.txt").write_text("an older run\n")
    files, _statuses, _top = collect(dest)
    assert victim.read_text() == "keep\n"
    assert "disk.txt" in files and not (dest / "disk.txt").is_symlink()
    assert (dest / "disk.txt").read_text() == "output of df\n"
    assert (dest / "memory.txt").read_text() == "output of free\n"


def test_a_file_name_that_is_a_path_is_never_written(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    fd = _diagnose.open_dest(str(dest))
    try:
        for name in ("../escaped.txt", "sub/x.txt", "..", ".", ""):
            with pytest.raises(_diagnose.DestError, match="^dest: "):
                _diagnose.write_file(fd, str(dest), name, "x")
    finally:
        os.close(fd)
    assert not (tmp_path / "escaped.txt").exists() and list(dest.iterdir()) == []


def test_a_dest_below_a_directory_of_someone_else_is_refused_before_any_probe(tmp_path, probes):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(str(theirs), 65534, 65534)
    message = refusal(probes, theirs / "diag")
    expected = "dest: %s, above %s, belongs to uid 65534, who could redirect it" % (theirs, theirs / "diag")
    assert message.startswith(expected)


def test_a_dest_below_a_directory_anyone_may_rename_in_is_refused_but_a_sticky_one_is_not(tmp_path, probes):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o777)
    assert "has mode 0777: others may rename what is in it" in refusal(probes, shared / "diag")
    os.chmod(str(shared), 0o1777)
    files, _statuses, _top = collect(shared / "diag")
    assert files and probes.calls


def test_a_dest_below_a_directory_its_group_may_write_is_refused_unless_the_group_is_roots(tmp_path, probes):
    logs = tmp_path / "log"
    logs.mkdir()
    os.chmod(str(logs), 0o775)
    os.chown(str(logs), 0, 4)
    assert "has mode 0775: others may rename what is in it" in refusal(probes, logs / "diag")
    os.chown(str(logs), 0, 0)
    files, _statuses, _top = collect(logs / "diag")
    assert files


def test_a_symlink_of_someone_else_on_the_way_to_dest_is_refused(tmp_path, probes):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(str(sticky), 0o1777)
    private = tmp_path / "root-private"
    private.mkdir(mode=0o700)
    link = sticky / "evil"
    link.symlink_to(private)
    os.lchown(str(link), 65534, 65534)
    assert "is a symlink of uid 65534" in refusal(probes, link / "diag")
    assert not (private / "diag").exists()
