# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU IDs for Docker, quoted correctly for each consumer.

docker's CLI parses the value of ``--gpus`` as ONE CSV record, so ``device=4,5`` becomes the two fields
``device=4`` and ``5``, and the daemon refuses it ("cannot set both Count and DeviceIDs on device request").
The value must itself carry the double quotes: the argv element is ``"device=4,5"``; in a shell that is
``'"device=4,5"'``; in a systemd ExecStart= line, systemd's own quoting applies. The Docker Engine API takes
the IDs as a list (DeviceRequests) and needs no quoting at all.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.inferops.vllm.plugins.module_utils import _systemd

# A GPU index, a GPU UUID, or a MIG device UUID (current "MIG-<uuid>" and legacy "MIG-GPU-<uuid>/<gi>/<ci>"), in the
# canonical form (see canonical_id): the prefix upper case, the hex digits lower case.
_GPU_ID = re.compile(
    r"^(?:[0-9]{1,3}"
    r"|GPU-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"
    r"|MIG-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"
    r"|MIG-GPU-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}/[0-9]+/[0-9]+)$"
)
# Only ASCII letters fold: with Unicode case folding, "m\u0131g-" (a dotless i, whose upper case is "I") would
# name a real MIG device.
_UUID_PREFIX = re.compile(r"(MIG-GPU-|GPU-|MIG-)(.*)\Z", re.IGNORECASE | re.ASCII | re.DOTALL)


def canonical_id(name):
    """A GPU or MIG UUID in the form NVML and nvidia-smi print it: "GPU-"/"MIG-" followed by lower-case hex. Users
    copy UUIDs from other tools in other cases ("GPU-6F4A...", "gpu-6f4a..."); they name the same GPU. Anything that
    is not text starting with a UUID prefix (an index, a non-string) is returned unchanged."""
    if not isinstance(name, str):
        return name
    match = _UUID_PREFIX.match(name)
    if not match:
        return name
    return match.group(1).upper() + match.group(2).lower()


def id_key(name):
    """What two GPU names are compared by: a UUID regardless of case, an index as its text. None stays None."""
    if name is None:
        return None
    return str(canonical_id(name))


def device_keys(device):
    """The names an NVML device (a dict with "index" and "uuid") answers to, as id_key gives them: its index and its
    UUID. A name n names the device when id_key(n) is one of them."""
    return id_key(device.get("index")), id_key(device.get("uuid"))


class GpuIdError(ValueError):
    """A GPU ID that is not an index or a GPU/MIG UUID."""


def normalize_ids(ids):
    """The IDs as strings, checked, UUIDs in their canonical form (canonical_id). Raises GpuIdError naming the first
    bad one."""
    if isinstance(ids, (str, int)):
        ids = [ids]
    if not ids:
        raise GpuIdError("no GPU IDs given: pass a list of indices (e.g. [4, 5]) or GPU UUIDs")
    checked = []
    for item in ids:
        text = canonical_id(str(item).strip())
        if isinstance(item, bool) or not _GPU_ID.match(text):
            raise GpuIdError(
                "%r is not a GPU ID: use an index (0-999), a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) "
                "or a MIG UUID" % (item,))
        checked.append(text)
    return checked


def device_requests(ids):
    """DeviceRequests for the Docker Engine API / SDK / community.docker: no CSV parser, no quoting."""
    return [{"driver": "nvidia", "device_ids": normalize_ids(ids), "capabilities": [["gpu"]]}]


def gpus_argv(ids):
    """The single argv element for ``docker run --gpus``: the quotes are part of the value."""
    return '"device=%s"' % ",".join(normalize_ids(ids))


def gpus_shell(ids):
    """The same value quoted for a POSIX shell, for humans and scripts."""
    return "'%s'" % gpus_argv(ids)


def gpus_systemd(ids):
    """The same value as one word of a systemd ExecStart= line (systemd unquotes it to the argv element)."""
    return _systemd.quote(gpus_argv(ids))
