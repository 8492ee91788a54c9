# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks on what users pass, run before anything is touched. Each refusal names the field, what is wrong with the
value and how to fix it; InputError is the only exception that comes out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus

# An instance name becomes a container name, a unit name and a directory name: a plain token, never a path.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Anything below space, DEL and the C1 controls (a newline in a value written to a unit or env file starts a new
# directive), Unicode line and paragraph separators, and the invisible or reordering marks (zero-width, bidi
# overrides, BOM) that make a value read differently from what it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
# A value argparse would read as an option of its own (a negative number is a value).
_LOOKS_LIKE_FLAG = re.compile(r"-+[A-Za-z_]")
# A GPU as CUDA_VISIBLE_DEVICES and Docker's --gpus take it: an index, or a GPU or MIG UUID, the prefix in any case
# (NVML prints "GPU-", users copy "gpu-" too). Letters are spelled out: re.IGNORECASE would also take non-ASCII
# lookalikes ("m\u0131g-", "\u212a").
_GPU_ID = re.compile(r"(?:[0-9]{1,4}|(?:[Gg][Pp][Uu]|[Mm][Ii][Gg])-[A-Za-z0-9/-]{1,80})\Z")
# Docker's reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest]. An image is an argv word
# of `docker run` in units and probes, so anything else (a leading '-', spaces, a shell word) is refused.
_IMAGE_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*" \
              r"|\[[0-9A-Fa-f:]{2,39}\])(?::[0-9]{1,5})?/"
_IMAGE_PATH = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
_IMAGE = re.compile(r"(?:%s)?%s(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z]"
                    r"[A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z" % (_IMAGE_HOST, _IMAGE_PATH))
_IMAGE_MAX = 512


class InputError(ValueError):
    pass


def _shown(value, limit=60):
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts to text (4300)
        return "an integer of more than 4300 digits"
    return text if len(text) <= limit else text[:limit] + "..."


def instance_name(field, value):
    if not isinstance(value, str) or not _INSTANCE_NAME.match(value) or ".." in value:
        raise InputError("%s: %s is not an instance name; use 1-63 letters, digits, '.', '_' or '-', starting with "
                         "a letter or digit (no '/', '..', spaces or control characters)" % (field, _shown(value)))
    return value


def single_line(field, value):
    """A text that reaches a unit file, an env file, a command line or an HTTP header: no control characters."""
    if value is None:
        return value
    if not isinstance(value, str):
        value = str(value)
    found = _CONTROL.search(value)
    if found:
        raise InputError("%s: the value has a control character (%r at position %d); remove line breaks, tabs and "
                         "other control characters" % (field, found.group(), found.start()))
    return value


def command_word(field, value):
    """A name that becomes one argv word of docker or systemctl (a container, a unit): never read as an option."""
    single_line(field, value)
    if value is not None and str(value).startswith("-"):
        raise InputError("%s: %s starts with '-' and would be read as an option; give the name itself"
                         % (field, _shown(value)))
    return value


def env_name(field, name):
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise InputError("%s: %s is not an environment variable name; use letters, digits and '_', not starting "
                         "with a digit" % (field, _shown(name)))
    return name


def environment(field, env):
    """{NAME: value} written to an env file or a container's environment."""
    for name, value in _container(field, env, dict).items():
        env_name(field, name)
        if isinstance(value, (dict, list)):
            raise InputError("%s: %s must be a text or a number, not a %s" % (field, name, type(value).__name__))
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError("%s: %s is %r; give a finite number" % (field, name, value))
        single_line("%s.%s" % (field, name), value)
    return env


def port(field, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError("%s: %s is not a TCP port; give a number from 1 to 65535" % (field, _shown(value)))
    return value


def number(field, value, minimum=0, maximum=None, above_minimum=False):
    """A finite number within bounds (timeouts, periods, sizes, thresholds); None means not set."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            isinstance(value, float) and not math.isfinite(value):
        raise InputError("%s: %s is not a finite number" % (field, _shown(value)))
    # math.isfinite() of an int past float's range raises OverflowError: ints are compared as they are, and none
    # of the sizes, periods or counts checked here is meaningful past 10**15.
    if abs(value) > 10 ** 15:
        raise InputError("%s: %s is too large; give a number of at most 15 digits" % (field, _shown(value)))
    low = value <= minimum if above_minimum else value < minimum
    if low or (maximum is not None and value > maximum):
        bounds = "above %s" % minimum if above_minimum else "at least %s" % minimum
        if maximum is not None:
            bounds += " and at most %s" % maximum
        raise InputError("%s: %s is out of range; give a number %s" % (field, _shown(value), bounds))
    return value


def image_reference(field, value):
    """A container image as `docker run` takes it: registry/path:tag or @digest."""
    if not isinstance(value, str) or not value or len(value) > _IMAGE_MAX or not _IMAGE.match(value):
        raise InputError("%s: %s is not an image reference; give [registry[:port]/]name[:tag][@sha256:digest] with a "
                         "lower-case name, such as vllm/vllm-openai:v0.33.0" % (field, _shown(value)))
    return value


def _container(field, value, kind):
    """`value` when it is a `kind` (list or dict) or not set; the checks below then walk it safely."""
    if value is None:
        return kind()
    if kind is list and isinstance(value, (list, tuple)) or kind is dict and isinstance(value, dict):
        return value
    wanted = "list" if kind is list else "mapping of names to values"
    raise InputError("%s: give a %s, not a %s" % (field, wanted, type(value).__name__))


def gpu_ids(field, ids):
    """The GPUs as given. One UUID in two cases is one GPU, listed twice (named as NVML prints it)."""
    seen = set()
    for gpu in _container(field, ids, list):
        if not isinstance(gpu, str) or not _GPU_ID.match(gpu):
            raise InputError("%s: %s is not a GPU; give an index (0, 1, ...) or a UUID (GPU-..., MIG-...), one per "
                             "item" % (field, _shown(gpu)))
        key = _docker_gpus.id_key(gpu)
        if key in seen:
            raise InputError("%s: GPU %s is listed twice" % (field, key))
        seen.add(key)
    return ids


def texts(field, values):
    """A list of texts (API keys, paths) that each reach a file, a command line or a header."""
    for index, value in enumerate(_container(field, values, list)):
        single_line("%s[%d]" % (field, index), value)
    return values


def text_mapping(field, values):
    """{text: text} (host path -> container path): keys and values reach command lines and unit files."""
    for key, value in _container(field, values, dict).items():
        single_line(field, key)
        single_line("%s.%s" % (field, key), value)
    return values


def argument_values(field, values):
    """extra_args values become argv words: none may read as a flag or break a unit file's line."""
    for flag, value in _container(field, values, dict).items():
        words = value if isinstance(value, (list, tuple)) else [value]
        for word in words:
            if isinstance(word, (dict, bool)) or word is None:
                continue
            if isinstance(word, float) and not math.isfinite(word):
                raise InputError("%s.%s: %r is not a finite number" % (field, flag, word))
            text = str(word)
            single_line("%s.%s" % (field, flag), text)
            if _LOOKS_LIKE_FLAG.match(text):
                # Only the option's name is shown: what follows it may be a secret (--api-key=...).
                option = re.match(r"-+[A-Za-z0-9_-]*", text).group()
                raise InputError("%s.%s: a value starting with %s would be read as a flag of its own; pass each flag "
                                 "as its own key of %s" % (field, flag, _shown(option), field))
    return values
