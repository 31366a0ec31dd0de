"""Writing outputs safely: a file or a folder appears complete or not at all, one writer at a time.

Files are written under a temporary name and renamed (:func:`atomic_path`); a command holds an
``flock`` on what it writes (:func:`output_lock`), which the kernel drops when the holder dies, and the
next writer removes what a killed one left. Folders are swapped in whole by :func:`manifest.atomic_dir`,
which adds the manifests' rule of what may be replaced.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile

from .errors import BnnError

# Sibling names of an output ``X``: ``.X.lock`` (held while a command writes X) and ``.X.bnn-*``
# (temporary files and directories of the command writing X). Holding the lock makes every
# ``.X.bnn-*`` that exists a leftover of a killed run: nobody else may be writing X.
_LOCK_SUFFIX = ".lock"
_TMP_TAG = ".bnn-"
_held_locks = {}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    A crash or exception leaves the previous file (or nothing) in place, never a half-written one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + _TMP_TAG + "tmp-")
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None  # not the random temporary name
    os.close(fd)
    # mkstemp creates 0600; give the file the mode a plain open() would (on a board, root may write
    # what the notebook user reads).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise named_error(e, tmp, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def named_error(e, tmp, path):
    """``e`` naming the output the user asked for: a full disk names no file, a temporary name means nothing."""
    name = os.fsdecode(e.filename) if e.filename is not None else None
    if name is None or name == tmp:
        name = path
    elif name.startswith(tmp + os.sep):
        name = path + name[len(tmp):]
    return OSError(e.errno, e.strerror or str(e), name)


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path, obj):
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def save_npz_atomic(path, arrays, compressed=False):
    """``np.savez(path, **arrays)`` (or savez_compressed), durable and all-or-nothing like write_bytes_atomic."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as tmp:
        # a file object, because np.savez appends ".npz" to a name that lacks it
        with open(tmp, "wb") as f:
            save(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def _sibling(path, suffix):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + suffix)


@contextlib.contextmanager
def output_lock(path):
    """Hold an exclusive lock on the output ``path`` (file or directory) while the block runs.

    A second command writing the same output gets a one-line BnnError instead of interleaving
    its writes. The lock is ``flock`` on a sibling ``.<name>.lock``, so the kernel releases it
    when the holder dies, even by kill -9. On entry, temporary directories a killed writer of
    ``path`` left behind are removed (or, for an artifact moved aside mid-swap, put back).
    Re-entrant within one process.
    """
    import fcntl

    path = os.path.abspath(os.fspath(path))
    if path in _held_locks:
        _held_locks[path] += 1
        try:
            yield
        finally:
            _held_locks[path] -= 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = _sibling(path, _LOCK_SUFFIX)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BnnError("%s: another command is writing it right now (lock %s held); wait for it or "
                           "choose another output" % (path, lock)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder unlinked it between our open and flock: take the new one
            break
        os.close(fd)
    _held_locks[path] = 1
    try:
        _clean_stale(path)
        yield
    finally:
        del _held_locks[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # before unlocking: a waiter that opened it sees a stale inode and retries
        os.close(fd)


def _clean_stale(path):
    parent, prefix = os.path.dirname(path), "." + os.path.basename(path) + _TMP_TAG
    stale = [os.path.join(parent, n) for n in sorted(os.listdir(parent)) if n.startswith(prefix)]
    if os.path.isdir(path) and not os.path.islink(path):  # atomic_path's temporary files inside it
        stale += [os.path.join(path, n) for n in sorted(os.listdir(path))
                  if n.startswith(".") and _TMP_TAG + "tmp-" in n]
    for p in stale:
        name = os.path.basename(p)
        if name.startswith(prefix + "old-") and not os.path.lexists(path):
            os.replace(p, path)  # killed between moving the artifact aside and putting the new one in
        elif os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)


def make_temp_dir(path, tag):
    """A fresh hidden directory next to ``path`` (``.<name>.bnn-<tag>XXXX``) with umask permissions.

    Call it while holding ``output_lock(path)``: the next writer of ``path`` then removes it if
    this process dies before it does.
    """
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + _TMP_TAG + tag)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a plain mkdir would follow the umask
    return tmp


def exchange_paths(a, b):
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # filesystem or kernel without exchange
    raise OSError(err, os.strerror(err), b)
