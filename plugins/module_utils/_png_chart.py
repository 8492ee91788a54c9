# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Line charts as PNG files, in pure Python (zlib and struct): the controller needs no imaging library.

A chart shows several series over one time range, each in its own colour, with its title, the y range's bounds,
the start and end times and a legend. A series is a list of (time, value) points; a point that is not a finite
number, or a gap longer than `max_gap` seconds between two points, breaks the line instead of bridging it, so
that missing data looks missing. Any float is accepted: NaN and infinities are skipped, and values near the
float range's ends are scaled without overflow.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import struct
import sys
import time
import zlib

from ansible_collections.inferops.vllm.plugins.module_utils import _png_font

WIDTH = 640
HEIGHT = 300
BACKGROUND = (255, 255, 255)
AXIS = (90, 90, 90)
TEXT = (30, 30, 30)
GRID = (228, 228, 228)
# Distinct on white and for the common colour-vision deficiencies (Okabe and Ito's palette, then darker tones).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (120, 60, 150), (0, 0, 0), (150, 75, 0), (100, 100, 180))
_LEFT, _RIGHT, _TOP = 62, 12, 20
_MAX_FLOAT = sys.float_info.max


class Canvas(object):
    """An RGB image held as one bytearray; drawing outside it is ignored."""

    def __init__(self, width, height, colour=BACKGROUND):
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(colour) * (width * height))

    def set(self, x, y, colour):
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = (y * self.width + x) * 3
            self.pixels[offset:offset + 3] = bytes(colour)

    def get(self, x, y):
        offset = (y * self.width + x) * 3
        return tuple(self.pixels[offset:offset + 3])

    def hline(self, x0, x1, y, colour):
        for x in range(x0, x1 + 1):
            self.set(x, y, colour)

    def vline(self, x, y0, y1, colour):
        for y in range(y0, y1 + 1):
            self.set(x, y, colour)

    def line(self, x0, y0, x1, y1, colour):
        """Bresenham's line, both ends included."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, colour)
            if x0 == x1 and y0 == y1:
                return
            doubled = 2 * err
            if doubled >= dy:
                err += dy
                x0 += sx
            if doubled <= dx:
                err += dx
                y0 += sy

    def text(self, x, y, text, colour=TEXT):
        for index, char in enumerate(text):
            left = x + index * _png_font.ADVANCE
            for dx, dy in _png_font.glyph(char):
                self.set(left + dx, y + dy, colour)

    def png(self):
        rows = bytearray()
        stride = self.width * 3
        for y in range(self.height):
            rows.append(0)  # filter type None: the pixels compress well enough as they are
            rows += self.pixels[y * stride:(y + 1) * stride]
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(rows), 9)) \
            + _chunk(b"IEND", b"")


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def value_range(series, include_zero=False):
    """(low, high) over every finite value, widened so that low < high; None when there is none."""
    values = [v for _label, points in series for _t, v in points if finite(v)]
    if not values:
        return None
    low, high = float(min(values)), float(max(values))
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    if not _fraction_span(low, high) > 0:
        # A constant series sits in the middle of a range around it rather than on an axis.
        pad = abs(low) * 0.1 if low else 1.0
        low, high = max(low - pad, -_MAX_FLOAT), min(high + pad, _MAX_FLOAT)
        if not _fraction_span(low, high) > 0:  # a value so small that a tenth of it rounds to nothing
            low, high = low - 1.0, high + 1.0
    return low, high


def _fraction_span(low, high):
    # Halves: high - low overflows to infinity when the two are near opposite ends of the float range.
    return high / 2 - low / 2


def fraction(value, low, high):
    """Where `value` lies between low and high, from 0 to 1 (clamped)."""
    span = _fraction_span(low, high)
    if not span > 0:
        return 0.5
    share = (value / 2 - low / 2) / span
    return min(1.0, max(0.0, share)) if math.isfinite(share) else 0.5


def format_value(value):
    """A bound's label: at most 9 characters, in the font's characters."""
    if value == 0:
        return "0"
    text = "%.3g" % value
    if len(text) > 9:
        text = "%.1e" % value
    return text


def format_time(epoch):
    try:
        return time.strftime("%H:%M", time.gmtime(epoch))
    except (OverflowError, ValueError, OSError):
        return "?"


def infer_gap(series):
    """2.5 times the smallest interval between two points of a series: a longer one is missing data."""
    steps = [b[0] - a[0] for _label, points in series for a, b in zip(points, points[1:]) if b[0] > a[0]]
    return 2.5 * min(steps) if steps else None


def layout(series, width=WIDTH, height=HEIGHT):
    """(left, right, top, bottom) of the plot area: the legend's rows take the space under it."""
    return _LEFT, width - _RIGHT, _TOP, height - 24 - 11 * len(_legend_rows(series, width))


