# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""config_files' logic: input checks, one pass over files, directories and leftovers, checks before any rename."""

import os
import stat
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _config_files as cf
from ansible_collections.inferops.vllm.plugins.module_utils import _files

ME = os.getuid()


def run(files=(), directories=(), absent=(), check_mode=False, diff=False):
    planned = cf.plan(list(files), list(directories), list(absent))
    return cf.apply(*planned, check_mode=check_mode, want_diff=diff)


def entry(path, content="x\n", **extra):
    item = dict(path=str(path), content=content, owner=owner(), group=group())
    item.update(extra)
    return item


def owner():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def group():
    import grp
    return grp.getgrgid(os.getgid()).gr_name


def leftovers(directory):
    return [n for n in os.listdir(str(directory)) if n.startswith(".inferops-")]


# ---- input ----

@pytest.mark.parametrize("path, why", [
    ("etc/x", "not a normalised absolute path"),
    ("/etc/../root/x", "not a normalised absolute path"),
    ("/etc//x", "not a normalised absolute path"),
    ("/etc/x/", "not a normalised absolute path"),
    ("/", "not a normalised absolute path"),
    ("/etc/x\nExecStart=/bin/sh", "line break"),
    ("", "absolute path"),
])
def test_a_path_that_is_not_a_plain_absolute_one_is_refused_naming_the_field(path, why):
    with pytest.raises(cf.ConfigError) as refused:
        cf.plan([dict(path=path, content="")], [], [])
    assert str(refused.value).startswith("files[0].path: ") and why in str(refused.value)


@pytest.mark.parametrize("mode", ["0999", "rw-r--r--", "u+x", "", True, 0o17777, -1, 1.5, "٦٤٤"])
def test_a_mode_that_is_not_octal_is_refused(mode):
    with pytest.raises(cf.ConfigError, match=r"^files\[/etc/x\]\.mode: give the mode as an octal string"):
        cf.plan([dict(path="/etc/x", content="", mode=mode)], [], [])


def test_modes_are_read_as_octal_from_text_and_taken_as_is_from_yamls_integer():
    a, b = cf.plan([dict(path="/a", content="", mode="0640"), dict(path="/b", content="", mode=0o640)], [], [])[0]
    assert a["mode"] == b["mode"] == 0o640


@pytest.mark.parametrize("command", ["promtool check config", "check %s %s", "check '%s", ""])
def test_a_check_without_exactly_one_placeholder_is_refused(command):
    with pytest.raises(cf.ConfigError, match=r"validate: give a command with exactly one %s"):
        cf.plan([dict(path="/etc/x", content="", validate=command)], [], [])


def test_a_path_named_twice_is_refused():
    with pytest.raises(cf.ConfigError, match=r"absent\[0\]: /etc/x is also files\[/etc/x\]; name each path once"):
        cf.plan([dict(path="/etc/x", content="")], [], ["/etc/x"])


@pytest.mark.parametrize("name", ["", "a:b", "../root", " root", "root\n"])
def test_an_owner_that_is_not_a_name_is_refused(name):
    with pytest.raises(cf.ConfigError, match=r"^directories\[0\]\.owner: "):
        cf.plan([], [dict(path="/etc/x", owner=name)], [])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans(), st.floats()))
def test_any_path_is_either_a_normalised_absolute_one_or_refused_with_the_field(value):
    try:
        [item] = cf.plan([dict(path=value, content="")], [], [])[0]
    except cf.ConfigError as exc:
        assert str(exc).startswith("files[0].path: ")
        return
    path = item["path"]
    assert path.startswith("/") and os.path.normpath(path) == path and ".." not in path.split("/")
    assert not set("\n\r\0") & set(path)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=8), st.integers(-10, 0o20000), st.none(), st.booleans()))
def test_any_mode_is_either_within_0_to_7777_or_refused(value):
    try:
        [item] = cf.plan([dict(path="/x", content="", mode=value)], [], [])[0]
    except cf.ConfigError as exc:
        assert "mode: give the mode as an octal string" in str(exc)
        return
    assert 0 <= item["mode"] <= 0o7777


# ---- one pass ----

