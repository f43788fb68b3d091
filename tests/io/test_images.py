"""segany.io.images: decoding every accepted source to HxWx3 uint8 RGB, and refusing bad input clearly."""
from __future__ import annotations

import base64
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.errors import ImageTooLarge, InvalidImage
from segany.io.images import (
    DEFAULT_MAX_PIXELS,
    decode_base64_image,
    image_digest,
    load_image,
    open_image,
)

SHARED = Path(os.environ.get("SEGANY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
IMAGES = SHARED / "fixtures" / "images"
RNG = np.random.default_rng(1234)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is a few bytes: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))


def random_rgb(height: int = 6, width: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def assert_rgb(result: np.ndarray, shape_hw: tuple[int, int]) -> None:
    assert result.dtype == np.uint8 and result.shape == (*shape_hw, 3) and result.flags.c_contiguous


# ---------------------------------------------------------------- EXIF orientation

# How each EXIF orientation maps stored pixels to displayed pixels, written with numpy (not Pillow).
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # stored sideways: turn 90 degrees clockwise to display
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied_to_encoded_images(orientation):
    stored = random_rgb(3, 5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "PNG", exif=exif)
    result = load_image(data)
    expected = ORIENTATIONS[orientation](stored)
    assert_rgb(result, expected.shape[:2])
    np.testing.assert_array_equal(result, expected)


def test_jpeg_with_orientation_6_is_turned_upright(tmp_path):
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # landscape as stored: left half red, right half blue
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)

    result = load_image(path)
    assert_rgb(result, (64, 32))  # portrait once displayed
    top, bottom = result[4:28].reshape(-1, 3).mean(0), result[36:60].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) edge is the displayed top
    assert bottom[2] > 200 and bottom[0] < 50
    with open_image(path, exif_transpose=False) as raw:
        assert raw.size == (64, 32)


