"""Input files are regular files: checked before anything opens them.

Opening a FIFO for reading blocks until a writer comes (PIL, numpy and zipfile all would wait, and a
decode thread waiting in ``open`` ignores Ctrl-C); a character device such as /dev/zero never ends;
a socket cannot be opened at all. A path that is none of these is refused as an OSError, which every
reader already turns into its own one-line error (an image is skipped and counted).
"""

import json
import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def regular_file(path):
    """``path`` when it names a regular file (symlinks followed); OSError otherwise, without opening it."""
    mode = os.stat(path).st_mode  # FileNotFoundError / PermissionError pass through as they are
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise OSError("is %s, not a regular file" % kind)
    return path


# Each JSON value costs Python tens of bytes: a 63 MB manifest of small numbers took 1.7 GB to parse,
# beyond a Pynq-Z2's 512 MB. A million values (~100 MB at worst) is far above anything this flow writes.
MAX_JSON_VALUES = 1_000_000


def loads_json(text):
    """``json.loads`` of ``text`` (str or UTF-8 bytes) that refuses, as ValueError, a document of more than
    :data:`MAX_JSON_VALUES` values or nested deeper than Python's recursion allows, before building it."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    # every value but the first follows a ',' or opens a container: an upper bound, counted in C
    values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if values > MAX_JSON_VALUES:
        raise ValueError("holds up to %d values, more than the %d this flow accepts" % (values, MAX_JSON_VALUES))
    try:
        return json.loads(text if isinstance(text, str) else data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
