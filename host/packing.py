"""FINN's bit layout for the accelerator's packed inputs and outputs, in vectorised numpy.

The FINN-generated accelerator reads and writes its streams as bytes: the innermost dimension
of a (folded) tensor is packed into one word of ``ceil(bits * n / 8)`` bytes. This module
reproduces ``finn.util.data_packing.finnpy_to_packed_bytearray`` and
``packed_bytearray_to_finnpy`` bit for bit (golden-tested against them), without ``bitstring``
or FINN installed and without Python loops over elements.

The layout. Within one word, FINN concatenates the values' ``bits``-wide two's-complement
patterns MSB-first (value 0 in the most significant bits), left-pads the word to whole bytes
and writes it big-endian. ``reverse_inner`` reverses the values before that and
``reverse_endian`` reverses the bytes after it. The generated PYNQ driver sets both, which
is the plain little-endian layout: value ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of the
word, byte 0 holds bits 0..7 and padding sits in the high bits of the last byte. So this
module packs everything in that order (``np.packbits(..., bitorder="little")`` for 1 bit,
shifts for 2/4 bits, a plain byte view for 8 bits) and expresses the other flag combinations
as flips of the values or of the bytes.

BIPOLAR values (-1/+1) are stored as 0/1 bits; BINARY as 0/1; INTn as n-bit two's complement.

Typical use on the board::

    packed = pack(images_folded, "UINT8")                  # a view for uint8 input
    feats = unpack(obuf, "BIPOLAR", oshape_folded)         # int8 +-1
"""

import re
from dataclasses import dataclass
from typing import Any, Sequence, Tuple, Union

import numpy as np

from .errors import BnnError

__all__ = ["DataType", "pack", "unpack", "packed_shape"]

DTypeName = Union[str, "DataType"]  # FINN's name ("UINT8", "DataType['UINT8']") or a DataType


