"""What the fault tests compare before and after a refused command."""

import os


def snapshot(root):
    """Every path under ``root`` with its bytes (None for folders): nothing added, removed or changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, str(root))] = None if os.path.isdir(p) else open(p, "rb").read()
    return out
