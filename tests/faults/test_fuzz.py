"""Fuzzing the loaders and the command lines, as trusted parsers are tested: any input gives a result or
one BnnError (the user's one-line error), never another exception, within a time bound per example.

CI runs a bounded number of examples per loader (the ``ci`` profile); a longer run:
``HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/faults/test_fuzz.py`` (10,000 per loader).
"""

import importlib
import io
import os
import resource
import shutil
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnn_transfer.host.errors import BnnError

# The RSS bound is measured over all of a test's examples: its fixture spans them on purpose.
_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
# ci: the same examples every run, no example database written into the checkout
settings.register_profile("ci", max_examples=60, deadline=2000, derandomize=True, database=None,
                          suppress_health_check=_CHECKS)
settings.register_profile("fuzz", max_examples=10_000, deadline=5000, suppress_health_check=_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MAX_RSS_GROWTH_MB = 256  # over a whole test: a loader that allocates what a header claims would exceed it


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


WORK = tempfile.mkdtemp(prefix="bnn-fuzz-")  # each example overwrites its file here


@pytest.fixture(scope="module", autouse=True)
def _work():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def _file(data, name):
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _only_bnn_errors(load, *args):
    try:
        load(*args)
    except BnnError:
        pass


def _npz(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _head_npz():
    from bnn_transfer.host.heads.head import Head
    from bnn_transfer.host.heads.headfile import save_head

    path = _file(b"", "h.npz")
    save_head(path, Head("float", ["a", "b"], 8, {"W": np.ones((8, 2), np.float32), "b": np.zeros(2, np.float32)}))
    with open(path, "rb") as f:
        return f.read()


VALID = {"head": _head_npz()}


def _mutated(seed_bytes):
    """A valid file with some of its bytes replaced, cut short, or extended: what a bad disk or a crafted
    file looks like, past the format's magic numbers."""
    return st.tuples(st.lists(st.tuples(st.integers(0, len(seed_bytes) - 1), st.integers(0, 255)), max_size=8),
                     st.integers(1, len(seed_bytes) + 16)).map(
        lambda t: _apply(seed_bytes, *t))


def _apply(data, edits, length):
    b = bytearray(data[:length].ljust(length, b"\0"))
    for i, v in edits:
        if i < len(b):
            b[i] = v
    return bytes(b)


@pytest.fixture
def rss_bound():
    start = _peak_mb()
    yield
    assert _peak_mb() - start < MAX_RSS_GROWTH_MB


@given(st.binary(max_size=512) | _mutated(VALID["head"]))
def test_head_loader(rss_bound, data):
    from bnn_transfer.host.heads import load_head

    _only_bnn_errors(load_head, _file(data, "head.npz"))


@given(st.dictionaries(st.sampled_from(["version", "variant", "classes", "feature_width", "meta", "W", "b",
                                        "scale", "bias"]),
                       st.one_of(st.integers(-2, 9), st.text(max_size=20), st.lists(st.integers(-3, 3), max_size=9),
                                 st.lists(st.text(max_size=5), max_size=4), st.floats()), max_size=9))
def test_head_loader_structured(rss_bound, fields):
    from bnn_transfer.host.heads import load_head

    _only_bnn_errors(load_head, _file(_npz({k: np.asarray(v) for k, v in fields.items()}), "head.npz"))


@given(st.binary(max_size=512))
def test_emulator_and_feature_cache_loaders(rss_bound, data):
    from bnn_transfer.host.emulator import load_emulator
    from bnn_transfer.host.features import FeatureStore

    _only_bnn_errors(load_emulator, _file(data, "emulator.npz"))
    _only_bnn_errors(FeatureStore.load, _file(data, "features.npz"))


JSON_TEXT = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=20)


@given(st.one_of(st.binary(max_size=400), JSON_TEXT.map(lambda v: __import__("json").dumps(v).encode()),
                 st.fixed_dictionaries({"format": st.just("bnn-transfer/manifest/v1")}, optional={
                     "kind": st.sampled_from(["bundle", "backbone", 3, None]),
                     "files": JSON_TEXT, "preset": JSON_TEXT, "io": JSON_TEXT, "feature_width": JSON_TEXT,
                     "preprocess": JSON_TEXT}).map(lambda v: __import__("json").dumps(v).encode())))
def test_manifest_and_bundle_loaders(rss_bound, data):
    from bnn_transfer.host.bundle import load_bundle
    from bnn_transfer.host.manifest import load_manifest

    path = _file(data, "manifest.json")
    _only_bnn_errors(load_manifest, os.path.dirname(path), "manifest.json")
    _only_bnn_errors(load_bundle, os.path.dirname(path))


def _png_and_jpeg():
    from PIL import Image

    out = []
    for fmt in ("PNG", "JPEG", "BMP", "GIF"):
        buf = io.BytesIO()
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


IMAGES = _png_and_jpeg()


@given(st.binary(max_size=300) | st.sampled_from(IMAGES).flatmap(_mutated))
def test_image_decoder(rss_bound, data):
    from bnn_transfer.host.preprocess import decode_image, decode_image_bytes

    _only_bnn_errors(decode_image, _file(data, "x.png"))
    _only_bnn_errors(decode_image_bytes, data, "upload")


@given(st.binary(max_size=300))
def test_zip_and_npz_checks(rss_bound, data):
    from bnn_transfer.host.npzfile import check_npz

    try:
        check_npz(_file(data, "a.npz"))
    except (ValueError, zipfile.BadZipFile, BnnError):  # what its callers turn into their one line
        pass


STAGES = ("train", "export", "build_fpga", "host", "bench", "demo")


def _vocabulary():
    words = set()
    for stage in STAGES:
        parser = importlib.import_module("bnn_transfer." + stage + ".__main__").build_parser()
        stack = [parser]
        while stack:
            p = stack.pop()
            for action in p._actions:
                words.update(o for o in action.option_strings if o not in ("-h", "--help"))
                if action.choices and not isinstance(action.choices, dict):
                    words.update(str(c) for c in action.choices)
                if isinstance(action.choices, dict):
                    words.update(action.choices)
                    stack.extend(action.choices.values())
    return sorted(words)


WORDS = _vocabulary()
VALUES = st.sampled_from(WORDS) | st.text(max_size=12) | st.sampled_from(["0", "-1", "1e9", "inf", "nan", "x=1",
                                                                          "seed=-1", "", "--", "-"])


@pytest.mark.parametrize("stage", STAGES)
@given(argv=st.lists(VALUES, max_size=8))
def test_command_line_parsing(stage, argv):
    parser = importlib.import_module("bnn_transfer." + stage + ".__main__").build_parser()
    try:
        parser.parse_args(argv)
    except BnnError:
        pass
    except SystemExit as e:  # an abbreviation of --help printed the help
        assert e.code == 0