def test_files_are_written_with_their_mode_and_a_second_pass_changes_nothing(tmp_path):
    files = [entry(tmp_path / "a.conf", "a=1\n", mode="0640"), entry(tmp_path / "sub" / "b.conf", "b\n")]
    directory = dict(path=str(tmp_path / "d"), mode="0700", owner=owner(), group=group())
    changed = run(files, directories=[directory])[0]
    assert changed == [str(tmp_path / "d"), str(tmp_path / "a.conf"), str(tmp_path / "sub" / "b.conf")]
    assert (tmp_path / "a.conf").read_text() == "a=1\n"
    assert stat.S_IMODE((tmp_path / "a.conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert run(files, directories=[directory]) == ([], [])


def test_a_mode_change_alone_is_a_change(tmp_path):
    run([entry(tmp_path / "a", mode="0644")])
    assert run([entry(tmp_path / "a", mode="0600")])[0] == [str(tmp_path / "a")]
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600


def test_a_symlink_at_a_files_path_is_replaced_and_its_target_left_alone(tmp_path):
    target = tmp_path / "target"
    target.write_text("secret\n")
    (tmp_path / "link").symlink_to(target)
    run([entry(tmp_path / "link", "new\n")])
    assert target.read_text() == "secret\n"
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_text() == "new\n"


def test_a_file_its_check_refuses_leaves_every_destination_as_it_was(tmp_path):
    (tmp_path / "good").write_text("old good\n")
    (tmp_path / "bad").write_text("old bad\n")
    refuse = "%s -c \"import sys; print('line 3: unknown field'); sys.exit(1)\" %%s" % sys.executable
    accept = "%s -c \"import sys; sys.exit(0)\" %%s" % sys.executable
    with pytest.raises(cf.ConfigError) as refused:
        run([entry(tmp_path / "good", "new good\n", validate=accept),
             entry(tmp_path / "bad", "new bad\n", validate=refuse)])
    assert "files[%s]" % (tmp_path / "bad") in str(refused.value)
    assert "(rc 1): line 3: unknown field; nothing was replaced" in str(refused.value)
    assert (tmp_path / "good").read_text() == "old good\n" and (tmp_path / "bad").read_text() == "old bad\n"
    assert leftovers(tmp_path) == []


def test_the_check_reads_the_staged_file_with_its_new_content(tmp_path):
    check = "%s -c \"import sys; sys.exit(open(sys.argv[1]).read() != 'wanted\\n')\" %%s" % sys.executable
    assert run([entry(tmp_path / "a", "wanted\n", validate=check)])[0] == [str(tmp_path / "a")]
    with pytest.raises(cf.ConfigError):
        run([entry(tmp_path / "a", "other\n", validate=check)])
    assert (tmp_path / "a").read_text() == "wanted\n"


def test_a_check_that_cannot_start_refuses_the_file(tmp_path):
    with pytest.raises(cf.ConfigError, match=r"the check could not run: .*nothing was replaced"):
        run([entry(tmp_path / "a", validate="/nonexistent/promtool check config %s")])
    assert not (tmp_path / "a").exists() and leftovers(tmp_path) == []


def test_check_mode_reports_and_writes_nothing_and_a_missing_group_counts_as_a_change(tmp_path):
    (tmp_path / "gone").write_text("x")
    files = [entry(tmp_path / "a"), entry(tmp_path / "b", group="no-such-group-here")]
    changed, diffs = run(files, directories=[dict(path=str(tmp_path / "d"))], absent=[str(tmp_path / "gone")],
                         check_mode=True, diff=True)
    assert changed == [str(tmp_path / p) for p in ("d", "a", "b", "gone")]
    assert sorted(os.listdir(str(tmp_path))) == ["gone"]
    assert [d["after"] for d in diffs[:2]] == ["x\n", "x\n"]


def test_a_missing_group_is_an_error_naming_the_file_outside_check_mode(tmp_path):
    with pytest.raises(cf.ConfigError, match=r"files\[.*/b\]\.group: the group 'no-such-group-here' does not exist"):
        run([entry(tmp_path / "a"), entry(tmp_path / "b", group="no-such-group-here")])
    assert not (tmp_path / "a").exists()


def test_the_diff_shows_the_content_before_and_after_and_the_new_mode(tmp_path):
    (tmp_path / "a").write_text("old\n")
    [diff] = run([entry(tmp_path / "a", "new\n", mode="0600")], diff=True)[1]
    assert (diff["before"], diff["after"]) == ("old\n", "new\n")
    assert diff["after_header"] == "%s (mode 0600, %s:%s)" % (tmp_path / "a", owner(), group())


def test_leftovers_are_removed_and_a_directory_in_their_place_is_refused(tmp_path):
    (tmp_path / "old.rules.yml").write_text("x")
    (tmp_path / "dir").mkdir()
    assert run(absent=[str(tmp_path / "old.rules.yml"), str(tmp_path / "never")])[0] == [
        str(tmp_path / "old.rules.yml")]
    assert not (tmp_path / "old.rules.yml").exists()
    with pytest.raises(_files.FileError, match="is a directory"):
        run(absent=[str(tmp_path / "dir")])


def test_existing_lists_the_files_there_in_their_order_a_dangling_symlink_too_and_refuses_a_bad_path(tmp_path):
    (tmp_path / "unit.service").write_text("x")
    (tmp_path / "rules.nft").symlink_to(tmp_path / "gone")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir-link").symlink_to(tmp_path / "dir")
    asked = [str(tmp_path / name) for name in ("rules.nft", "never", "unit.service", "dir", "dir-link")]
    # A directory is not a file the role could remove as one; a symlink to it is (removing it keeps the directory).
    assert cf.existing(asked) == [asked[0], asked[2], asked[4]]
    assert cf.existing([]) == []
    with pytest.raises(cf.ConfigError, match=r"report_existing\[1\]: .* is not a normalised absolute path"):
        cf.existing([asked[0], str(tmp_path) + "/../etc/passwd"])


def test_a_symlink_where_a_directory_should_be_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(_files.FileError, match="is a symlink, not a directory"):
        run(directories=[dict(path=str(tmp_path / "link"), owner=owner(), group=group())])


def test_the_staged_file_keeps_the_extension_its_checker_reads_the_type_from(tmp_path):
    # systemd-analyze verify refuses a unit file whose name has no unit type ("Failed to prepare filename").
    check = "%s -c \"import sys; sys.exit(not sys.argv[1].endswith('.timer'))\" %%s" % sys.executable
    assert run([entry(tmp_path / "gpu-metrics.timer", "[Timer]\n", validate=check)])[0] == [
        str(tmp_path / "gpu-metrics.timer")]
