"""Input files are regular files: checked before anything opens them.

Opening a FIFO for reading blocks until a writer comes (PIL, numpy and zipfile all would wait, and a
decode thread waiting in ``open`` ignores Ctrl-C); a character device such as /dev/zero never ends;
a socket cannot be opened at all. A path that is none of these is refused as an OSError, which every
reader already turns into its own one-line error (an image is skipped and counted).
"""

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
