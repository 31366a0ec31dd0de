"""The deploy bundle: the directory ``build_fpga`` writes and every host command reads.

``load_bundle(path, board=None)`` checks the sha256 of every file the manifest lists, validates
the schema below and returns a ``Bundle``; ``check_head_compatible`` refuses a software head that
was trained on features of another backbone, width or preprocessing.

Layout (only ``manifest.json`` and ``emulator.npz`` are required)::

    DEPLOY_DIR/manifest.json          this schema; "files" holds the sha256 of every file below
    DEPLOY_DIR/emulator.npz           host.emulator weights (binary weights, integer thresholds)
    DEPLOY_DIR/bitfile/finn-accel.bit bitstream, with its .hwh next to it under the same name
    DEPLOY_DIR/pc/backbone.onnx       the QONNX graph of the frozen backbone (the onnx backend, PCs only)
    DEPLOY_DIR/...                    report/, driver/, host/, notebooks/, external weights

``pc/`` holds what only a PC reads: the copy on a board leaves it out (it is large: 233 MB of
QONNX graph for the ``paper`` preset). The manifest lists its files all the same; they are
hash-checked where they are present and count as absent where they are not.

``manifest.json`` is a ``host.manifest`` manifest (header fields format, kind="bundle", stage,
created, command, params, inputs, files) with these fields at the top level:

    board            str    our board name ("pynq-z2", ...); ``load_bundle``'s board may be
                            PYNQ's spelling of it ("Pynq-Z2", host.boards)
    part             str    FPGA part number
    clock_mhz        number accelerator clock the build targeted, > 0
    preset           str    model preset ("paper", "z2", "small", "tiny")
    preprocess       dict   {"input_size": int, "resize_longest": int} (host.preprocess)
    feature_width    int    D, the number of binary features per image
    backbone_digest  str    sha256 identifying the frozen backbone; heads record it
    emulator         str    relative path of the emulator weights ("emulator.npz")
    bitfile          str    relative path of the .bit, or null (no synthesis: emulator/onnx only)
    hwh              str    relative path of the .hwh, or null; set exactly when bitfile is, in
                            the same folder with the same stem (pynq looks for it there)
    onnx             str    relative path of the QONNX graph ("pc/backbone.onnx"), or null
                            (an absent bitfile, hwh or onnx field counts as null)
    io               dict   FINN's io_shape_dict, one list entry per accelerator input/output
                            (a feature extractor has exactly one of each):
        idt, odt                      [FINN datatype]; "UINT8" or FINN's "DataType['UINT8']";
                                      idt must be UINT8, odt BIPOLAR or BINARY (0 read as -1)
        ishape_normal                 [[1, H, W, 3]]: NHWC, H = W = preprocess.input_size
        ishape_folded, ishape_packed  [[1, ...]]: the folded shape holds as many values as the
                                      normal one; packed = folded with the last axis in bytes
        oshape_normal                 [[1, ...]] holding feature_width values ([1, D] usually)
        oshape_folded, oshape_packed  [[1, ...]] as for the input
        input_dma_name                ["idma0"]  (FINN-plus's "idma_names" is accepted too)
        output_dma_name               ["odma0"]  (or "odma_names")
        number_of_external_weights    int, or a digit string as finn-plus writes it; default 0
        external_weights              [{"dma": IP name, "file": relative .npy path (uint8 bytes
                                      as FINN writes them to runtime_weights/), "repeats": how
                                      often the stream repeats per image, default 1 (FINN:
                                      H*W of an NHWC external_weights_input_shapes entry)}],
                                      one entry per external weight, started before the run
        runtime_writeable_weights     [{"ip": partition and AXI-lite port ("StreamingDataflowPartition_1/
                                      s_axilite_0"; the pynq backend finds the window under
                                      PYNQ's own name for it), "file": relative path of FINN's .dat file
                                      (one 32-bit hex word per line, as its driver's
                                      runtime_weights/ holds them), "layer": ours}]; default [].
                                      Layers whose on-chip weights (URAM on UltraScale+) the
                                      bitstream cannot initialise: written once at overlay load
        (other keys of FINN's dict, such as num_inputs, are ignored and not kept in Bundle.io)

The first axis of every shape is the batch: 1 here, the batch size at run time. Every file the
manifest names (emulator, bitfile, hwh, onnx, external and runtime weights) must be listed in "files", so
that it is hash-checked. ``Bundle.digest`` is the sha256 of manifest.json itself: it changes
whenever any file changes, which makes it the key for feature caches.
"""

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .artifacts import BUNDLE_MANIFEST, PC_DIR
from .boards import our_board
from .errors import BnnError
from .manifest import load_manifest, manifest_digest
from .packing import DataType, packed_shape
from .preprocess import Preprocess

