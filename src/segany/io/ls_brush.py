"""Label Studio's brush RLE: the `rle-pack` bitstream over a mask repeated into RGBA.

A brush result's `value.rle` is a list of byte values. The bitstream (most significant bit first) is a
header — 32 bits value count, 5 bits word size minus 1, four 4-bit "run length field sizes" minus 1 —
followed by blocks: 1 bit kind (1: one value repeated, 0: literal values), 2 bits choosing one of the four
sizes, that many bits of (count - 1), then one value (repeat) or `count` values (literal) of word-size
bits. Label Studio draws brush masks from the alpha byte of each RGBA pixel, row-major.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segany.errors import InvalidInput

RUN_FIELD_BITS = (3, 4, 8, 16)  # what Label Studio's own encoder writes
WORD_BITS = 8
_MAX_RUN = 1 << RUN_FIELD_BITS[-1]


def _bits_of(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Fields (value, width) -> their bits, most significant first, as one uint8 0/1 array."""
    widths = widths.astype(np.int64)
    owner = np.repeat(np.arange(len(values)), widths)
    ends = np.cumsum(widths)
    position = np.arange(int(ends[-1])) - np.repeat(ends - widths, widths)  # bit index within its field
    shift = widths[owner] - 1 - position
    return ((values.astype(np.int64)[owner] >> shift) & 1).astype(np.uint8)


def encode_rle(values: np.ndarray | Sequence[int]) -> list[int]:
    """Encode a 1-D array of bytes (0..255) as repeat blocks only; returns the byte list."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise InvalidInput("brush values must be bytes (0..255)", "rle")
    flat = flat.astype(np.uint8)
    header_values = [flat.size, WORD_BITS - 1, *(bits - 1 for bits in RUN_FIELD_BITS)]
    header_widths = [32, 5, 4, 4, 4, 4]
    if flat.size:
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        lengths = np.diff(np.r_[starts, flat.size])
        run_values = flat[starts]
        # Runs longer than the widest count field are split into full chunks plus a remainder.
        chunks = -(-lengths // _MAX_RUN)
        chunk_values = np.repeat(run_values, chunks)
        chunk_lengths = np.full(int(chunks.sum()), _MAX_RUN, dtype=np.int64)
        last = np.cumsum(chunks) - 1
        chunk_lengths[last] = lengths - (chunks - 1) * _MAX_RUN
        limits = np.array([1 << bits for bits in RUN_FIELD_BITS])
        size_index = np.searchsorted(limits, chunk_lengths, side="left")  # smallest field that holds count - 1
        count_bits = np.asarray(RUN_FIELD_BITS)[size_index]
        block_fields = np.stack([np.ones_like(chunk_lengths), size_index, chunk_lengths - 1, chunk_values], axis=1)
        block_widths = np.stack([np.ones_like(count_bits), np.full_like(count_bits, 2), count_bits,
                                 np.full_like(count_bits, WORD_BITS)], axis=1)
        field_values = np.r_[header_values, block_fields.reshape(-1)]
        field_widths = np.r_[header_widths, block_widths.reshape(-1)]
    else:
        field_values, field_widths = np.asarray(header_values), np.asarray(header_widths)
    bits = _bits_of(field_values, field_widths)
    return np.packbits(bits).tolist()  # packbits pads the last byte with zero bits


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.position = 0

    def read(self, width: int) -> int:
        end = self.position + width
        if end > len(self.bits):
            raise InvalidInput("rle: the brush bitstream ends early", "rle")
        field = self.bits[self.position:end]
        self.position = end
        return int(field.dot(1 << np.arange(width - 1, -1, -1, dtype=np.int64))) if width else 0


def decode_rle(rle: Sequence[int] | bytes) -> np.ndarray:
    """The byte list of a brush result -> its values, 1-D (length from the header; RGBA for masks)."""
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise InvalidInput("rle: expected a list of byte values (0..255)", "rle") from None
    reader = _BitReader(data)
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < count:
        repeat = reader.read(1)
        stop = min(count, i + 1 + reader.read(sizes[reader.read(2)]))
        if repeat:
            out[i:stop] = reader.read(word)
        else:
            for j in range(i, stop):
                out[j] = reader.read(word)
        i = stop
    return out


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> brush RLE bytes: every RGBA byte 255 inside the mask, 0 outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInput(f"mask must be 2-D (H, W), got shape {mask.shape}", "mask")
    return encode_rle(np.repeat(mask.astype(bool).reshape(-1).astype(np.uint8) * 255, 4))


def brush_rle_to_mask(rle: Sequence[int] | bytes, height: int, width: int) -> np.ndarray:
    """Brush RLE bytes -> (H, W) bool mask from the alpha byte, as Label Studio draws it."""
    values = decode_rle(rle)
    if values.size != height * width * 4:
        raise InvalidInput(f"rle: holds {values.size} values, expected {height}x{width}x4 = {height * width * 4}",
                           "rle")
    return values.reshape(height, width, 4)[:, :, 3] > 0
