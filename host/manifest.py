"""Self-describing artifacts: atomic writes, sha256 and the JSON manifest every stage writes.

An artifact directory holds one manifest (``run.json``, ``export.json``, ``manifest.json``)
that records what produced it, its inputs, its parameters and the sha256 of every file it
describes. Loading verifies the hashes, so a tampered or half-copied artifact is refused with
a message naming the file, and a stage can skip its work when its output already matches.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time

from .errors import BnnError
from .inputs import loads_json, regular_file

MANIFEST_FORMAT = "bnn-transfer/manifest/v1"
MAX_JSON_BYTES = 64 << 20  # far above any manifest or folding file this flow writes
# Sibling names of an output ``X``: ``.X.lock`` (held while a command writes X) and ``.X.bnn-*``
# (temporary files and directories of the command writing X). Holding the lock makes every
# ``.X.bnn-*`` that exists a leftover of a killed run: nobody else may be writing X.
_LOCK_SUFFIX = ".lock"
_TMP_TAG = ".bnn-"
_held_locks = {}


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(regular_file(path), "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


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
        raise _named(e, tmp, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _named(e, tmp, path):
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


def package_versions(*packages):
    """{"python": version, package: installed version or None}: what every manifest records as "versions"."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


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


def _refuse_foreign(path):
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise BnnError("%s: exists and is not a directory; refusing to replace it (choose another output)" % path)
    if os.listdir(path) and not _manifests_in(path):
        raise BnnError("%s: exists, is not empty and holds no bnn-transfer manifest; refusing to replace it "
                       "(choose another output or empty it)" % path)


def check_replaceable(path, manifest_name, kind):
    """Refuse (BnnError) unless ``path`` is absent, an empty directory, or an artifact this flow wrote.

    An artifact qualifies when ``path/manifest_name`` is a bnn-transfer manifest of ``kind`` and
    every file under ``path`` is the manifest, listed in its ``files`` or ``unhashed``, or a
    Python/Jupyter cache: replacing it then deletes nothing the flow did not write.
    """
    path = os.path.abspath(os.fspath(path))
    _refuse_foreign(path)
    if not os.path.lexists(path) or not os.listdir(path):
        return
    where = os.path.join(path, manifest_name)
    what = "a %r artifact written by this flow (no %s of that kind in it)" % (kind, manifest_name)
    try:
        m = _load_json(where)
    except (OSError, ValueError):
        m = None
    if not (isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT and m.get("kind") == kind):
        raise BnnError("%s: exists and is not %s; refusing to replace it (choose another output or empty it)"
                       % (path, what))
    ours = {manifest_name}
    for key in ("files", "unhashed"):
        listed = m.get(key) or {}
        ours.update(n for n in listed if isinstance(n, str))
    for rel in _all_entries(path):
        if rel not in ours and not _is_cache(rel):
            raise BnnError("%s: was not written by this flow (not in %s); refusing to replace %s (move it "
                           "out first or choose another output)" % (os.path.join(path, rel), manifest_name, path))


def check_replaceable_file(path, load, what):
    """Refuse (BnnError) to replace an existing file ``load`` (a loader raising BnnError) does not accept."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        raise BnnError("%s: is a directory; expected the %s file to write" % (path, what))
    try:
        load(path)
    except BnnError:
        raise BnnError("%s: exists and is not a %s written by this flow; refusing to replace it (choose another "
                       "output)" % (path, what)) from None


def _all_entries(root):
    """Relative paths ('/'-separated) of everything under ``root`` but directories; links not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def _is_cache(rel):
    parts = rel.split("/")
    return ("__pycache__" in parts[:-1] and rel.endswith(".pyc")) or ".ipynb_checkpoints" in parts[:-1]


def _exchange(a, b):
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


def _manifests_in(root):
    """[(file name, kind)] of the bnn-transfer manifests at the top level of ``root``."""
    found = []
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        if not name.endswith(".json") or not os.path.isfile(p):
            continue
        try:
            m = _load_json(p)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT:
            found.append((name, m.get("kind")))
    return found


@contextlib.contextmanager
def atomic_dir(path):
    """Build a directory under a temporary name and swap it in only when the block succeeds.

    Used by stages whose output is a whole directory (export, deploy bundle): a failed or killed
    run never leaves a directory that looks valid, and the earlier artifact stays until the new
    one is complete. The block writes one manifest at the top level; an existing ``path`` is
    replaced only when ``check_replaceable`` allows it for that manifest's name and kind (a
    directory holding no manifest at all is refused before the block runs). A second writer of
    ``path`` is refused (``output_lock``).
    """
    path = os.path.abspath(os.fspath(path))
    with output_lock(path):
        _refuse_foreign(path)  # now, not after the block's (possibly long) work
        tmp = make_temp_dir(path, "tmp-")
        try:
            yield tmp
            written = _manifests_in(tmp)
            if len(written) != 1:
                raise RuntimeError("atomic_dir: %s holds %d manifests, expected one" % (tmp, len(written)))
            check_replaceable(path, *written[0])
            if os.path.isdir(path):
                if not _exchange(tmp, path):
                    old = make_temp_dir(path, "old-")
                    os.rmdir(old)
                    os.replace(path, old)
                    os.replace(tmp, path)
                    tmp = old
            else:
                os.replace(tmp, path)
        except OSError as e:
            raise _named(e, tmp, path) from None
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)


