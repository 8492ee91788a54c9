"""A client that runs through a gateway while a change runs: completions every `every` seconds on one thread and
streams on another, `stream_pause` seconds apart (back to back by default). Each test gives the two calls for its
server: `complete()` returns the HTTP status (None when no answer came), `stream()` returns True for a whole
stream, else what went wrong with it."""
import threading
import time


class Traffic(object):

    def __init__(self, complete, stream, stream_tokens, every=0.1, stream_pause=0):
        self.completions, self.streams = [], []
        self.stream_tokens, self.every, self.stream_pause = stream_tokens, every, stream_pause
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._completions, args=(complete,), daemon=True),
                        threading.Thread(target=self._streams, args=(stream,), daemon=True)]

    def _completions(self, complete):
        while not self.stop.is_set():
            self.completions.append(complete())
            time.sleep(self.every)

    def _streams(self, stream):
        while not self.stop.is_set():
            self.streams.append(stream())
            time.sleep(self.stream_pause)

    def __enter__(self):
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
        return failed, cut