def test_pil_images_are_taken_as_they_are_without_exif_rotation():
    stored = random_rgb(3, 5)
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(io.BytesIO(encode(Image.fromarray(stored), "PNG", exif=exif))) as img:
        np.testing.assert_array_equal(load_image(img), stored)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_block_does_not_reject_valid_pixels():
    stored = random_rgb(4, 4)
    data = encode(Image.fromarray(stored), "PNG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    np.testing.assert_array_equal(load_image(data), stored)


# ---------------------------------------------------------------- PIL modes


def image_in_mode(mode: str) -> Image.Image:
    size = (7, 5)
    if mode == "I":
        return Image.fromarray(RNG.integers(-300, 600, size[::-1]).astype(np.int32))
    if mode == "F":
        return Image.fromarray(RNG.uniform(-10, 300, size[::-1]).astype(np.float32))
    if mode == "P+transparency":
        img = Image.frombytes("P", size, RNG.integers(0, 256, size[0] * size[1], dtype=np.uint8).tobytes())
        img.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
        img.info["transparency"] = bytes(RNG.integers(0, 256, 256, dtype=np.uint8))
        return img
    if mode == "1":
        byte_count = size[1]  # bits packed: one byte holds a row of 7 pixels
    else:
        byte_count = size[0] * size[1] * Image.getmodebands(mode) * (2 if mode.startswith("I;16") else 1)
    img = Image.frombytes(mode, size, RNG.integers(0, 256, byte_count, dtype=np.uint8).tobytes())
    if mode == "P":
        img.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
    return img


MODES = ["1", "L", "P", "P+transparency", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "F", "LA", "PA", "I;16", "I;16B"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_converts_like_pillow_convert_rgb(mode):
    img = image_in_mode(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own P+transparency warning in the reference conversion
        expected = np.asarray(img.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours must not warn
        result = load_image(img)
    assert_rgb(result, (5, 7))
    np.testing.assert_array_equal(result, expected)


def test_mode_conversions_match_hand_computed_values():
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba)), rgba[:, :, :3])  # alpha dropped, no blend

    la = Image.merge("LA", [Image.fromarray(rgba[:, :, 0]), Image.fromarray(rgba[:, :, 3])])
    np.testing.assert_array_equal(load_image(la), np.repeat(rgba[:, :, :1], 3, axis=2))

    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    p_img = Image.frombytes("P", (6, 4), indices.tobytes())
    p_img.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(load_image(p_img), palette[indices])
    p_img.info["transparency"] = 3
    np.testing.assert_array_equal(load_image(p_img), palette[indices])  # transparency ignored, colours kept

    bits = RNG.integers(0, 2, (4, 6)).astype(bool)
    np.testing.assert_array_equal(load_image(Image.fromarray(bits)), np.repeat(bits[:, :, None] * 255, 3, 2))

    values = np.array([[0, 7, 255, 256, 4000, 65535]], dtype=np.uint16)
    result = load_image(Image.fromarray(values))  # I;16: clipped to 255 by Pillow, not rescaled
    np.testing.assert_array_equal(result[0, :, 0], [0, 7, 255, 255, 255, 255])


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P+transparency"), ("PNG", "I;16"),
     ("PNG", "1"), ("TIFF", "CMYK"), ("TIFF", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("PPM", "L"),
     ("WEBP", "RGBA")],
)
def test_encoded_formats_decode_like_pillow(fmt, mode):
    img = image_in_mode(mode)
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(img, fmt, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    result = load_image(data)
    assert_rgb(result, (5, 7))
    np.testing.assert_array_equal(result, expected)


# ---------------------------------------------------------------- numpy arrays


def test_rgb_uint8_array_is_returned_without_copy():
    rgb = random_rgb()
    assert load_image(rgb) is rgb or np.shares_memory(load_image(rgb), rgb)


def test_non_contiguous_array_becomes_c_contiguous():
    rgb = random_rgb(8, 10)
    bgr_view = rgb[:, ::2, ::-1]
    result = load_image(bgr_view)
    assert_rgb(result, (8, 5))
    np.testing.assert_array_equal(result, bgr_view)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda g: g, lambda g: np.repeat(g[:, :, None], 3, 2)),
        (lambda g: g[:, :, None], lambda g: np.repeat(g[:, :, None], 3, 2)),
        (lambda g: np.stack([g, g // 2, 255 - g, g], 2), lambda g: np.stack([g, g // 2, 255 - g], 2)),
        (lambda g: g > 100, lambda g: np.repeat((g > 100)[:, :, None] * 255, 3, 2)),
        (lambda g: g.astype(np.uint16), lambda g: np.repeat(g[:, :, None], 3, 2)),
        (lambda g: np.stack([g] * 3, 2).astype(np.int64), lambda g: np.stack([g] * 3, 2)),
    ],
    ids=["HxW", "HxWx1", "HxWx4", "bool", "uint16-in-range", "int64-rgb-in-range"],
)
def test_array_shapes_and_safe_dtypes(make, expected):
    grey = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    result = load_image(make(grey))
    assert_rgb(result, (5, 4))
    np.testing.assert_array_equal(result, expected(grey).astype(np.uint8))


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.full((4, 4, 3), 300, dtype=np.uint16), ["uint16", "300"]),
        (np.full((4, 4), -1, dtype=np.int8), ["int8", "-1"]),
        (np.zeros((4, 4, 3), dtype=np.float32), ["float"]),
        (np.zeros((4, 4, 2), dtype=np.uint8), ["(4, 4, 2)"]),
        (np.zeros((4, 4, 3, 1), dtype=np.uint8), ["(4, 4, 3, 1)"]),
        (np.zeros((4,), dtype=np.uint8), ["(4,)"]),
        (np.zeros((0, 4, 3), dtype=np.uint8), ["zero-sized"]),
        (np.zeros((4, 4), dtype=np.complex64), ["complex64"]),
    ],
)
def test_bad_arrays_raise_invalid_image_naming_the_field(array, words):
    with pytest.raises(InvalidImage) as info:
        load_image(array, field="input_image")
    assert info.value.field == "input_image"
    message = str(info.value)
    assert message.startswith("input_image:")
    for word in words:
        assert word in message


def test_array_over_the_pixel_limit():
    with pytest.raises(ImageTooLarge, match="30 pixels exceeds the limit of 29"):
        load_image(random_rgb(5, 6), max_pixels=29)
    assert load_image(random_rgb(5, 6), max_pixels=30).shape == (5, 6, 3)