def render(title, series, start, end, max_gap=None, include_zero=False, width=WIDTH, height=HEIGHT):
    """The PNG bytes of a chart of `series`, a list of (label, [(time, value), ...]), from `start` to `end`
    (seconds since the epoch). Points outside [start, end] and values that are not finite are left out."""
    canvas = Canvas(width, height)
    legend_rows = _legend_rows(series, width)
    left, right, top, bottom = layout(series, width, height)
    canvas.text(4, 5, _fit(title, (width - 8) // _png_font.ADVANCE))
    if not (finite(start) and finite(end)) or end <= start:
        start, end = 0.0, 1.0
    if max_gap is None:
        max_gap = infer_gap(series)
    bounds = value_range(series, include_zero)
    for y in (top, (top + bottom) // 2, bottom):
        canvas.hline(left, right, y, GRID)
    canvas.vline(left - 1, top, bottom, AXIS)
    canvas.hline(left - 1, right, bottom + 1, AXIS)
    canvas.text(4, bottom + 6, format_time(start))
    end_label = format_time(end) + " UTC"
    canvas.text(right - _png_font.text_width(end_label), bottom + 6, end_label)
    if bounds is None:
        message = "no data in this range"
        canvas.text((left + right - _png_font.text_width(message)) // 2, (top + bottom) // 2 - 3, message)
    else:
        low, high = bounds
        canvas.text(4, top, format_value(high))
        canvas.text(4, bottom - _png_font.HEIGHT + 1, format_value(low))
        for index, (_label, points) in enumerate(series):
            _plot(canvas, points, PALETTE[index % len(PALETTE)], (left, right, top, bottom), (start, end),
                  (low, high), max_gap)
    _legend(canvas, series, legend_rows, height)
    return canvas.png()


def _plot(canvas, points, colour, box, times, bounds, max_gap):
    left, right, top, bottom = box
    runs, run, previous_t = [], [], None
    for t, value in points:
        if not (finite(t) and finite(value)) or not times[0] <= t <= times[1]:
            run, previous_t = _close(runs, run), None
            continue
        if previous_t is not None and max_gap is not None and t - previous_t > max_gap:
            run = _close(runs, run)
        x = left + int(round(fraction(t, *times) * (right - left)))
        y = bottom - int(round(fraction(value, *bounds) * (bottom - top)))
        run.append((x, y))
        previous_t = t
    _close(runs, run)
    for run in runs:
        if len(run) == 1:
            # A point with no neighbour to join is drawn as a dot, so that a lone sample still shows.
            x, y = run[0]
            for dx in (0, 1):
                for dy in (0, 1):
                    canvas.set(min(x + dx, right), max(y - dy, top), colour)
        for (x0, y0), (x1, y1) in zip(run, run[1:]):
            canvas.line(x0, y0, x1, y1, colour)


def _close(runs, run):
    if run:
        runs.append(run)
    return []


def _legend_rows(series, width):
    """The series' indexes, in rows that fit the chart's width."""
    rows, row, used = [], [], 4
    for index, (label, _points) in enumerate(series):
        entry = 12 + _png_font.text_width(_fit(label, 30)) + 10
        if row and used + entry > width - 4:
            rows.append(row)
            row, used = [], 4
        row.append(index)
        used += entry
    if row:
        rows.append(row)
    return rows[:4]


def _legend(canvas, series, rows, height):
    for number, row in enumerate(rows):
        y = height - 12 - 11 * (len(rows) - 1 - number)
        x = 4
        for index in row:
            label = _fit(series[index][0], 30)
            colour = PALETTE[index % len(PALETTE)]
            for dy in range(2, 5):
                canvas.hline(x, x + 8, y + dy, colour)
            canvas.text(x + 12, y, label)
            x += 12 + _png_font.text_width(label) + 10


def _fit(text, limit):
    """`text` cut to at most `limit` characters, anything but printable ASCII shown as '?'."""
    text = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return text if len(text) <= limit else text[:max(0, limit - 3)] + "..."
