# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory sizes as operators write them: an integer of MiB, or a number with a unit ("40GiB", "40 GB")."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re

_UNITS = {
    "": 1.0, "mib": 1.0, "m": 1.0,
    "kib": 1.0 / 1024, "k": 1.0 / 1024,
    "gib": 1024.0, "g": 1024.0,
    "tib": 1024.0 * 1024, "t": 1024.0 * 1024,
    "b": 1.0 / (1024 * 1024),
    "kb": 1e3 / 2 ** 20, "mb": 1e6 / 2 ** 20, "gb": 1e9 / 2 ** 20, "tb": 1e12 / 2 ** 20,
}
# ASCII digits and blanks only: int() and float() also read other scripts' digits (٤٠, ４０).
_SIZE = re.compile(r"^[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*([a-zA-Z]*)[ \t]*\Z")


class SizeError(ValueError):
    pass


def to_mib(value, field):
    """MiB (rounded down) from an int (MiB) or a string such as "40GiB", "512 MiB", "80G" (binary), "80GB"
    (decimal). Raises SizeError naming `field` and the accepted forms."""
    if isinstance(value, bool):
        raise SizeError("%s: %r is not a size" % (field, value))
    if isinstance(value, int):
        if value > 10 ** 15:
            raise SizeError("%s: the number is too large to be a size in MiB; give at most 15 digits" % field)
        if value < 0:
            raise SizeError("%s: %d is negative; give MiB as a positive integer or a size such as 40GiB" % (
                field, value))
        return value
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise SizeError("%s: %r is not a size; give MiB as an integer (40960) or a number with a unit "
                        "(40GiB, 512MiB, 80GB)" % (field, value))
    mib = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(mib):
        # float() of a few hundred digits is inf, and int(inf) raises OverflowError.
        raise SizeError("%s: %s is too large to be a size; give MiB as an integer (40960) or a size such as 40GiB"
                        % (field, str(value)[:40] + ("..." if len(str(value)) > 40 else "")))
    return int(mib)
