# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing configuration files atomically, with their mode and owner, only when their content changes.

Nothing here follows a symlink at a destination: a service user who owns its secrets directory could plant one
there, and root would then write or read wherever it points.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import grp
import os
import pwd
import stat
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


class FileError(Exception):
    """A destination that cannot be written safely. The message names the path and the fix."""


# The most a file compared or read back here may hold: they are small configuration files and salts.
MAX_READ = 1024 * 1024


def read(path, limit=MAX_READ):
    """The text of `path`, or None when it is missing or is not a regular file.

    A symlink is never followed (its target may be anything, anywhere) and a FIFO is never waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (IOError, OSError):
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(limit).decode("utf-8", "replace")


def needs_write(path, content, mode, uid, gid):
    try:
        st = os.lstat(path)
    except (IOError, OSError):
        return True
    # Anything but a regular file (a symlink, a FIFO) is replaced, never read through.
    if not stat.S_ISREG(st.st_mode):
        return True
    current = read(path, len(content.encode("utf-8")) + 1)
    return current != content or (st.st_mode & 0o7777) != mode or st.st_uid != uid or st.st_gid != gid


def ensure_dir(path, mode, uid=0, gid=0, check_mode=False):
    """Makes `path` a real directory with exactly `mode` and owner, creating or tightening it; returns whether
    anything changed. A symlink or a file in its place is refused, never followed or replaced."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise FileError("%s cannot be read: %s" % (path, exc.strerror or exc))
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "special file"
        raise FileError("%s is a %s, not a directory; remove it so that a private directory can take its place"
                        % (path, kind))
    if st is not None and (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid):
        return False
    if check_mode:
        return True
    try:
        if st is None:
            parent = os.path.dirname(path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, 0o755)
            os.mkdir(path, 0o700)
        # Through a descriptor of the directory itself: a swap of the path for a symlink in between is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FileError("%s could not be made a directory with mode %04o: %s" % (path, mode, exc.strerror or exc))
    return True


def write(path, content, mode, uid=0, gid=0, check_mode=False, dir_mode=None):
    """Makes `path` hold `content` with `mode` and owner; returns whether anything changed.

    Whatever is at `path` is replaced by a rename, never written through: a symlink there is not followed.
    `dir_mode`: the directory of `path` is made exactly that mode, owned like the file (a secrets directory
    passes 0o700); without it, a missing directory is created 0755.
    """
    directory = os.path.dirname(path)
    dir_changed = False
    if dir_mode is not None:
        dir_changed = ensure_dir(directory, dir_mode, uid, gid, check_mode)
    if not needs_write(path, content, mode, uid, gid):
        return dir_changed
    if check_mode:
        return True
    tmp = stage(path, content, mode, uid, gid)
    try:
        os.rename(tmp, path)
    except OSError as exc:
        discard(tmp)
        raise FileError("%s could not be written: %s" % (path, exc.strerror or exc))
    return True


def stage(path, content, mode, uid=0, gid=0):
    """A new file beside `path` holding `content` with `mode` and owner, for the caller to check and then rename
    over `path` (atomic) or unlink. A missing directory is created 0755.

    It keeps the extension of `path`: checkers such as `systemd-analyze verify` read the file's type from it."""
    directory = os.path.dirname(path)
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".inferops-", suffix=os.path.splitext(path)[1])
    except OSError as exc:
        raise FileError("%s could not be written: %s" % (path, exc.strerror or exc))
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
    except OSError as exc:
        discard(tmp)
        raise FileError("%s could not be written: %s" % (path, exc.strerror or exc))
    except Exception:
        discard(tmp)
        raise
    return tmp


def discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def remove(path, check_mode=False):
    """Removes the file (or a symlink in its place); returns whether anything was there. A directory in its place is
    someone else's doing and is refused, not emptied."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise FileError("%s is a directory, not the file this module manages; move it away and run again" % path)
    if not check_mode:
        try:
            os.unlink(path)
        except OSError as exc:
            raise FileError("%s could not be removed: %s" % (path, exc.strerror or exc))
    return True