def _load_json(path):
    """json.load of a file this flow writes (small); a huge or absurdly nested one is a ValueError."""
    with open(regular_file(path), "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError("larger than %d MB" % (MAX_JSON_BYTES >> 20))
    return loads_json(data)


def read_json(path, what="file"):
    try:
        return _load_json(path)
    except FileNotFoundError:
        raise BnnError("%s: %s not found" % (path, what)) from None
    except (OSError, ValueError) as e:
        raise BnnError("%s: cannot read %s (%s)" % (path, what, e)) from None


def hash_files(root, names):
    """sha256 of each file, keyed by its path relative to ``root`` (always with '/')."""
    return {n.replace(os.sep, "/"): sha256_file(os.path.join(root, n)) for n in sorted(names)}


def list_files(root, exclude=()):
    """Every regular file under ``root``, relative, sorted; ``exclude`` are relative names to skip."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or fn.endswith(".pyc"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            if rel not in exclude:
                out.append(rel)
    return sorted(out)


def _program():
    """How the running command was invoked: "python -m train" rather than "__main__.py"."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "__main__.py":
        return "python -m " + os.path.basename(os.path.dirname(os.path.abspath(script)))
    return os.path.basename(script)


def new_manifest(stage, kind, params=None, inputs=None, **fields):
    """The common header of every manifest: who made it, from what, with which parameters."""
    m = {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([_program()] + sys.argv[1:]),
        "params": params or {},
        "inputs": inputs or {},
        "files": {},
    }
    m.update(fields)
    return m


def finalize_manifest(root, manifest, name, files=None):
    """Hash ``files`` (default: everything under root but the manifest) and write it atomically."""
    if files is None:
        files = list_files(root, exclude=(name,))
    manifest["files"] = hash_files(root, files)
    # what the stage wrote without hashing it (e.g. notebooks meant to be edited): still its own,
    # so a later run may replace it (check_replaceable)
    unhashed = sorted(set(_all_entries(root)) - set(manifest["files"]) - {name})
    if unhashed:
        manifest["unhashed"] = [n for n in unhashed if not _is_cache(n)]
    write_json_atomic(os.path.join(root, name), manifest)
    return manifest


def load_manifest(root, name, kind=None):
    """Read ``root/name`` and check the sha256 of every file it lists; raise BnnError on mismatch."""
    path = os.path.join(root, name)
    m = read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise BnnError("%s: not a bnn-transfer manifest (format %r)" % (path, found))
    if kind is not None and m.get("kind") != kind:
        raise BnnError("%s: is a %r manifest, expected %r" % (path, m.get("kind"), kind))
    verify_files(root, m, path)
    return m


def verify_files(root, manifest, where):
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BnnError("%s: 'files' must map file names to sha256 digests, got a %s" % (where, type(files).__name__))
    for rel, digest in sorted(files.items(), key=lambda kv: str(kv[0])):
        p = member_path(root, rel, where)
        try:
            actual = sha256_file(p)
        except OSError as e:
            raise BnnError("%s: cannot read a file %s lists (%s)" % (p, where, e.strerror or e)) from None
        if not isinstance(digest, str) or actual != digest:
            raise BnnError("%s: sha256 does not match %s (file changed or corrupt)" % (p, where))


def member_path(root, rel, where):
    """The absolute path of ``rel``, a file a manifest (``where``) names inside ``root``.

    BnnError unless ``rel`` is a normalised relative path ('/'-separated, no '.', '..' or empty
    parts) that stays inside ``root`` after resolving symlinks and names a regular file: a
    manifest never makes a command read outside its own artifact.
    """
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise BnnError("%s: %r is not a relative path inside %s" % (where, rel, root))
    p = os.path.join(root, *parts)
    real_root, real = os.path.realpath(root), os.path.realpath(p)
    if os.path.commonpath([real_root, real]) != real_root:
        raise BnnError("%s: file listed in %s resolves outside %s (to %s)" % (p, where, root, real))
    if not os.path.exists(real):
        raise BnnError("%s: file listed in %s is missing" % (p, where))
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise BnnError("%s: file listed in %s is not a regular file" % (p, where))
    return p


def manifest_digest(root, name):
    """sha256 of a manifest file: what a downstream artifact records as its input."""
    return sha256_file(os.path.join(root, name))
