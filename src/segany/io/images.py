"""Turn whatever a caller hands us into one HxWx3 uint8 RGB array, or raise `InvalidImage`.

Accepted sources: numpy arrays, `PIL.Image.Image`, encoded bytes (`bytes`/`bytearray`/`memoryview`) and file
paths (`str`/`os.PathLike`). Encoded data is decoded with Pillow, restricted to the formats in
`SUPPORTED_FORMATS` (plugins such as EPS would shell out to Ghostscript, and rarely used parsers are needless
attack surface), size-checked from the header before any pixel is decoded, rotated upright from its EXIF
orientation, and converted exactly as `PIL.Image.convert("RGB")` does. Every failure becomes `InvalidImage` or
`ImageTooLarge` naming the request field; no raw Pillow exception escapes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from segany.errors import ImageTooLarge, InvalidImage

# 64 Mi pixels (8192x8192): SAM 2 resizes every image to 1024x1024, so more pixels buy no accuracy, while the
# decoded RGB alone costs 3 bytes/pixel (192 MiB here) plus a conversion copy per request. The limit still admits
# 61 MP full-frame camera photos and 8K frames, and sits below Pillow's own warning threshold (~89.5 MP), so an
# image we accept never triggers Pillow's DecompressionBombWarning.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# Pillow format ids tried when decoding bytes/paths (JPEG includes multi-picture MPO phone photos); those whose
# plugin is not registered (HEIF needs the optional pillow-heif, AVIF a Pillow built with libavif) are skipped.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "HEIF", "GIF", "BMP", "TIFF", "PPM")

ImageSource = Union[np.ndarray, Image.Image, bytes, bytearray, memoryview, str, os.PathLike]

# Leading bytes of formats people send by mistake, so the error can name what it got.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"qoif", "QOI"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP archive"),
)
# Signatures of the supported formats: when Pillow still cannot open such data its header is broken (a zero
# width, a bad chunk), which is a different message from "wrong format".
_SUPPORTED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF"}


def load_image(
    image: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, field: str = "image"
) -> np.ndarray:
    """Decode `image` to an (H, W, 3) uint8 RGB, C-contiguous array (writeable unless an input array was).

    - ndarray: uint8 (H, W, 3) is returned as is (no copy when already C-contiguous); (H, W) and (H, W, 1) are
      grey, replicated to 3 channels; (H, W, 4) drops alpha without compositing, like Pillow's RGBA->RGB. bool
      maps True->255. Other integer dtypes are cast only when every value lies in 0..255 (lossless); floats are
      rejected because [0, 1] and [0, 255] scales cannot be told apart.
    - PIL.Image: converted with `convert("RGB")` semantics; its EXIF orientation is NOT applied (the caller
      holds the pixels as they are).
    - bytes / bytearray / memoryview / path: decoded, EXIF orientation applied, then converted to RGB. A `str`
      is always a path (decode base64 with `decode_base64_image` first).

    `max_pixels` bounds H*W (None: no segany limit; Pillow's own decompression-bomb guard of
    2 * PIL.Image.MAX_IMAGE_PIXELS still applies to encoded inputs). `field` names the input in error messages.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, max_pixels, field)
    if isinstance(image, Image.Image):
        _check_pixel_count(image.size, max_pixels, field)
        _load_pixels(image, field)
        return _pil_to_rgb(image, field)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        with open_image(data, max_pixels=max_pixels, field=field) as decoded:
            return _pil_to_rgb(decoded, field)
    if isinstance(image, (str, os.PathLike)):
        with open_image(image, max_pixels=max_pixels, field=field) as decoded:
            return _pil_to_rgb(decoded, field)
    raise InvalidImage(
        f"{field}: expected a numpy array, a PIL image, encoded image bytes or a file path; "
        f"got {type(image).__name__}",
        field,
    )


