# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running a command with a deadline: a wedged nvidia-smi or docker must not hang the play."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import subprocess


class CommandError(Exception):
    """The command could not start, or did not finish in time. The message names it."""


def run(argv, timeout):
    """(rc, stdout, stderr) of argv, killed after `timeout` seconds."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise CommandError("`%s` could not start: %s" % (argv[0], exc.strerror or exc))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CommandError("`%s` did not finish within %ss and was killed" % (" ".join(argv), timeout))
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