__all__ = ["BUNDLE_MANIFEST", "BUNDLE_KIND", "PC_DIR", "Bundle", "ExternalWeight", "RuntimeWeight", "load_bundle",
           "check_head_compatible"]

BUNDLE_KIND = "bundle"

# FINN-plus's settings.json names the DMA lists differently from the classic FINN driver.
_DMA_KEY_ALIASES = {"input_dma_name": "idma_names", "output_dma_name": "odma_names"}
_SHAPE_KEYS = ("ishape_normal", "ishape_folded", "ishape_packed", "oshape_normal", "oshape_folded", "oshape_packed")


@dataclass(frozen=True)
class ExternalWeight:
    """A weight stream the accelerator reads from DRAM: the DMA that streams it and its file."""

    dma: str
    path: str
    repeats: int


@dataclass(frozen=True)
class RuntimeWeight:
    """A layer's on-chip weights written over AXI-lite when the overlay loads: the IP and FINN's .dat file."""

    ip: str
    path: str
    layer: str


@dataclass(frozen=True)
class Bundle:
    """A validated deploy bundle; paths are absolute, optional files are None when absent.

    ``io`` is the manifest's io dict normalised: canonical datatype names ("UINT8"), shapes as
    lists of int lists, DMA names under ``input_dma_name``/``output_dma_name``,
    ``number_of_external_weights`` as int. ``manifest`` is the raw manifest.
    """

    root: str
    manifest: Dict[str, Any]
    board: str
    preset: str
    part: str
    clock_mhz: float
    preprocess: Dict[str, int]
    input_shape: Tuple[int, int, int]
    feature_width: int
    backbone_digest: str
    io: Dict[str, Any]
    emulator_path: str
    bitfile_path: Optional[str]
    hwh_path: Optional[str]
    onnx_path: Optional[str]  # None also where the bundle's pc/ was left out (manifest["onnx"] says)
    external_weights: Tuple[ExternalWeight, ...]
    runtime_weights: Tuple[RuntimeWeight, ...]
    digest: str

    def head_meta(self):
        """What a head trained on this bundle's features records, for ``check_head_compatible``."""
        return {
            "feature_width": self.feature_width,
            "preprocess": dict(self.preprocess),
            "backbone_digest": self.backbone_digest,
        }


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


_REQUIRED = object()


class _Reader:
    """Typed access to manifest fields; every error names the manifest and the field."""

    def __init__(self, manifest, path):
        self.m = manifest
        self.path = path

    def error(self, field, what):
        return BnnError("%s: field %r %s" % (self.path, field, what))

    def get(self, field, default=_REQUIRED):
        if field not in self.m:
            if default is _REQUIRED:
                raise BnnError("%s: missing field %r" % (self.path, field))
            return default
        return self.m[field]

    def string(self, field):
        v = self.get(field)
        if not isinstance(v, str) or not v.strip():
            raise self.error(field, "must be a non-empty string, got %r" % (v,))
        return v

    def positive_int(self, field, value):
        if not _is_int(value) or value < 1:
            raise self.error(field, "must be a positive integer, got %r" % (value,))
        return int(value)

    def file(self, field, value, root):
        """A relative path the manifest hash-checks; returns the absolute path."""
        if not isinstance(value, str) or not value:
            raise self.error(field, "must be a relative file path, got %r" % (value,))
        parts = value.split("/")
        if os.path.isabs(value) or ".." in parts:
            raise self.error(field, "must be a path inside the bundle, got %r" % (value,))
        if value not in self.m.get("files", {}):
            raise self.error(field, "names %r, which the manifest's 'files' does not list (so it is not hash-checked)"
                             % value)
        return os.path.join(root, *parts)

    def optional_file(self, field, root):
        v = self.get(field, None)
        return None if v is None else self.file(field, v, root)


def _datatype(r, field, value):
    if not isinstance(value, str):
        raise r.error(field, "must hold a FINN datatype name, got %r" % (value,))
    try:
        return DataType.parse(value)
    except BnnError as e:
        raise r.error(field, "holds an unusable datatype (%s)" % e) from None


def _one(r, io, key):
    """The single entry of the per-stream list ``io[key]`` (one input, one output)."""
    field = "io." + key
    if key not in io:
        alias = _DMA_KEY_ALIASES.get(key)
        if alias is None or alias not in io:
            raise BnnError("%s: missing field %r" % (r.path, field))
        key, field = alias, "io." + alias
    v = io[key]
    if not isinstance(v, list) or len(v) != 1:
        raise r.error(field, "must be a list with one entry (the backbone has one input and one output), got %r" % (v,))
    return v[0]


