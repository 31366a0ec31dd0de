"""host.packing: FINN's packed byte layout, golden-tested against finn.util.data_packing.

The golden tests need finn-plus (and qonnx) and skip without them. With finn-plus 1.6.1,
importing ``finn.util.data_packing`` needs no environment set-up (no FINN_ROOT, no Xilinx
tools): only ``finn.util.basic``'s settings loader is touched lazily, and packing never calls
it. The layout tests below them pin the same behaviour with hand-derived bytes, so the
host-only install still checks the semantics.
"""

import itertools

import numpy as np
import pytest

from bnn_transfer.host.errors import BnnError
from bnn_transfer.host.packing import DataType, pack, packed_shape, unpack

USED = ["UINT8", "INT8", "BIPOLAR", "BINARY", "INT2", "INT4", "UINT4"]
# last dims: multiples of 8 bits, and not (13 x INT4 = 52 bits -> 7 bytes with padding)
SHAPES = [(5,), (3, 7), (2, 3, 13), (4, 2, 16), (2, 64), (3, 1), (2, 2, 3, 3)]
# the driver's (both reversed), FINN's defaults (neither), and the two mixed ones
FLAGS = list(itertools.product([True, False], repeat=2))


def random_values(dt, shape, rng):
    if dt.is_bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(dt.min, dt.max + 1, size=shape, dtype=np.int64)


# ------------------------------------------------------------------------------ golden vs FINN


@pytest.fixture(scope="module")
def finn_dp():
    dp = pytest.importorskip("finn.util.data_packing", reason="finn-plus is not installed")
    qdt = pytest.importorskip("qonnx.core.datatype", reason="qonnx is not installed")
    return dp, qdt.DataType


@pytest.mark.finn
@pytest.mark.parametrize("name", USED + ["UINT2", "INT3", "UINT5", "INT7", "UINT12", "INT16"])
def test_pack_and_unpack_match_finn(finn_dp, name):
    dp, QDT = finn_dp
    dt = DataType.parse(name)
    rng = np.random.default_rng(sum(map(ord, name)))
    for shape, (rev_inner, rev_endian) in itertools.product(SHAPES, FLAGS):
        x = random_values(dt, shape, rng)
        # FINN's own container is float32; the driver feeds uint8/int8 for its fast path
        for container in (np.float32, dt.numpy_dtype):
            xc = x.astype(container)
            ref = np.asarray(dp.finnpy_to_packed_bytearray(xc, QDT[name], reverse_inner=rev_inner,
                                                           reverse_endian=rev_endian))
            got = pack(xc, name, reverse_endian=rev_endian, reverse_inner=rev_inner)
            assert got.dtype == np.uint8 and got.shape == ref.shape == packed_shape(shape, name)
            assert np.array_equal(got, ref), (name, shape, rev_inner, rev_endian, container)
        ref_vals = dp.packed_bytearray_to_finnpy(np.ascontiguousarray(ref), QDT[name], shape,
                                                 reverse_inner=rev_inner, reverse_endian=rev_endian)
        vals = unpack(ref, name, shape, reverse_endian=rev_endian, reverse_inner=rev_inner)
        assert vals.dtype == dt.numpy_dtype
        assert np.array_equal(vals, x) and np.array_equal(vals.astype(np.float32), ref_vals)
        as_f32 = unpack(ref, name, shape, reverse_endian=rev_endian, reverse_inner=rev_inner, out_dtype=np.float32)
        assert as_f32.dtype == np.float32 and np.array_equal(as_f32, ref_vals)


@pytest.mark.finn
def test_driver_sized_tensors_match_finn(finn_dp):
    # what the pynq backend moves: a batch of uint8 images and a batch of bipolar features
    dp, QDT = finn_dp
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ref = dp.finnpy_to_packed_bytearray(img.astype(np.float32), QDT["UINT8"], reverse_inner=True, reverse_endian=True)
    assert np.array_equal(pack(img, "UINT8"), ref)
    feats = rng.choice(np.array([-1, 1], np.int8), (8, 4096))
    ref = dp.finnpy_to_packed_bytearray(feats.astype(np.float32), QDT["BIPOLAR"], reverse_inner=True,
                                        reverse_endian=True)
    assert np.array_equal(pack(feats, "BIPOLAR"), ref)
    back = dp.packed_bytearray_to_finnpy(ref, QDT["BIPOLAR"], feats.shape, reverse_inner=True, reverse_endian=True)
    assert np.array_equal(unpack(ref, "BIPOLAR", feats.shape), back)


# --------------------------------------------------------------------- layout, without FINN


def test_layout_matches_finn_docstring_examples():
    # finn.util.data_packing.array2hexstring examples, FINN's defaults (no reversal)
    assert pack([1, 1, 1, 0], "BINARY", reverse_endian=False, reverse_inner=False).tolist() == [0x0E]
    assert pack([1, 1, 0, 1], "BINARY", reverse_endian=False, reverse_inner=True).tolist() == [0x0B]
    b = [[[3, 3], [3, 3]], [[1, 3], [3, 1]]]
    assert pack(b, "UINT2", reverse_endian=False, reverse_inner=False).tolist() == [[[0x0F], [0x0F]],
                                                                                   [[0x07], [0x0D]]]


