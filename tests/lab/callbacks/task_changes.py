"""A test instrument, not part of the collection: records which tasks changed (or, in check mode, would change)
on each host, one JSON line per playbook run appended to $INFEROPS_TASK_CHANGES. Molecule's `runbooks` scenario
enables it, so that its verify step can compare what `deploy.yml --check` predicted on the fresh hosts with what
the real run then changed (tests/integration/test_runbooks.py)."""

import json
import os

from ansible import context
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_changes"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.changed = {}
        self.playbook = None

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)

    def v2_runner_on_ok(self, result):
        host = result._host.get_name()
        tasks = self.changed.setdefault(host, [])
        if result._result.get("changed") and result._task.get_name() not in tasks:
            tasks.append(result._task.get_name())

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("INFEROPS_TASK_CHANGES")
        if not path:
            return
        record = {"playbook": self.playbook, "check": bool(context.CLIARGS.get("check")),
                  "changed": self.changed, "hosts": sorted(stats.processed)}
        with open(path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
