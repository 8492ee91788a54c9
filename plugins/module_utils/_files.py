# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing configuration files atomically, with their mode and owner, only when their content changes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import tempfile


def owner_ids(user):
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError("service_user: the user %r does not exist on this host (the vllm role creates it)" % user)
    return entry.pw_uid, entry.pw_gid


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def needs_write(path, content, mode, uid, gid):
    try:
        st = os.stat(path)
        with open(path) as handle:
            current = handle.read()
    except (IOError, OSError):
        return True
    return current != content or (st.st_mode & 0o7777) != mode or st.st_uid != uid or st.st_gid != gid


def write(path, content, mode, uid=0, gid=0, check_mode=False):
    """Makes `path` hold `content` with `mode` and owner; returns whether anything changed."""
    if not needs_write(path, content, mode, uid, gid):
        return False
    if check_mode:
        return True
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".inferops-")
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.rename(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def remove(path, check_mode=False):
    if not os.path.lexists(path):
        return False
    if not check_mode:
        os.unlink(path)
    return True