def test_driver_layout_is_little_endian_value_zero_lowest():
    # both reversed: value i occupies bits [i*b, (i+1)*b) of a little-endian word
    assert pack([1, 0, 0, 0, 0, 0, 0, 0, 1], "BINARY").tolist() == [0x01, 0x01]
    assert pack([1, -1, -1, -1, -1, -1, -1, 1], "BIPOLAR").tolist() == [0x81]
    assert pack([1, 2, 3], "UINT4").tolist() == [0x21, 0x03]
    assert pack([-1, 1], "INT4").tolist() == [0x1F]
    assert pack([1, 2, 3], "UINT8").tolist() == [1, 2, 3]
    # 3 x 3 bits = 9 bits: value 2 straddles the byte boundary
    assert pack([7, 0, 5], "UINT3").tolist() == [0x47, 0x01]


@pytest.mark.parametrize("name", ["BIPOLAR", "BINARY"] + ["INT%d" % n for n in range(2, 33)]
                         + ["UINT%d" % n for n in range(1, 33)])
def test_roundtrip_every_width(name):
    dt = DataType.parse(name)
    rng = np.random.default_rng(dt.bits)
    for shape, (rev_inner, rev_endian) in itertools.product([(3, 5), (2, 9), (4, 1)], FLAGS):
        x = random_values(dt, shape, rng)
        x.flat[0], x.flat[-1] = dt.min, dt.max  # the extremes catch sign-extension slips
        p = pack(x, name, reverse_endian=rev_endian, reverse_inner=rev_inner)
        assert p.shape == packed_shape(shape, name)
        v = unpack(p, name, shape, reverse_endian=rev_endian, reverse_inner=rev_inner)
        assert v.dtype == dt.numpy_dtype and np.array_equal(v, x)


def test_padding_bits_are_ignored_on_unpack():
    x = np.array([[1, -1, 1]], np.int8)
    p = pack(x, "BIPOLAR")
    assert p.tolist() == [[0x05]]
    assert np.array_equal(unpack(p | np.uint8(0xF8), "BIPOLAR", x.shape), x)


def test_uint8_images_pack_to_a_view():
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    p = pack(img, "UINT8")
    assert np.shares_memory(p, img) and np.array_equal(p, img)
    p = pack(img, "UINT8", reverse_inner=False)
    assert np.array_equal(p, img[..., ::-1]) and p.flags.c_contiguous
    signed = np.array([[-128, -1, 0, 127]], np.int8)
    assert pack(signed, "INT8").tolist() == [[0x80, 0xFF, 0x00, 0x7F]]


def test_unpack_returns_fresh_memory():
    buf = np.arange(12, dtype=np.uint8).reshape(2, 6)  # stands in for a DMA buffer
    v = unpack(buf, "UINT8", (2, 6))
    buf[:] = 0
    assert v.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_unpack_accepts_a_flat_buffer():
    x = np.random.default_rng(0).integers(-8, 8, (3, 5))
    p = pack(x, "INT4")
    assert np.array_equal(unpack(p.ravel(), "INT4", (3, 5)), x)


@pytest.mark.parametrize("x, name", [
    (np.array([0, 256], np.int16), "UINT8"),
    (np.array([-1, 2]), "UINT8"),
    (np.array([8, 0]), "INT4"),
    (np.array([-9.0]), "INT4"),
    (np.array([0, 1, 0]), "BIPOLAR"),
    (np.array([0, 2]), "BINARY"),
    (np.array([1.5]), "UINT4"),
    (np.array([np.nan]), "UINT4"),
    (np.array([np.inf]), "INT8"),
    (np.array(["a"]), "UINT8"),
    (np.array([True, False]), "BIPOLAR"),
])
def test_values_out_of_range_raise(x, name):
    with pytest.raises(BnnError, match="pack: .*"):
        pack(x, name)


def test_pack_rejects_scalars_and_unpack_checks_sizes():
    with pytest.raises(BnnError, match="scalar"):
        pack(np.uint8(3), "UINT8")
    with pytest.raises(BnnError, match="uint8"):
        unpack(np.zeros((2, 1), np.int8), "BIPOLAR", (2, 8))
    with pytest.raises(BnnError, match="do not match"):
        unpack(np.zeros((2, 1), np.uint8), "BIPOLAR", (2, 9))


def test_datatype_parse():
    assert DataType.parse("UINT8") == DataType("UINT8", 8, False, 0, 255)
    assert DataType.parse("DataType['INT4']") == DataType("INT4", 4, True, -8, 7)
    assert DataType.parse("DataType.BIPOLAR").is_bipolar
    b = DataType.parse("binary")
    assert (b.bits, b.signed, b.min, b.max, b.is_bipolar) == (1, False, 0, 1, False)
    assert DataType.parse("INT32").numpy_dtype == np.int32 and DataType.parse("UINT9").numpy_dtype == np.uint16
    assert DataType.parse("INT3").packed_bytes(13) == 5
    for bad in ["FLOAT32", "INT1", "INT0", "UINT33", "TERNARY", "", "FIXED<8,4>"]:
        with pytest.raises(BnnError, match="unsupported FINN datatype"):
            DataType.parse(bad)
