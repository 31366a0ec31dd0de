"""Self-describing artifacts: sha256 and the JSON manifest every stage writes (atomic writes and the
output lock: ``host.atomic``).

An artifact directory holds one manifest (``run.json``, ``export.json``, ``manifest.json``)
that records what produced it, its inputs, its parameters and the sha256 of every file it
describes. Loading verifies the hashes, so a tampered or half-copied artifact is refused with
a message naming the file, and a stage can skip its work when its output already matches.
"""

import contextlib
import hashlib
import os
import shutil
import stat
import sys
import time

from .atomic import exchange_paths, make_temp_dir, named_error, output_lock, write_json_atomic
from .errors import BnnError
from .inputs import loads_json, regular_file

MANIFEST_FORMAT = "bnn-transfer/manifest/v1"
MAX_JSON_BYTES = 64 << 20  # far above any manifest or folding file this flow writes
def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(regular_file(path), "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


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
                if not exchange_paths(tmp, path):
                    old = make_temp_dir(path, "old-")
                    os.rmdir(old)
                    os.replace(path, old)
                    os.replace(tmp, path)
                    tmp = old
            else:
                os.replace(tmp, path)
        except OSError as e:
            raise named_error(e, tmp, path) from None
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


def load_manifest(root, name, kind=None, optional=None):
    """Read ``root/name`` and check the sha256 of every file it lists; raise BnnError on mismatch.

    ``optional`` names a folder (e.g. a deploy bundle's ``pc``) whose listed files may be absent
    from this copy of the artifact; those present are checked like the others.
    """
    path = os.path.join(root, name)
    m = read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise BnnError("%s: not a bnn-transfer manifest (format %r)" % (path, found))
    if kind is not None and m.get("kind") != kind:
        raise BnnError("%s: is a %r manifest, expected %r" % (path, m.get("kind"), kind))
    verify_files(root, m, path, optional)
    return m


def verify_files(root, manifest, where, optional=None):
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BnnError("%s: 'files' must map file names to sha256 digests, got a %s" % (where, type(files).__name__))
    for rel, digest in sorted(files.items(), key=lambda kv: str(kv[0])):
        if optional and is_absent_member(root, rel, optional):
            continue
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


def is_absent_member(root, rel, folder):
    """True when ``rel`` lies in ``folder`` (a plain relative path, no '..') and nothing is at its place."""
    parts = rel.split("/") if isinstance(rel, str) else []
    inside = len(parts) > 1 and parts[0] == folder and not any(p in ("", ".", "..") for p in parts)
    return inside and not os.path.lexists(os.path.join(root, *parts))


def manifest_digest(root, name):
    """sha256 of a manifest file: what a downstream artifact records as its input."""
    return sha256_file(os.path.join(root, name))