def test_zero_sized_pil_image():
    with pytest.raises(InvalidImage, match="zero-sized"):
        load_image(Image.new("RGB", (0, 5)))


# ---------------------------------------------------------------- limits and bad encoded data


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # 9000x8000 = 72M pixels: above our default, below Pillow's own guard. The body is truncated, so a
    # decoder that loaded before checking would report truncation (or spend the memory) instead.
    with pytest.raises(ImageTooLarge) as info:
        load_image(png_header_only(9000, 8000))
    assert "72000000 pixels" in str(info.value) and str(DEFAULT_MAX_PIXELS) in str(info.value)
    assert "PNG" in str(info.value)
    with pytest.raises(ImageTooLarge):
        load_image(png_header_only(8192, 8193))


def test_image_at_the_limit_is_decoded_not_rejected():
    with pytest.raises(InvalidImage) as info:  # passes the size check, then fails as truncated
        load_image(png_header_only(64, 64), max_pixels=64 * 64)
    assert not isinstance(info.value, ImageTooLarge)
    assert "truncated or corrupt PNG" in str(info.value)


def test_default_limit_is_64_megapixels():
    assert DEFAULT_MAX_PIXELS == 8192 * 8192


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_warning_range_raises_too_large_even_when_warnings_are_errors():
    data = png_header_only(20000, 5000)  # 100M: above Pillow's warning threshold, below its hard limit
    with pytest.raises(ImageTooLarge):
        load_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge):
            load_image(data, max_pixels=None)


def test_pillow_hard_limit_becomes_image_too_large():
    with pytest.raises(ImageTooLarge, match="Pillow"):
        load_image(png_header_only(30000, 30000), max_pixels=None)


def test_max_pixels_none_lifts_our_limit():
    img = Image.fromarray(random_rgb(50, 60))
    assert load_image(encode(img, "PNG"), max_pixels=None).shape == (50, 60, 3)
    with pytest.raises(ImageTooLarge):
        load_image(encode(img, "PNG"), max_pixels=2999)