def _shape(r, io, key):
    field = "io." + key
    s = _one(r, io, key)
    if not isinstance(s, list) or not s or not all(_is_int(d) and d >= 1 for d in s):
        raise r.error(field, "must hold one shape, a list of positive integers, got %r" % (s,))
    if s[0] != 1:
        raise r.error(field, "must have batch size 1 in the manifest, got %r" % (s,))
    return [int(d) for d in s]


def _check_stream(r, prefix, dt, normal, folded, packed):
    """Folded and packed shapes must describe the same values as the normal shape."""
    if int(np.prod(folded)) != int(np.prod(normal)):
        raise r.error("io.%sshape_folded" % prefix, "%r does not hold the %d values of %sshape_normal %r"
                      % (folded, int(np.prod(normal)), prefix, normal))
    want = list(packed_shape(folded, dt))
    if packed != want:
        raise r.error("io.%sshape_packed" % prefix, "%r does not match %sshape_folded %r of %s (expected %r)"
                      % (packed, prefix, folded, dt.name, want))


def _parse_io(r, root, preprocess, feature_width):
    io = r.get("io")
    if not isinstance(io, dict):
        raise r.error("io", "must be a dict (FINN's io_shape_dict), got %s" % type(io).__name__)
    idt = _datatype(r, "io.idt", _one(r, io, "idt"))
    odt = _datatype(r, "io.odt", _one(r, io, "odt"))
    if idt.name != "UINT8":
        raise r.error("io.idt", "must be UINT8 (the accelerator takes raw pixels), got %s" % idt.name)
    if odt.name not in ("BIPOLAR", "BINARY"):
        raise r.error("io.odt", "must be BIPOLAR or BINARY (binary features), got %s" % odt.name)
    shapes = {key: _shape(r, io, key) for key in _SHAPE_KEYS}
    n = preprocess.input_size
    if shapes["ishape_normal"] != [1, n, n, 3]:
        raise r.error("io.ishape_normal", "must be [1, %d, %d, 3] (NHWC RGB, preprocess input_size %d), got %r"
                      % (n, n, n, shapes["ishape_normal"]))
    if int(np.prod(shapes["oshape_normal"])) != feature_width:
        raise r.error("io.oshape_normal", "%r does not hold feature_width = %d values"
                      % (shapes["oshape_normal"], feature_width))
    _check_stream(r, "i", idt, shapes["ishape_normal"], shapes["ishape_folded"], shapes["ishape_packed"])
    _check_stream(r, "o", odt, shapes["oshape_normal"], shapes["oshape_folded"], shapes["oshape_packed"])
    dmas = {}
    for key in ("input_dma_name", "output_dma_name"):
        name = _one(r, io, key)
        if not isinstance(name, str) or not name:
            raise r.error("io." + key, "must hold an IP instance name, got %r" % (name,))
        dmas[key] = name

    count = io.get("number_of_external_weights", 0)
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    if not _is_int(count) or count < 0:
        raise r.error("io.number_of_external_weights", "must be a non-negative integer, got %r" % (count,))
    entries = io.get("external_weights", [])
    if not isinstance(entries, list) or len(entries) != count:
        raise r.error("io.external_weights", "must list %d external weight(s) (number_of_external_weights), got %r"
                      % (count, entries))
    external = []
    for k, e in enumerate(entries):
        field = "io.external_weights[%d]" % k
        if not isinstance(e, dict) or not isinstance(e.get("dma"), str) or not e["dma"]:
            raise r.error(field, "must be {\"dma\": IP name, \"file\": path, \"repeats\": int}, got %r" % (e,))
        repeats = r.positive_int(field + ".repeats", e.get("repeats", 1))
        external.append(ExternalWeight(e["dma"], r.file(field + ".file", e.get("file"), root), repeats))

    entries_rt = io.get("runtime_writeable_weights", [])
    if not isinstance(entries_rt, list):
        raise r.error("io.runtime_writeable_weights", "must be a list, got %r" % (entries_rt,))
    runtime = []
    for k, e in enumerate(entries_rt):
        field = "io.runtime_writeable_weights[%d]" % k
        if not isinstance(e, dict) or not isinstance(e.get("ip"), str) or not e["ip"]:
            raise r.error(field, "must be {\"ip\": IP name, \"file\": path, \"layer\": name}, got %r" % (e,))
        runtime.append(RuntimeWeight(e["ip"], r.file(field + ".file", e.get("file"), root), str(e.get("layer", ""))))

    norm = {key: [shape] for key, shape in shapes.items()}
    norm.update(idt=[idt.name], odt=[odt.name], number_of_external_weights=int(count),
                input_dma_name=[dmas["input_dma_name"]], output_dma_name=[dmas["output_dma_name"]],
                external_weights=[{"dma": e["dma"], "file": e["file"], "repeats": x.repeats}
                                  for e, x in zip(entries, external)],
                runtime_writeable_weights=[{"ip": e["ip"], "file": e["file"], "layer": x.layer}
                                           for e, x in zip(entries_rt, runtime)])
    return norm, tuple(external), tuple(runtime)


