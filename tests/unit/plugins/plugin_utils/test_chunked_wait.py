"""The vllm_health action plugin's wait in chunks: the module's outcome decides, the time is the whole wait's."""

from hypothesis import given, settings, strategies as st

from ansible_collections.inferops.vllm.plugins.plugin_utils._chunked_wait import progress_line, wait_in_chunks


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def module(clock, outcomes, loading=None):
    """A vllm_health that waits out each chunk (or ends early with the next outcome) and says so."""
    calls = []

    def run_chunk(seconds):
        calls.append(seconds)
        outcome = outcomes.pop(0)
        clock.now += seconds if outcome == "timeout" else 1.0
        result = {"outcome": outcome, "polls": 3, "status": "starting" if outcome == "timeout" else "healthy",
                  "progress": {"phase": "loading", "loading": loading} if loading else None}
        if outcome == "timeout":
            result.update(failed=True, msg="http://h:8000 is not serving: not ready after %.0f s (start_period); "
                                           "status starting" % seconds)
        return result
    return run_chunk, calls


def test_chunks_repeat_while_loading_and_the_ready_result_comes_back_with_the_whole_wait():
    clock, shown = Clock(), []
    loading = {"percent": 40, "shards_loaded": 2, "shards_total": 5}
    run_chunk, calls = module(clock, ["timeout", "timeout", "ready"], loading)
    result = wait_in_chunks(run_chunk, 300, 15, clock, lambda r, w: shown.append(progress_line(r, w)))
    assert calls == [15, 15, 15] and result["outcome"] == "ready" and "failed" not in result
    assert result["polls"] == 9 and result["waited_s"] == 31.0
    assert shown == ["loading the weights, 40% (2/5 shards) after 15 s",
                     "loading the weights, 40% (2/5 shards) after 30 s"]


def test_a_crash_ends_the_wait_at_once():
    clock = Clock()
    run_chunk, calls = module(clock, ["timeout", "crash_loop", "ready"])
    assert wait_in_chunks(run_chunk, 300, 15, clock, lambda r, w: None)["outcome"] == "crash_loop"
    assert len(calls) == 2


def test_the_last_chunk_is_what_is_left_and_the_message_names_the_whole_start_period():
    clock = Clock()
    run_chunk, calls = module(clock, ["timeout"] * 5)
    result = wait_in_chunks(run_chunk, 40, 15, clock, lambda r, w: None)
    assert calls == [15, 15, 10]
    assert result["failed"] and result["outcome"] == "timeout" and result["waited_s"] == 40.0
    assert result["msg"].startswith("http://h:8000 is not serving: not ready after 40 s (start_period)")


def test_a_failure_before_any_wait_is_returned_as_it_is():
    refused = {"failed": True, "msg": "url: 'x' is not an http(s) URL"}
    result = wait_in_chunks(lambda seconds: dict(refused), 300, 15, Clock(), lambda r, w: None)
    assert result == refused


@settings(max_examples=200, deadline=None)
@given(start_period=st.floats(0, 1000), every=st.floats(0.1, 100),
       outcomes=st.lists(st.sampled_from(["timeout", "ready", "exited", "crash_loop", "missing"]), min_size=1))
def test_the_wait_never_outlasts_its_start_period_by_more_than_a_poll(start_period, every, outcomes):
    clock = Clock()
    outcomes = outcomes + ["timeout"] * int(start_period / every + 5)
    run_chunk, calls = module(clock, outcomes)
    result = wait_in_chunks(run_chunk, start_period, every, clock, lambda r, w: None)
    assert sum(c for c in calls) <= start_period + 1e-6
    assert result["outcome"] != "timeout" or result["waited_s"] >= round(start_period, 2) - 0.01


def test_progress_says_the_phase_or_the_status_when_no_percentage_is_known():
    assert progress_line({"progress": {"phase": "profiling"}}, 20) == "phase profiling after 20 s"
    assert progress_line({"status": "down"}, 5) == "status down after 5 s"
