"""A model of how docker's CLI reads the value of --gpus (docker/cli opts/gpus.go), used as the test oracle for
our quoting: one CSV record (Go's encoding/csv), key=value fields, a bare field being a count."""


def parse_gpus_value(value):
    """Returns (count, device_ids) as docker's CLI would build the DeviceRequest; raises the daemon's error
    when both are set."""
    fields = _csv_record(value)
    count, device_ids = 0, []
    for field in fields:
        key, sep, val = field.partition("=")
        if not sep:
            count = -1 if field == "all" else int(field)
        elif key == "device":
            device_ids = val.split(",")
        elif key == "count":
            count = -1 if val == "all" else int(val)
    if count and device_ids:
        raise ValueError("cannot set both Count and DeviceIDs on device request")
    return count, device_ids


def _csv_record(text):
    """One record of Go's encoding/csv: comma-separated, fields optionally double-quoted, "" escapes a quote."""
    fields, field, i, quoted_field = [], [], 0, False
    while i <= len(text):
        if i == len(text):
            fields.append("".join(field))
            break
        char = text[i]
        if char == '"' and not field and not quoted_field:
            quoted_field = True
            i += 1
            while True:
                if i >= len(text):
                    raise ValueError('extraneous or missing " in quoted-field')
                if text[i] == '"':
                    if i + 1 < len(text) and text[i + 1] == '"':
                        field.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                field.append(text[i])
                i += 1
            if i < len(text) and text[i] != ",":
                raise ValueError('extraneous or missing " in quoted-field')
            continue
        if char == ",":
            fields.append("".join(field))
            field, quoted_field = [], False
        elif char == '"':
            raise ValueError('bare " in non-quoted-field')
        else:
            field.append(char)
        i += 1
    return fields
