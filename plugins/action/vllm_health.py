# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller side of inferops.vllm.vllm_health: with wait_for=healthy and progress_interval, the wait runs as
chunks of the module's own wait, and the loading progress is shown between them (a module cannot print)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.inferops.vllm.plugins.plugin_utils._chunked_wait import progress_line, wait_in_chunks

display = Display()
MODULE = "inferops.vllm.vllm_health"


def _seconds(args, name, default):
    """The option as a finite positive number, or a message naming it (the module checks it again)."""
    value = args.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, "%s: %r is not a number of seconds" % (name, value)
    if not math.isfinite(number) or number < 0:
        return None, "%s: %r is not a finite number of seconds, at least 0" % (name, value)
    return number, None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        every = args.get("progress_interval")
        if args.get("wait_for") != "healthy" or every in (None, "", 0, "0"):
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        every, problem = _seconds(args, "progress_interval", None)
        start_period, problem = (None, problem) if problem else _seconds(args, "start_period", 900)
        if problem:
            result.update(failed=True, changed=False, msg=problem)
            return result
        if every == 0:
            every = start_period
        host = (task_vars or {}).get("inventory_hostname", "")
        name = args.get("container") or args.get("unit") or args.get("url")

        def run_chunk(seconds):
            chunk_args = dict(args, start_period=seconds)
            return self._execute_module(module_name=MODULE, module_args=chunk_args, task_vars=task_vars)

        def show(chunk_result, waited):
            display.display("%s | %s: %s" % (host, name, progress_line(chunk_result, waited)), stderr=True)

        result.update(wait_in_chunks(run_chunk, start_period, every, time.monotonic, show))
        return result
