# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A set of a service's configuration files, directories and leftovers, brought to their wanted state in one pass.

One module run instead of one `template` per file: on the idempotent path each `template` costs two module runs
on the host (stat, then file), about 0.3 s each on a small host, and a role writes dozens of files.

Every new file is staged beside its destination and checked by its tool first; only when every check passes are
they renamed into place. A file that fails its check therefore leaves every destination as it was.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import shlex

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _files

# How long a file's check (promtool, systemd-analyze, ...) may take before it counts as failed.
VALIDATE_TIMEOUT = 120
# The part of a failed check's output the error quotes.
OUTPUT_SHOWN = 2000


class ConfigError(Exception):
    """Input that names no safe file, or a file that could not be checked or written. The message says which."""


def _path(field, value):
    if not isinstance(value, str) or not value:
        raise ConfigError("%s: give the file's absolute path, like /etc/default/prometheus" % field)
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigError("%s: %r holds a line break or a NUL byte; give a plain absolute path" % (field, value))
    if not value.startswith("/") or os.path.normpath(value) != value or value == "/":
        raise ConfigError("%s: %r is not a normalised absolute path (no '..', '.', '//' or trailing '/'); give "
                          "one like /etc/default/prometheus" % (field, value))
    return value


def _mode(field, value):
    """A mode from "0644"/"644" or from an integer (what YAML makes of an unquoted 0644)."""
    mode = None
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and value.isdigit() and value.isascii() and set(value) <= set("01234567"):
        mode = int(value, 8)
    if mode is None or not 0 <= mode <= 0o7777:
        raise ConfigError("%s: give the mode as an octal string, like \"0644\"" % field)
    return mode


def _name(field, value):
    if not isinstance(value, str) or not value or any(c in value for c in ":\n\r\0/") or value != value.strip():
        raise ConfigError("%s: %r is not a user or group name" % (field, value))
    return value


def _validate_command(field, value):
    if value is None:
        return None
    try:
        argv = shlex.split(value) if isinstance(value, str) else None
    except ValueError:
        argv = None
    if not argv or sum(arg.count("%s") for arg in argv) != 1:
        raise ConfigError("%s: give a command with exactly one %%s where the new file's path goes, like "
                          "\"promtool check config %%s\"" % field)
    return argv


def plan(files, directories, absent):
    """The checked input: (files, directories, absent) as lists of dicts and paths. Raises ConfigError."""
    seen = {}
    checked_dirs, checked_files, checked_absent = [], [], []

    def claim(path, field):
        if path in seen:
            raise ConfigError("%s: %s is also %s; name each path once" % (field, path, seen[path]))
        seen[path] = field

    for index, item in enumerate(directories):
        field = "directories[%d]" % index
        path = _path(field + ".path", item.get("path"))
        claim(path, field)
        checked_dirs.append(dict(path=path, mode=_mode(field + ".mode", item.get("mode", "0755")),
                                 owner=_name(field + ".owner", item.get("owner", "root")),
                                 group=_name(field + ".group", item.get("group", "root"))))
    for index, item in enumerate(files):
        field = "files[%d]" % index
        path = _path(field + ".path", item.get("path"))
        field = "files[%s]" % path
        claim(path, field)
        content = item.get("content")
        if not isinstance(content, str):
            raise ConfigError("%s.content: give the file's text" % field)
        checked_files.append(dict(path=path, content=content, mode=_mode(field + ".mode", item.get("mode", "0644")),
                                  owner=_name(field + ".owner", item.get("owner", "root")),
                                  group=_name(field + ".group", item.get("group", "root")),
                                  validate=_validate_command(field + ".validate", item.get("validate"))))
    for index, value in enumerate(absent):
        field = "absent[%d]" % index
        path = _path(field, value)
        claim(path, field)
        checked_absent.append(path)
    return checked_files, checked_dirs, checked_absent


def existing(paths):
    """Those of `paths` that are there now as anything but a directory (a symlink counts, even a dangling one): what
    a role may then remove as a file. Raises ConfigError for a bad path."""
    found = []
    for index, path in enumerate(paths):
        _path("report_existing[%d]" % index, path)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            found.append(path)
    return found


def _ids(item, field, check_mode):
    """(uid, gid) of the item's owner and group; None in check mode when one does not exist yet (its package,
    which the same run would install, creates it)."""
    try:
        uid = pwd.getpwnam(item["owner"]).pw_uid
    except KeyError:
        if check_mode:
            return None
        raise ConfigError("%s.owner: the user %r does not exist on this host; create it first (its package or "
                          "role creates it)" % (field, item["owner"]))
    try:
        gid = grp.getgrnam(item["group"]).gr_gid
    except KeyError:
        if check_mode:
            return None
        raise ConfigError("%s.group: the group %r does not exist on this host; create it first (its package or "
                          "role creates it)" % (field, item["group"]))
    return uid, gid


def _check(item, staged):
    argv = [arg.replace("%s", staged) for arg in item["validate"]]
    try:
        rc, out, err = _command.run(argv, VALIDATE_TIMEOUT)
    except _command.CommandError as exc:
        raise ConfigError("files[%s]: the check could not run: %s; nothing was replaced" % (item["path"], exc))
    if rc != 0:
        shown = (err.strip() or out.strip())[-OUTPUT_SHOWN:]
        raise ConfigError("files[%s]: `%s` refused the new file (rc %d): %s; nothing was replaced" % (
            item["path"], " ".join(item["validate"]), rc, shown))


def _diff(item, before):
    header = "%s (mode %04o, %s:%s)" % (item["path"], item["mode"], item["owner"], item["group"])
    return dict(before_header=item["path"] if before is not None else "%s (absent)" % item["path"],
                after_header=header, before=before or "", after=item["content"])


def apply(files, directories, absent, check_mode=False, want_diff=False):
    """Brings the checked input (from plan) about; returns (changed paths in the input's order, diffs).

    Directories first, then the files (each staged and checked before any is renamed into place), then the
    removals. Raises ConfigError or _files.FileError; a refused file leaves every destination as it was.
    """
    changed, diffs = [], []
    for item in directories:
        ids = _ids(item, "directories[%s]" % item["path"], check_mode)
        if ids is None or _files.ensure_dir(item["path"], item["mode"], ids[0], ids[1], check_mode):
            changed.append(item["path"])
    pending = []
    for item in files:
        ids = _ids(item, "files[%s]" % item["path"], check_mode)
        if ids is not None and not _files.needs_write(item["path"], item["content"], item["mode"], *ids):
            continue
        changed.append(item["path"])
        if want_diff:
            diffs.append(_diff(item, _files.read(item["path"])))
        if not check_mode:
            pending.append((item, ids))
    staged = []
    try:
        for item, ids in pending:
            staged.append((item["path"], _files.stage(item["path"], item["content"], item["mode"], *ids)))
            if item["validate"]:
                _check(item, staged[-1][1])
        while staged:
            path, tmp = staged[0]
            try:
                os.rename(tmp, path)
            except OSError as exc:
                raise ConfigError("%s could not be written: %s" % (path, exc.strerror or exc))
            staged.pop(0)
    finally:
        for pending_rename in staged:
            _files.discard(pending_rename[1])
    for path in absent:
        if _files.remove(path, check_mode):
            changed.append(path)
            if want_diff:
                diffs.append(dict(before_header=path, after_header="%s (absent)" % path, before="", after=""))
    return changed, diffs
