"""Reads back the PNG files the chart renderer writes, independently of it: chunks and their CRCs, the IHDR
fields, the zlib stream and every PNG row filter (0-4), so that a test can look at pixels."""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Image(object):
    def __init__(self, width, height, rows):
        self.width = width
        self.height = height
        self.rows = rows

    def pixel(self, x, y):
        return tuple(self.rows[y][x * 3:x * 3 + 3])

    def row_pixels(self, y):
        """The pixels of row y, left to right, as pixel() gives them."""
        row = self.rows[y]
        return zip(row[0::3], row[1::3], row[2::3])

    def colours(self):
        found = set()
        for y in range(self.height):
            found.update(self.row_pixels(y))
        return found

    def count(self, colour):
        return sum(list(self.row_pixels(y)).count(colour) for y in range(self.height))


def chunks(data):
    assert data[:8] == SIGNATURE, "not a PNG signature: %r" % data[:8]
    offset, found = 8, []
    while offset < len(data):
        length, = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        crc, = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xffffffff, "bad CRC in chunk %r" % kind
        found.append((kind, body))
        offset += 12 + length
    assert offset == len(data), "trailing bytes after the last chunk"
    return found


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode(data):
    """An Image of an 8-bit RGB PNG, after checking its structure."""
    found = chunks(data)
    kinds = [kind for kind, _body in found]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds, kinds
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", found[0][1])
    assert width > 0 and height > 0
    assert (depth, colour_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in found if kind == b"IDAT"))
    stride = width * 3
    assert len(raw) == height * (stride + 1), "IDAT holds %d bytes, not %d" % (len(raw), height * (stride + 1))
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        assert kind in (0, 1, 2, 3, 4), "unknown filter type %d in row %d" % (kind, y)
        if kind == 0:  # None: the row as it is (the renderer's only filter; the byte loop below would keep it)
            rows.append(bytes(line))
            previous = line
            continue
        for i in range(stride):
            left = line[i - 3] if i >= 3 else 0
            up = previous[i]
            corner = previous[i - 3] if i >= 3 else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xff
            elif kind == 2:
                line[i] = (line[i] + up) & 0xff
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xff
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xff
            else:
                assert kind == 0, "unknown filter type %d in row %d" % (kind, y)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, rows)