def open_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    field: str = "image",
    exif_transpose: bool = True,
) -> Image.Image:
    """Decode encoded bytes or a file into a fully loaded PIL image in its own mode (no RGB conversion).

    The pixel count is checked from the header before decoding; with `exif_transpose` the image is turned
    upright from its EXIF orientation (an unreadable EXIF block is ignored: the pixels are still valid).
    """
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(source, field)
    else:
        data = bytes(source)
    if not data:
        raise InvalidImage(f"{field}: empty input (0 bytes)", field)

    formats = _registered_formats()
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{field}: {exc} (Pillow's guard, 2 x PIL.Image.MAX_IMAGE_PIXELS)", field) from exc
    except Image.DecompressionBombWarning as exc:  # only reaches us when warnings are turned into errors
        raise ImageTooLarge(f"{field}: {exc}", field) from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(_unsupported_message(data, formats, field), field) from exc
    except Exception as exc:  # a plugin choking on a malformed header
        claimed = _sniff_supported_format(data) or "image"
        raise InvalidImage(f"{field}: corrupt {claimed} header ({type(exc).__name__}: {exc})", field) from exc

    try:
        _check_pixel_count(img.size, max_pixels, field, img.format)
        _load_pixels(img, field)
        # Some formats (ICO, JPEG 2000 reductions) only know their final size after decoding.
        _check_pixel_count(img.size, max_pixels, field, img.format)
        if exif_transpose:
            _apply_exif_orientation(img)
    except BaseException:
        img.close()
        raise
    return img


def decode_base64_image(text: str | bytes, *, field: str = "image") -> bytes:
    """Decode base64 image text to raw bytes.

    Accepts plain base64 (standard or URL-safe alphabet, padding optional, whitespace and newlines anywhere) and
    `data:` URIs (`data:image/png;base64,...`; media type image/*, application/octet-stream or empty).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidImage(f"{field}: base64 text must be ASCII", field) from exc
    if not isinstance(text, str):
        raise InvalidImage(f"{field}: expected a base64 string, got {type(text).__name__}", field)

    payload = text.strip()
    if payload[:5].lower() == "data:":
        payload = _data_uri_payload(payload, field)
    payload = re.sub(r"\s+", "", payload)
    if not payload:
        raise InvalidImage(f"{field}: empty base64 image", field)
    # Clients disagree on alphabet and padding; normalise both rather than reject working images.
    payload = payload.replace("-", "+").replace("_", "/").rstrip("=")
    if len(payload) % 4 == 1:
        raise InvalidImage(f"{field}: invalid base64 (length {len(payload)} cannot be base64)", field)
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{field}: invalid base64 ({exc})", field) from exc
    if not data:
        raise InvalidImage(f"{field}: empty base64 image", field)
    return data


def image_digest(rgb: np.ndarray) -> str:
    """Hex blake2b digest (64 chars) of an array's shape, dtype and pixel bytes: the embedding cache key.

    Equal pixels give equal digests whatever the source (file, bytes, array) or memory layout.
    """
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"image_digest expects a numpy array, got {type(rgb).__name__}")
    contiguous = np.ascontiguousarray(rgb)
    hasher = hashlib.blake2b(digest_size=32, person=b"segany-rgb-v1")
    hasher.update(f"{contiguous.shape}|{contiguous.dtype.str}|".encode())
    hasher.update(memoryview(contiguous).cast("B"))
    return hasher.hexdigest()


def _array_to_rgb(array: np.ndarray, max_pixels: int | None, field: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) arrays -> (H, W, 3) uint8; see `load_image` for the dtype rules."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidImage(
            f"{field}: array shape {array.shape} is not an image; expected (H, W), (H, W, 1), (H, W, 3) "
            "or (H, W, 4)",
            field,
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise InvalidImage(f"{field}: zero-sized image ({height}x{width})", field)
    _check_pixel_count((width, height), max_pixels, field)
    array = _array_to_uint8(array, field)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array[:, :, :3])


def _array_to_uint8(array: np.ndarray, field: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InvalidImage(
                f"{field}: {array.dtype} array has values in [{low}, {high}], outside 0..255; "
                "scale it to uint8 yourself",
                field,
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        raise InvalidImage(
            f"{field}: float array ({array.dtype}) is ambiguous ([0, 1] or [0, 255]?); convert it to uint8, "
            "e.g. (x * 255).round().astype(np.uint8) for [0, 1] data",
            field,
        )
    raise InvalidImage(f"{field}: unsupported array dtype {array.dtype}; expected uint8", field)


def _pil_to_rgb(img: Image.Image, field: str) -> np.ndarray:
    width, height = img.size
    if width == 0 or height == 0:
        raise InvalidImage(f"{field}: zero-sized image ({height}x{width})", field)
    try:
        if img.mode == "P" and "transparency" in img.info:
            # Same pixels as a direct P->RGB convert, without Pillow's "convert to RGBA" UserWarning.
            img = img.convert("RGBA")
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except Exception as exc:
        raise InvalidImage(f"{field}: cannot convert image mode {img.mode!r} to RGB ({exc})", field) from exc
    return np.array(rgb, dtype=np.uint8, order="C")


def _check_pixel_count(
    size_wh: tuple[int, int], max_pixels: int | None, field: str, format_name: str | None = None
) -> None:
    width, height = size_wh
    if width <= 0 or height <= 0:
        what = f"{format_name} image" if format_name else "image"
        raise InvalidImage(f"{field}: zero-sized {what} ({height}x{width})", field)
    if max_pixels is not None and width * height > max_pixels:
        what = f"{format_name} image" if format_name else "image"
        raise ImageTooLarge(
            f"{field}: {what} of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels",
            field,
        )


def _load_pixels(img: Image.Image, field: str) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{field}: {exc}", field) from exc
    except Exception as exc:  # truncated streams raise OSError, broken chunks SyntaxError, etc.
        format_name = img.format or "image"
        raise InvalidImage(
            f"{field}: truncated or corrupt {format_name} data ({type(exc).__name__}: {exc})", field
        ) from exc


def _apply_exif_orientation(img: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # malformed EXIF: keep the stored orientation rather than reject valid pixels
        pass


def _registered_formats() -> tuple[str, ...]:
    Image.init()  # registers every installed plugin (idempotent), including pillow-heif once imported
    return tuple(name for name in SUPPORTED_FORMATS if name in Image.OPEN)


def _read_file(path: str | os.PathLike, field: str) -> bytes:
    shown = _short(os.fspath(path))
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        hint = ""
        if isinstance(path, str) and path[:5].lower() == "data:":
            hint = " (looks like a data URI: decode it with decode_base64_image first)"
        elif isinstance(path, str) and re.match(r"^[a-z][a-z0-9+.-]*://", path, re.IGNORECASE):
            hint = " (URLs are not fetched here: download the image first)"
        raise InvalidImage(f"{field}: image file not found: {shown}{hint}", field) from exc
    except IsADirectoryError as exc:
        raise InvalidImage(f"{field}: {shown} is a directory, not an image file", field) from exc
    except (OSError, ValueError) as exc:  # permissions, NUL bytes in the path, names too long
        raise InvalidImage(f"{field}: cannot read image file {shown} ({exc})", field) from exc


def _unsupported_message(data: bytes, formats: tuple[str, ...], field: str) -> str:
    claimed = _sniff_supported_format(data)
    if claimed:
        return f"{field}: corrupt {claimed} header (the data starts like {claimed} but cannot be parsed)"
    detected = _sniff_format(data)
    got = f"{detected} data" if detected else f"unrecognised data starting with {data[:8]!r}"
    return f"{field}: unsupported image format ({got}); supported formats: {', '.join(formats)}"


_SUFFIXES = {"PNG": (".png", "image/png"), "JPEG": (".jpg", "image/jpeg"), "GIF": (".gif", "image/gif"),
             "BMP": (".bmp", "image/bmp"), "WEBP": (".webp", "image/webp"), "TIFF": (".tiff", "image/tiff"),
             "PPM": (".ppm", "image/x-portable-pixmap")}


def image_file_type(data: bytes) -> tuple[str, str]:
    """(file suffix, content type) of encoded image bytes by their signature; ("", octet-stream) if unknown."""
    return _SUFFIXES.get(_sniff_supported_format(data) or "", ("", "application/octet-stream"))


def _sniff_supported_format(data: bytes) -> str | None:
    for signature, name in _SUPPORTED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if re.match(rb"P[1-6]\s", data[:3]):
        return "PPM"
    return None


def _sniff_format(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "ISO media (MP4/HEIF family)")
    return None


def _data_uri_payload(uri: str, field: str) -> str:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise InvalidImage(f"{field}: data URI has no ',' before its payload", field)
    params = [part.strip().lower() for part in header[5:].split(";")]
    media_type = params[0]
    if "base64" not in params[1:]:
        raise InvalidImage(f"{field}: data URI must be base64-encoded (';base64,')", field)
    if media_type and not (media_type.startswith("image/") or media_type == "application/octet-stream"):
        raise InvalidImage(f"{field}: data URI media type {media_type!r} is not an image", field)
    return payload


def _short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
