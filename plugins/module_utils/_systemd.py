# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd unit files: quoting words for ExecStart= the way systemd's own parser reads them, checking units with
the real `systemd-analyze verify`, and the systemctl calls to apply them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shutil
import tempfile

from ansible_collections.inferops.vllm.plugins.module_utils import _command
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


class SystemdError(Exception):
    pass


def quote(word):
    """One argv element as a word of an ExecStart= line: systemd unquotes it back to exactly `word`.

    Specifiers (%) and variable expansion ($) are escaped, so nothing in the value is substituted."""
    word = str(word).replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(word):
        return word
    return '"%s"' % word.replace("\\", "\\\\").replace('"', '\\"')


def command_line(argv):
    return " ".join(quote(word) for word in argv)


def verify(unit_name, content, timeout=60):
    """Runs `systemd-analyze verify` on the unit as it would be installed. Raises SystemdError with its output."""
    tmp = tempfile.mkdtemp(prefix="inferops-unit-")
    try:
        path = os.path.join(tmp, unit_name)
        with open(path, "w") as handle:
            handle.write(content)
        try:
            rc, out, err = _command.run(["systemd-analyze", "verify", path], timeout)
        except _command.CommandError as exc:
            raise SystemdError(str(exc))
        # verify also reports on unrelated units of the host; keep only what concerns ours.
        ours = [line for line in (out + err).splitlines() if unit_name in line or path in line]
        if rc != 0 or ours:
            raise SystemdError("`systemd-analyze verify %s` refused the unit: %s" % (
                unit_name, redact("; ".join(ours) or (out + err).strip())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def systemctl(*args, **kwargs):
    timeout = kwargs.get("timeout", 120)
    try:
        rc, out, err = _command.run(["systemctl"] + list(args), timeout)
    except _command.CommandError as exc:
        raise SystemdError(str(exc))
    if rc != 0 and not kwargs.get("check") is False:
        raise SystemdError("`systemctl %s` exited %d: %s" % (" ".join(args), rc, redact((out + err).strip())))
    return rc, out


def unit_state(unit):
    rc, out = systemctl("show", unit, "--property=LoadState,ActiveState,UnitFileState,SubState", check=False)
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"loaded": values.get("LoadState") == "loaded", "active": values.get("ActiveState") == "active",
            "enabled": values.get("UnitFileState") == "enabled", "sub_state": values.get("SubState")}