@dataclass(frozen=True)
class DataType:
    """The part of FINN's ``DataType`` that packing needs, for integer-like types.

    ``name`` is FINN's canonical name ("UINT8", "INT4", "BIPOLAR", "BINARY"); ``min``/``max``
    are the representable values; ``bits`` the width of one value in the packed stream.
    """

    name: str
    bits: int
    signed: bool
    min: int
    max: int
    is_bipolar: bool = False

    @classmethod
    def parse(cls, name: Union[str, "DataType"]) -> "DataType":
        """Parse FINN's name of a datatype: "UINT8", "INT4", "BIPOLAR", "BINARY".

        Also accepts the forms FINN writes into its driver settings, ``DataType['UINT8']``
        and ``DataType.UINT8``, and a ``DataType`` (returned unchanged). Widths 1..32 bits.
        """
        if isinstance(name, DataType):
            return name
        if not isinstance(name, str):
            # qonnx's DataType members carry their canonical name in .name
            name = getattr(name, "name", None)
            if not isinstance(name, str):
                raise BnnError("datatype: expected a FINN datatype name, got %r" % (name,))
        text = name.strip()
        m = re.fullmatch(r"DataType(?:\[['\"]?(\w+)['\"]?\]|\.(\w+))", text)
        if m:
            text = m.group(1) or m.group(2)
        text = text.upper()
        if text == "BIPOLAR":
            return cls("BIPOLAR", 1, True, -1, 1, is_bipolar=True)
        if text == "BINARY":
            return cls("BINARY", 1, False, 0, 1)
        m = re.fullmatch(r"(U?)INT(\d+)", text)
        if m:
            bits = int(m.group(2))
            signed = not m.group(1)
            # INT1 would be {-1, 0}: FINN never produces it; BIPOLAR is the 1-bit signed type
            if 1 + signed <= bits <= 32:
                if signed:
                    return cls(text, bits, True, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
                return cls(text, bits, False, 0, (1 << bits) - 1)
        raise BnnError("datatype: unsupported FINN datatype %r (expected BIPOLAR, BINARY, INTn or UINTn, n <= 32)"
                       % (name,))

    @property
    def numpy_dtype(self) -> np.dtype:
        """The smallest numpy integer type holding every value (int8 for BIPOLAR)."""
        for width, st, ut in ((8, np.int8, np.uint8), (16, np.int16, np.uint16), (32, np.int32, np.uint32)):
            if self.bits <= width:
                return np.dtype(st if self.signed else ut)
        raise AssertionError("unreachable: bits <= 32")  # pragma: no cover

    def packed_bytes(self, n: int) -> int:
        """Bytes of a packed word holding ``n`` values (padded to a whole byte)."""
        return (int(n) * self.bits + 7) // 8


def packed_shape(shape: Sequence[int], dtype_name: DTypeName) -> Tuple[int, ...]:
    """Shape of the packed uint8 array for an unpacked (folded) ``shape``."""
    dt = DataType.parse(dtype_name)
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise BnnError("packed_shape: need at least one dimension")
    return shape[:-1] + (dt.packed_bytes(shape[-1]),)


def _unsigned_container(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def _check_values(x: np.ndarray, dt: DataType) -> None:
    """Raise BnnError unless every element of ``x`` is a value of ``dt``."""
    if x.size == 0:
        return
    kind = x.dtype.kind
    if kind == "b":
        if dt.is_bipolar or dt.min > 0:
            raise BnnError("pack: boolean input cannot hold %s values" % dt.name)
        return
    if kind in "iu":
        info = np.iinfo(x.dtype)
        if info.min >= dt.min and info.max <= dt.max and not dt.is_bipolar:
            return  # the container cannot hold anything out of range: skip the two passes
    elif kind == "f":
        # NaN fails the comparison, +-inf fails the range check below
        if not np.array_equal(np.floor(x), x):
            raise BnnError("pack: non-integer values (or NaN) for %s" % dt.name)
    else:
        raise BnnError("pack: cannot pack an array of dtype %s as %s" % (x.dtype, dt.name))
    if dt.is_bipolar:
        if not np.all((x == 1) | (x == -1)):
            bad = x[(x != 1) & (x != -1)].flat[0]
            raise BnnError("pack: BIPOLAR values must be -1 or +1 (found %r)" % (bad.item(),))
        return
    lo, hi = x.min(), x.max()
    if lo < dt.min or hi > dt.max:
        raise BnnError("pack: values out of range for %s [%d, %d] (found min %s, max %s)"
                       % (dt.name, dt.min, dt.max, lo.item(), hi.item()))


def _to_unsigned(x: np.ndarray, dt: DataType) -> np.ndarray:
    """The values' ``dt.bits``-wide bit patterns in the smallest unsigned container."""
    ct = _unsigned_container(dt.bits)
    if dt.is_bipolar:
        return (x > 0).astype(np.uint8)
    if x.dtype.kind == "b":
        return x.view(np.uint8)
    u: np.ndarray
    if x.dtype.kind in "iu" and x.dtype.itemsize == np.dtype(ct).itemsize:
        u = x.view(ct)  # two's complement already: only the high bits need clearing
    elif x.dtype.kind == "f":
        u = x.astype(np.int64).astype(ct)  # exact: values were checked to be in range
    else:
        u = x.astype(ct)  # C-style wrap-around gives two's complement for negatives
    if dt.bits < 8 * u.dtype.itemsize:
        u = u & ct((1 << dt.bits) - 1)
    return u


def _pack_le(u: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of unsigned bit patterns little-endian: value i at bits [i*b, (i+1)*b)."""
    lead, n = u.shape[:-1], u.shape[-1]
    nbytes = (n * bits + 7) // 8
    if bits == 8:
        return u
    if bits == 1:
        return np.packbits(u, axis=-1, bitorder="little")
    if 8 % bits == 0:
        per = 8 // bits
        if nbytes * per != n:
            u = np.concatenate([u, np.zeros(lead + (nbytes * per - n,), np.uint8)], axis=-1)
        u = u.reshape(lead + (nbytes, per))
        out = u[..., 0].copy()
        for j in range(1, per):  # loop over the 2 or 4 slots of a byte, not over elements
            out |= u[..., j] << np.uint8(j * bits)
        return out
    # Any other width: spell out every value's bits LSB-first, then pack them as one bit string.
    bitmat = np.empty(lead + (n, bits), np.uint8)
    for j in range(bits):
        bitmat[..., j] = (u >> u.dtype.type(j)) & 1
    return np.packbits(bitmat.reshape(lead + (n * bits,)), axis=-1, bitorder="little")


def _unpack_le(p: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``_pack_le``: ``n`` unsigned bit patterns per word."""
    lead = p.shape[:-1]
    if bits == 8:
        return p
    if bits == 1:
        return np.unpackbits(p, axis=-1, count=n, bitorder="little")
    if 8 % bits == 0:
        per = 8 // bits
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        v = (p[..., None] >> shifts) & np.uint8((1 << bits) - 1)
        return v.reshape(lead + (p.shape[-1] * per,))[..., :n]
    bitmat = np.unpackbits(p, axis=-1, count=n * bits, bitorder="little").reshape(lead + (n, bits))
    ct = _unsigned_container(bits)
    v = np.zeros(lead + (n,), ct)
    for j in range(bits):
        v |= bitmat[..., j].astype(ct) << ct(j)
    return v


def pack(x: Any, dtype_name: DTypeName, reverse_endian: bool = True, reverse_inner: bool = True) -> np.ndarray:
    """Pack the last axis of ``x`` into FINN's byte layout; returns a uint8 array.

    ``x`` holds values of the FINN datatype ``dtype_name`` in any numeric container (uint8
    images, int8 or float32 +-1, ...); the result has shape ``x.shape[:-1] + (ceil(bits *
    x.shape[-1] / 8),)`` and equals ``finnpy_to_packed_bytearray(x, dtype, reverse_inner,
    reverse_endian)``. The defaults are those of FINN's PYNQ driver (both reversed), not
    those of the FINN function (neither).

    UINT8 in a uint8 container (INT8 in int8) with both flags equal is returned as a uint8
    view of ``x`` (zero copy when ``x`` is C-contiguous): copy it before changing ``x`` if
    the packed bytes must stay. Raises BnnError for values the datatype cannot hold.
    """
    dt = DataType.parse(dtype_name)
    x = np.asarray(x)
    if x.ndim == 0:
        raise BnnError("pack: need at least one dimension, got a scalar")
    if dt.bits == 8 and not dt.is_bipolar and x.dtype.kind == "f":
        # Images often arrive as float32 (FINN's driver takes them so): one cast and one comparison
        # replace the generic floor / range / int64 passes. Whatever the cast cannot represent
        # (fractions, NaN, out of range) compares unequal; the generic check then names it.
        with np.errstate(invalid="ignore"):
            c = x.astype(np.int8 if dt.signed else np.uint8)
        if np.array_equal(c, x):
            x = c
    _check_values(x, dt)
    if dt.bits == 8 and x.dtype.kind in "iu" and x.dtype.itemsize == 1:
        # The fast path the driver needs for images: the container already is the byte stream.
        p = np.ascontiguousarray(x).view(np.uint8)
        if reverse_inner != reverse_endian:
            p = np.ascontiguousarray(p[..., ::-1])
        return p
    u = _to_unsigned(x, dt)
    if not reverse_inner:
        u = u[..., ::-1]
    p = _pack_le(u, dt.bits)
    if not reverse_endian:
        p = p[..., ::-1]
    return np.ascontiguousarray(p, dtype=np.uint8)


def unpack(packed: np.ndarray, dtype_name: DTypeName, shape: Sequence[int], reverse_endian: bool = True,
           reverse_inner: bool = True, out_dtype: Any = None) -> np.ndarray:
    """Unpack FINN's byte layout into values of shape ``shape``; the inverse of ``pack``.

    ``packed`` is uint8 with ``prod(shape[:-1]) * ceil(bits * shape[-1] / 8)`` elements (any
    shape with that size, e.g. a flat DMA buffer); padding bits are ignored. Returns the
    values in ``DataType.numpy_dtype`` (int8 -1/+1 for BIPOLAR, uint8 for UINT8 and BINARY)
    or in ``out_dtype`` if given (``np.float32`` gives FINN's container, equal to
    ``packed_bytearray_to_finnpy(packed, dtype, shape, reverse_inner, reverse_endian)``).
    """
    dt = DataType.parse(dtype_name)
    packed = source = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise BnnError("unpack: packed data must be uint8, got %s" % packed.dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) == 0 or min(shape) < 0:
        raise BnnError("unpack: invalid output shape %r" % (shape,))
    pshape = shape[:-1] + (dt.packed_bytes(shape[-1]),)
    if packed.shape != pshape:
        if packed.size != int(np.prod(pshape)):
            raise BnnError("unpack: %d packed bytes do not match output shape %r of %s (expected packed shape %r)"
                           % (packed.size, shape, dt.name, pshape))
        packed = packed.reshape(pshape)
    n = shape[-1]
    if not reverse_endian:
        packed = packed[..., ::-1]
    if dt.bits == 8:
        v = packed.view(dt.numpy_dtype)
    else:
        v = _unpack_le(packed, dt.bits, n)
        if dt.is_bipolar:
            v = v.view(np.int8) * np.int8(2) - np.int8(1)
        elif dt.signed:
            s = v.astype(np.int64)
            s -= (s >> (dt.bits - 1)) << dt.bits  # sign-extend the top bit of each n-bit pattern
            v = s.astype(dt.numpy_dtype)
        else:
            v = v.astype(dt.numpy_dtype, copy=False)
    if not reverse_inner:
        v = v[..., ::-1]
    out = np.ascontiguousarray(v, dtype=out_dtype if out_dtype is not None else v.dtype)
    if np.may_share_memory(out, source):
        # never hand out a view of a DMA buffer that the next batch overwrites
        out = out.copy()
    return out
