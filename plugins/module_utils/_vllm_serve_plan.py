# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What vllm_serve does to an instance, decided from the wanted state and the actual one alone: pure functions, so
that check mode, the interrupts result and the GPU checks all read the same plan the real run executes.

Actions, always in this order: pull (docker), remove (a stale container goes, stopped first when running; for
state=absent, the container or the unit goes), create (docker: a new container; units: the unit file written and systemd reloaded), then one of start, stop or
restart."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# Actions that leave the instance not running at some point: a caller drains a running instance before them.
INTERRUPTING = ("remove", "stop", "restart")
# Actions after which this instance's process runs anew on its GPUs.
STARTING = ("start", "restart")
SHAPING = ("pull", "remove", "create")


class Refused(Exception):
    """vllm_serve refuses to go on; the message says why and what to change."""


def lifecycle(kind, state, exists, running, current, files_changed):
    """The actions that bring the instance to `state` (present, started, stopped, restarted or absent).

    kind: docker, or unit (the systemd and venv backends). exists, running: the actual instance. current: its
    configuration matches the wanted one. files_changed: its secrets or env file changed, which it reads at start."""
    if state == "absent":
        return ["remove"] if exists else []
    if kind == "docker":
        if not exists or not current:
            # A container's configuration is fixed at creation: a stale one is replaced.
            return (["remove"] if exists else []) + ["create"] + ([] if state == "stopped" else ["start"])
        if state == "started" and not running:
            return ["start"]
        if state == "stopped" and running:
            return ["stop"]
        if state == "restarted" or (files_changed and running):
            return ["restart"]
        return []
    actions = [] if exists and current else ["create"]
    if state == "stopped":
        return actions + (["stop"] if running else [])
    if state == "restarted" or (running and (bool(actions) or files_changed)):
        return actions + ["restart"]
    if not running and (state == "started" or bool(actions)):
        return actions + ["start"]
    return actions


def with_pull(actions, pull, image_present, image):
    """Docker's actions with the image's pull in front: a missing image is pulled for a new container (refused with
    pull=never); pull=always pulls on every run."""
    if "create" in actions and not image_present:
        if pull == "never":
            raise Refused("image %s is not on this host and pull is never" % image)
        return ["pull"] + actions
    if pull == "always":
        return ["pull"] + actions
    return actions


def changes(actions):
    """Whether the actions change the instance: pull=always alone refreshes the image, which is not a change."""
    return any(action != "pull" for action in actions)


def interrupts(actions, running):
    """Whether the actions stop, restart or recreate a running instance; starting a stopped one interrupts nothing."""
    return bool(running) and any(action in INTERRUPTING for action in actions)


def starts(actions):
    return any(action in STARTING for action in actions)


def changed_fields(before, after):
    """The names of the fields whose values differ between two summaries, sorted."""
    return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))


UNIT_HASH = re.compile(r"config-hash: (\S+)")


def unit_fields(content):
    """A unit file as fields to compare: its directives by name (repeated ones in order) and the config hash of its
    header comment; an empty mapping for no file."""
    fields = {}
    for line in (content or "").splitlines():
        found = UNIT_HASH.search(line) if line.startswith("#") else None
        if found:
            fields["config_hash"] = found.group(1)
        elif "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            fields.setdefault(key.strip(), []).append(value)
    return fields