def load_bundle(path, board=None):
    """Load and verify the deploy bundle at ``path``; refuse it if built for another ``board``.

    ``board`` is ours or PYNQ's name of the board this runs on (``host.boards.pynq_board()``);
    None skips the check. Raises BnnError (one line, naming the file and field) for a missing or
    tampered file, a manifest that breaks the schema in the module docstring, or a board mismatch.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise BnnError("%s: bundle directory not found" % root)
    manifest = load_manifest(root, BUNDLE_MANIFEST, kind=BUNDLE_KIND, optional=PC_DIR)
    r = _Reader(manifest, os.path.join(root, BUNDLE_MANIFEST))
    bundle_board = r.string("board")
    if board is not None and our_board(board) != bundle_board.strip().lower():
        raise BnnError("%s: bundle was built for board %r, not %r" % (root, bundle_board, str(board).strip()))

    clock = r.get("clock_mhz")
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not clock > 0:
        raise r.error("clock_mhz", "must be a positive number, got %r" % (clock,))
    try:
        pp = Preprocess.from_dict(r.get("preprocess"), where="preprocess")
    except BnnError as e:
        raise BnnError("%s: %s" % (r.path, e)) from None
    feature_width = r.positive_int("feature_width", r.get("feature_width"))
    io, external, runtime = _parse_io(r, root, pp, feature_width)

    bitfile = r.optional_file("bitfile", root)
    hwh = r.optional_file("hwh", root)
    if (bitfile is None) != (hwh is None):
        raise r.error("hwh" if hwh is None else "bitfile", "must be set together with %r"
                      % ("bitfile" if hwh is None else "hwh"))
    if bitfile is not None and os.path.splitext(hwh)[0] != os.path.splitext(bitfile)[0]:
        raise r.error("hwh", "%r must sit next to the bitfile %r with the same name (pynq looks for it there)"
                      % (manifest["hwh"], manifest["bitfile"]))

    return Bundle(
        root=root,
        manifest=manifest,
        board=bundle_board,
        preset=r.string("preset"),
        part=r.string("part"),
        clock_mhz=float(clock),
        preprocess=pp.to_dict(),
        input_shape=(pp.input_size, pp.input_size, 3),
        feature_width=feature_width,
        backbone_digest=r.string("backbone_digest"),
        io=io,
        emulator_path=r.file("emulator", r.get("emulator"), root),
        bitfile_path=bitfile,
        hwh_path=hwh,
        onnx_path=_present(r.optional_file("onnx", root)),
        external_weights=external,
        runtime_weights=runtime,
        digest=manifest_digest(root, BUNDLE_MANIFEST),
    )


def _present(path):
    # load_manifest refused every missing file outside pc/: one missing here is a board's copy
    return path if path is not None and os.path.exists(path) else None


def _short(digest):
    return str(digest)[:12]


def check_head_compatible(bundle, head_meta, head_path):
    """Raise BnnError unless a head with metadata ``head_meta`` can read ``bundle``'s features.

    ``head_meta`` holds what ``Bundle.head_meta()`` returned for the bundle the head was trained
    on: feature_width, preprocess and backbone_digest. All three must match: another width
    cannot be multiplied, other preprocessing or another backbone gives features the head has
    never seen (silently wrong predictions instead of an error).
    """
    if not isinstance(head_meta, dict):
        raise BnnError("%s: head metadata must be a dict, got %s" % (head_path, type(head_meta).__name__))
    for key in ("feature_width", "preprocess", "backbone_digest"):
        if key not in head_meta:
            raise BnnError("%s: head does not record its %s, so it cannot be checked against the bundle %s"
                           % (head_path, key, bundle.root))
    width = head_meta["feature_width"]
    if not _is_int(width) or int(width) != bundle.feature_width:
        raise BnnError("%s: head was trained for %s features but the bundle %s produces %d"
                       % (head_path, width, bundle.root, bundle.feature_width))
    pp = head_meta["preprocess"]
    if pp != bundle.preprocess:
        raise BnnError("%s: head was trained with preprocessing %s but the bundle %s uses %s"
                       % (head_path, pp, bundle.root, bundle.preprocess))
    if head_meta["backbone_digest"] != bundle.backbone_digest:
        raise BnnError("%s: head was trained on backbone %s but the bundle %s holds backbone %s"
                       % (head_path, _short(head_meta["backbone_digest"]), bundle.root,
                          _short(bundle.backbone_digest)))
