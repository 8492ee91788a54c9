# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for a vLLM server in chunks, on the controller, so that the loading progress shows while it loads.

A module cannot print while it runs; the vllm_health action plugin runs the module's own wait for a chunk of the
start period at a time and shows what the module saw between chunks. The outcome stays the module's."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def progress_line(result, waited):
    """One line on where a start-up stands: the loading percentage when the logs say it, else the phase or status."""
    progress = result.get("progress") or {}
    loading = progress.get("loading") or {}
    if loading.get("percent") is not None:
        where = "loading the weights, %s%% (%s/%s shards)" % (
            loading["percent"], loading.get("shards_loaded", "?"), loading.get("shards_total", "?"))
    elif progress.get("phase"):
        where = "phase %s" % progress["phase"]
    else:
        where = "status %s" % result.get("status", "unknown")
    return "%s after %.0f s" % (where, waited)


def wait_in_chunks(run_chunk, start_period, every, clock, show):
    """Runs run_chunk(seconds) -> the module's result, again while its outcome is `timeout` and time is left;
    show(result, waited) after each chunk that ends still waiting. Returns the last result, with the polls and the
    time of the whole wait, and a timeout message that names the whole start period."""
    started = clock()
    polls = 0
    while True:
        chunk = max(0.0, min(every, start_period - (clock() - started)))
        result = run_chunk(chunk)
        polls += result.get("polls") or 0
        waited = clock() - started
        # A millisecond left is none: float sums of chunk lengths may fall short of the start period by a hair.
        if result.get("outcome") != "timeout" or start_period - waited < 0.001:
            break
        show(result, waited)
    if "outcome" in result:
        result["polls"] = polls
        result["waited_s"] = round(waited, 2)
    if result.get("outcome") == "timeout" and isinstance(result.get("msg"), str):
        result["msg"] = result["msg"].replace("not ready after %.0f s" % chunk, "not ready after %.0f s" % start_period)
    return result