def astronaut_bytes(fmt: str) -> bytes:
    with Image.open(IMAGES / "astronaut.png") as img:
        return encode(img.convert("RGB"), fmt)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (lambda: astronaut_bytes("JPEG")[: len(astronaut_bytes("JPEG")) // 2], ["truncated or corrupt JPEG"]),
        (lambda: astronaut_bytes("PNG")[: len(astronaut_bytes("PNG")) // 2], ["truncated or corrupt PNG"]),
        (lambda: astronaut_bytes("JPEG")[:200], ["corrupt JPEG header"]),
        (lambda: b"", ["empty"]),
        (lambda: b"just some text, not pixels", ["unsupported image format", "PNG", "JPEG"]),
        (lambda: b"%PDF-1.7\n%binary", ["unsupported image format", "PDF"]),
        (lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', ["SVG"]),
        (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", ["HEIC"]),
        (lambda: astronaut_bytes("ICO"), ["unsupported image format", "ICO"]),
        (lambda: astronaut_bytes("PCX"), ["unsupported image format"]),
        (lambda: b"P6\n0 5\n255\n", ["corrupt PPM header"]),  # zero width
        (lambda: png_header_only(0, 5)[:33], ["corrupt PNG header"]),
    ],
    ids=["jpeg-truncated", "png-truncated", "jpeg-header-only", "empty", "text", "pdf", "svg", "heic",
         "ico", "pcx", "zero-width-ppm", "zero-width-png"],
)
def test_bad_encoded_data_raises_invalid_image_with_a_reason(data, words):
    with pytest.raises(InvalidImage) as info:
        load_image(data(), field="init_image")
    assert info.value.field == "init_image"
    assert type(info.value).__module__ == "segany.errors"
    for word in words:
        assert word in str(info.value)


def test_corrupted_png_body_is_invalid():
    data = bytearray(astronaut_bytes("PNG"))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(InvalidImage, match="corrupt PNG"):
        load_image(bytes(data))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_sources(kind):
    rgb = random_rgb()
    np.testing.assert_array_equal(load_image(kind(encode(Image.fromarray(rgb), "PNG"))), rgb)


def test_paths_str_and_pathlike_match_bytes(image_paths):
    path = image_paths["chelsea.png"]
    from_path = load_image(path)
    assert_rgb(from_path, (300, 451))
    np.testing.assert_array_equal(load_image(str(path)), from_path)
    np.testing.assert_array_equal(load_image(path.read_bytes()), from_path)
    with Image.open(path) as img:
        np.testing.assert_array_equal(from_path, np.asarray(img.convert("RGB")))


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("/definitely/not/here.png", ["not found", "here.png"]),
        ("https://example.com/cat.png", ["not found", "URLs are not fetched"]),
        ("data:image/png;base64,iVBORw0KGgo=", ["decode_base64_image"]),
    ],
)
def test_missing_files(source, words):
    with pytest.raises(InvalidImage) as info:
        load_image(source)
    for word in words:
        assert word in str(info.value)


def test_directory_and_wrong_types(tmp_path):
    with pytest.raises(InvalidImage, match="directory"):
        load_image(tmp_path)
    for wrong in (None, 3, [[1, 2], [3, 4]], {"image": "x"}):
        with pytest.raises(InvalidImage, match=type(wrong).__name__):
            load_image(wrong)


# ---------------------------------------------------------------- base64


PAYLOAD = bytes(RNG.integers(0, 256, 100, dtype=np.uint8))  # 100 bytes: needs "==" padding
STANDARD = base64.b64encode(PAYLOAD).decode()


@pytest.mark.parametrize(
    "text",
    [
        STANDARD,
        STANDARD.rstrip("="),
        base64.encodebytes(PAYLOAD).decode(),  # newlines every 76 characters
        f"  \n{STANDARD}\r\n ",
        " ".join(STANDARD[i : i + 10] for i in range(0, len(STANDARD), 10)),
        base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("="),
        f"data:image/png;base64,{STANDARD}",
        f"DATA:IMAGE/JPEG;BASE64,{STANDARD.rstrip('=')}",
        f"data:image/webp;charset=utf-8;base64,{STANDARD}",
        f"data:application/octet-stream;base64,{STANDARD}",
        f"data:;base64,{STANDARD}",
    ],
    ids=["padded", "unpadded", "newlines", "surrounding-space", "inner-spaces", "urlsafe", "data-uri",
         "data-uri-upper", "data-uri-params", "octet-stream", "no-media-type"],
)
def test_base64_variants_decode_to_the_same_bytes(text):
    assert STANDARD.count("+") + STANDARD.count("/") > 0  # the alphabet test means something
    assert decode_base64_image(text) == PAYLOAD


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["empty"]),
        ("   \n", ["empty"]),
        ("data:image/png;base64,", ["empty"]),
        ("abc$def", ["invalid base64"]),
        ("abcde", ["invalid base64", "length"]),
        ("ab=cd", ["invalid base64"]),
        (f"data:text/plain;base64,{STANDARD}", ["text/plain", "not an image"]),
        (f"data:image/png,{STANDARD}", ["base64"]),
        ("data:image/png;base64", ["','"]),
    ],
)
def test_invalid_base64_raises_invalid_image(text, words):
    with pytest.raises(InvalidImage) as info:
        decode_base64_image(text, field="image_base64")
    assert info.value.field == "image_base64"
    for word in words:
        assert word in str(info.value)


def test_base64_then_load_image_round_trip():
    rgb = random_rgb()
    text = "data:image/png;base64," + base64.b64encode(encode(Image.fromarray(rgb), "PNG")).decode()
    np.testing.assert_array_equal(load_image(decode_base64_image(text)), rgb)


# ---------------------------------------------------------------- digest


def test_image_digest_depends_on_pixels_and_shape_only():
    rgb = random_rgb(6, 8)
    digest = image_digest(rgb)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert image_digest(rgb.copy()) == digest
    assert image_digest(load_image(encode(Image.fromarray(rgb), "PNG"))) == digest  # source does not matter
    assert image_digest(np.asfortranarray(rgb)) == digest  # memory layout does not matter
    assert image_digest(rgb.reshape(8, 6, 3)) != digest  # same bytes, other shape
    changed = rgb.copy()
    changed[5, 7, 2] ^= 1
    assert image_digest(changed) != digest
    assert image_digest(rgb.astype(np.uint16)) != image_digest(rgb)
