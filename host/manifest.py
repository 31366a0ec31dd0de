"""Self-describing artifacts: atomic writes, sha256 and the JSON manifest every stage writes.

An artifact directory holds one manifest (``run.json``, ``export.json``, ``manifest.json``)
that records what produced it, its inputs, its parameters and the sha256 of every file it
describes. Loading verifies the hashes, so a tampered or half-copied artifact is refused with
a message naming the file, and a stage can skip its work when its output already matches.
"""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

from .errors import BnnError

MANIFEST_FORMAT = "bnn-transfer/manifest/v1"


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    # mkstemp creates 0600; give the file the mode a plain open() would (on a board, root may write
    # what the notebook user reads).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


@contextlib.contextmanager
def atomic_dir(path):
    """Build a directory under a temporary name and swap it in only when the block succeeds.

    Used by stages whose output is a whole directory (export, deploy bundle): a failed run never
    leaves a directory that looks valid. An existing directory at ``path`` is replaced.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        yield tmp
        if os.path.isdir(path):
            old = path + ".old-%d" % os.getpid()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path, what="file"):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
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
    for rel, digest in sorted(manifest.get("files", {}).items()):
        p = os.path.join(root, rel)
        if not os.path.isfile(p):
            raise BnnError("%s: file listed in %s is missing" % (p, where))
        if sha256_file(p) != digest:
            raise BnnError("%s: sha256 does not match %s (file changed or corrupt)" % (p, where))


def manifest_digest(root, name):
    """sha256 of a manifest file: what a downstream artifact records as its input."""
    return sha256_file(os.path.join(root, name))
