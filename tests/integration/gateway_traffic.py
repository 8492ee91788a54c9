"""A client that runs through a gateway while a change runs: completions every `every` seconds on one thread and
streams on another, `stream_pause` seconds apart (back to back by default). Each test gives the two calls for its
server: `complete()` returns the HTTP status (None when no answer came), `stream()` returns True for a whole
stream, else what went wrong with it. The report says when, from the client's start, each failure came (UTC clock
times too, to read beside the gateway's log), so that a failure on CI can be placed in the change's timeline."""
import threading
import time


class Traffic(object):

    def __init__(self, complete, stream, stream_tokens, every=0.1, stream_pause=0):
        self.completions, self.streams = [], []
        self.stream_tokens, self.every, self.stream_pause = stream_tokens, every, stream_pause
        self.stop = threading.Event()
        # (seconds since the start, UTC time, what failed): every completion that was not a 200, every stream cut.
        self.failures = []
        self.started = time.monotonic()
        self.workers = [threading.Thread(target=self._completions, args=(complete,), daemon=True),
                        threading.Thread(target=self._streams, args=(stream,), daemon=True)]

    def _completions(self, complete):
        while not self.stop.is_set():
            status = complete()
            self.completions.append(status)
            if status != 200:
                self._failed("completion: %s" % status)
            time.sleep(self.every)

    def _streams(self, stream):
        while not self.stop.is_set():
            outcome = stream()
            self.streams.append(outcome)
            if outcome is not True:
                self._failed("stream: %s" % outcome)
            time.sleep(self.stream_pause)

    def _failed(self, what):
        self.failures.append((time.monotonic() - self.started, time.strftime("%H:%M:%S", time.gmtime()), what))

    def __enter__(self):
        self.started = time.monotonic()
        for worker in self.workers:
            worker.start()
        time.sleep(2)
        return self

    def __exit__(self, *exc):
        time.sleep(2)
        self.stop.set()
        for worker in self.workers:
            worker.join(90)

    def report(self, what):
        failed = [status for status in self.completions if status != 200]
        cut = [outcome for outcome in self.streams if outcome is not True]
        print("%s through the gateway: %d completions (%d failed), %d streams of %d tokens (%d cut)" % (
            what, len(self.completions), len(failed), len(self.streams), self.stream_tokens, len(cut)))
        for line in self.failure_spans():
            print("  " + line)
        return failed, cut

    def failure_spans(self, gap=3.0):
        """The failures grouped into spans (no gap over `gap` seconds inside one): when each began and ended, how
        many failed, and each distinct failure text."""
        spans = []
        for offset, clock, what in self.failures:
            if spans and offset - spans[-1]["end"] <= gap:
                span = spans[-1]
            else:
                span = {"start": offset, "from": clock, "count": 0, "what": []}
                spans.append(span)
            span.update(end=offset, to=clock, count=span["count"] + 1)
            if what not in span["what"]:
                span["what"].append(what)
        return ["failures %.1f-%.1f s after the start (%s-%s UTC): %d, %s" % (
            span["start"], span["end"], span["from"], span["to"], span["count"], "; ".join(span["what"][:5]))
            for span in spans]
