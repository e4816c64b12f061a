"""Validate user-uploaded images before any model (OCR or a hosted vision model) sees them.

Uploads are untrusted: a "receipt.png" may be a PDF, a truncated download, a 2-page TIFF, an
animated GIF or a decompression bomb. ``validate_image`` decides by *content* (never by the
file name), fully decodes the pixels so corrupt files fail here with a clear message instead
of deep inside a model client, applies the EXIF orientation, flattens to RGB, downscales to
a size vision models accept and re-encodes. Re-encoding also drops all metadata (EXIF, GPS
position, camera serials) before the image can leave the machine.

Every rejection is an :class:`ImageRejected` whose ``message`` can be shown to the user as is.
"""

from __future__ import annotations

import base64
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MAX_BYTES: Final = 10 * 1024 * 1024
MAX_PIXELS: Final = 40_000_000
MAX_SIDE: Final = 2048
JPEG_QUALITY: Final = 90

# Pillow format ids we let Pillow even try. Restricting ``Image.open`` to these keeps the
# dozens of rarely used (and rarely audited) Pillow decoders away from untrusted bytes.
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats whose re-encoding should stay lossy (photos); everything else becomes PNG so
# that text in screenshots and scans keeps sharp edges.
_PHOTO_FORMATS: Final = frozenset({"JPEG", "MPO"})
# Errors Pillow raises while decoding damaged data (struct.error and SyntaxError are raised
# by some plugins for malformed headers, e.g. TIFF and PNG chunks).
_DECODE_ERRORS: Final = (OSError, ValueError, SyntaxError, struct.error, EOFError)


class ImageRejected(ValueError):
    """An upload that must not be passed on to a model.

    ``message`` is user-facing (names the file and says what is wrong); ``reason`` is a short
    stable code for callers and metrics: empty, too_large, not_image, unsupported_format,
    corrupt, multi_frame, too_many_pixels, unreadable_file, outside_uploads.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class ValidatedImage:
    """A decoded, checked, RGB, size-limited and re-encoded image; safe to send to a model."""

    data: bytes
    mime: str
    width: int
    height: int
    original_format: str
    downscaled: bool
    name: str

    def data_url(self) -> str:
        """Base64 ``data:`` URL, the form OpenAI-compatible chat APIs accept in ``image_url``."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def validate_image(
    data: bytes,
    name: str = "upload",
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> ValidatedImage:
    """Check ``data`` is one supported, intact image and return it normalised.

    Raises :class:`ImageRejected` with a user-facing message when it is not. The byte limit
    is checked before anything is decoded and the pixel limit right after the header is
    parsed, so neither a huge upload nor a decompression bomb costs memory.
    """
    if max_bytes <= 0 or max_pixels <= 0 or max_side <= 0:
        raise ValueError("max_bytes, max_pixels and max_side must be positive")
    _require_strict_pillow()
    _check_byte_size(data, name, max_bytes)
    img = _open(data, name)
    try:
        _check_pixels(img, name, max_pixels)
        _check_single_frame(img, name)
        original_format = str(img.format)
        rgb = _decode_upright_rgb(img, name)
    finally:
        img.close()
    resized, downscaled = _downscale(rgb, max_side)
    encoded, mime = _encode(resized, original_format)
    return ValidatedImage(
        data=encoded,
        mime=mime,
        width=resized.width,
        height=resized.height,
        original_format=original_format,
        downscaled=downscaled,
        name=name,
    )


def validate_image_file(
    path: str | Path,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> ValidatedImage:
    """Read ``path`` and validate it; missing or unreadable files are an :class:`ImageRejected`.

    The size is checked with ``stat`` first so an oversized file is never read into memory.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImageRejected(f"{p} is not a regular file", reason="unreadable_file")
        _check_byte_size_value(size, p.name, max_bytes)
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ImageRejected(f"{p} does not exist", reason="unreadable_file") from exc
    except PermissionError as exc:
        raise ImageRejected(f"{p} cannot be read: permission denied", reason="unreadable_file") from exc
    except IsADirectoryError as exc:  # pragma: no cover - is_file() catches this first
        raise ImageRejected(f"{p} is a directory, not an image", reason="unreadable_file") from exc
    except OSError as exc:
        raise ImageRejected(f"{p} cannot be read: {exc.strerror or exc}", reason="unreadable_file") from exc
    return validate_image(data, p.name, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side)


# --------------------------------------------------------------------------- the uploads folder

OUTSIDE_UPLOADS: Final = (
    "I can only look at images uploaded to this conversation, and the image I was given is not one of "
    "them, so nothing was read. Please attach the image to your message."
)
UPLOAD_GONE: Final = "The uploaded image is no longer available, so nothing was read. Please attach it again."


def uploads_dir(data_dir: str | Path) -> Path:
    """Where every door stores uploads (``Settings.data_dir / "uploads"``)."""
    return Path(data_dir) / "uploads"


def confined_upload_path(path: str | Path, uploads: str | Path) -> Path:
    """``path`` resolved, when it names something inside ``uploads``; else :class:`ImageRejected`.

    Decided on the path alone, before the file is touched, so the refusal is the same whether
    the file exists or not and says nothing about it: no ``..`` component, and the real path
    (symlinks followed) must lie under the real uploads folder.
    """
    raw = os.fspath(path) if path else ""
    if not raw or "\x00" in raw or ".." in Path(raw).parts:
        raise ImageRejected(OUTSIDE_UPLOADS, reason="outside_uploads")
    root = os.path.realpath(uploads)
    real = os.path.realpath(raw)
    if real == root or os.path.commonpath([root, real]) != root:
        raise ImageRejected(OUTSIDE_UPLOADS, reason="outside_uploads")
    return Path(real)


def validate_upload(
    path: str | Path,
    uploads: str | Path,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> ValidatedImage:
    """The one way a graph run opens an ``image_path``: only inside the uploads folder
    (:func:`confined_upload_path`), then :func:`validate_image_file`. A missing or unreadable
    upload is reported without naming where it was stored."""
    real = confined_upload_path(path, uploads)
    try:
        return validate_image_file(real, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side)
    except ImageRejected as exc:
        if exc.reason == "unreadable_file":
            raise ImageRejected(UPLOAD_GONE, reason="unreadable_file") from exc
        raise


def stash_local_image(path: str | Path, uploads: str | Path) -> Path:
    """For the local doors (Python API, CLI), whose caller may read the file anyway: a file
    outside the uploads folder is copied into a fresh folder there, so the graph only ever opens
    uploads. One already inside is used as is; a missing, odd or oversized file is passed on
    unchanged (the vision specialist refuses it)."""
    import shutil
    import uuid

    try:
        return confined_upload_path(path, uploads)
    except ImageRejected:
        pass
    src = Path(path)
    try:
        if not src.is_file() or src.stat().st_size > MAX_BYTES:
            return src
        dest = Path(uploads) / uuid.uuid4().hex / (src.name or "upload")
        dest.parent.mkdir(parents=True, mode=0o700)
        shutil.copyfile(src, dest)
    except OSError:
        return src
    return dest


# Raster formats the vision path reads, by the Pillow format id that content sniffing finds.
_UPLOAD_TYPES: Final = {"JPEG": ("image/jpeg", ".jpg"), "MPO": ("image/jpeg", ".jpg"), "PNG": ("image/png", ".png"),
                        "WEBP": ("image/webp", ".webp"), "GIF": ("image/gif", ".gif"),
                        "BMP": ("image/bmp", ".bmp"), "TIFF": ("image/tiff", ".tiff")}


@dataclass(frozen=True)
class UploadType:
    """What an upload is, decided from its bytes (never the client's MIME type or file name)."""

    format: str  # Pillow's id: "PNG", "JPEG", ...
    mime: str
    extension: str


def sniff_upload(data: bytes, name: str = "upload") -> UploadType:
    """Type an upload by its content: one of the raster formats the vision path supports, or an
    :class:`ImageRejected` saying what it is instead (an SVG, a PDF, HTML...). Only the header is
    parsed here; :func:`validate_image` decodes it fully later."""
    _check_byte_size(data, name, max(len(data), 1))  # bytes, and not empty; callers bound the size
    img = _open(data, name)
    try:
        fmt = str(img.format)
    finally:
        img.close()
    if fmt not in _UPLOAD_TYPES:  # pragma: no cover - _open admits ALLOWED_FORMATS only
        raise _not_an_image(data, name)
    mime, extension = _UPLOAD_TYPES[fmt]
    return UploadType(fmt, mime, extension)


def sniff_upload_file(path: str | Path, name: str | None = None) -> UploadType:
    """:func:`sniff_upload` on a file (read up to the byte limit)."""
    p = Path(path)
    label = name or p.name
    size = p.stat().st_size
    _check_byte_size_value(size, label, MAX_BYTES)
    return sniff_upload(p.read_bytes(), label)


# --------------------------------------------------------------------------- checks


def _require_strict_pillow() -> None:
    """Refuse to run if some other module told Pillow to accept truncated images.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is process-wide; when it is True, Pillow silently
    pads a cut-off file with grey and we would pass half a receipt to a model as if whole.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; image validation "
            "cannot detect truncated uploads. Find the module that sets it and remove that."
        )


def _check_byte_size(data: bytes, name: str, max_bytes: int) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"validate_image expects bytes, got {type(data).__name__}")
    _check_byte_size_value(len(data), name, max_bytes)


def _check_byte_size_value(size: int, name: str, max_bytes: int) -> None:
    if size == 0:
        raise ImageRejected(f"{name}: the file is empty (0 bytes)", reason="empty")
    if size > max_bytes:
        raise ImageRejected(
            f"{name}: file is {_format_mb(size)}; the limit is {_format_mb(max_bytes)}",
            reason="too_large",
        )


def _format_mb(n: int) -> str:
    """25.3 MB / 10 MB; small limits (tests, tight configs) fall back to KB or bytes."""
    if n >= 1024 * 1024:
        mb = n / (1024 * 1024)
        return f"{mb:.0f} MB" if mb == int(mb) else f"{mb:.1f} MB"
    if n >= 1024:
        kb = n / 1024
        return f"{kb:.0f} KB" if kb == int(kb) else f"{kb:.1f} KB"
    return f"{n:,} bytes"


def _open(data: bytes, name: str) -> Image.Image:
    """Parse the header (no pixel decoding yet) with only the allowed decoders."""
    try:
        return Image.open(io.BytesIO(bytes(data)), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            f"{name}: image dimensions are too large to decode safely ({exc})",
            reason="too_many_pixels",
        ) from exc
    except UnidentifiedImageError as exc:
        raise _not_an_image(data, name) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"{name} is truncated or corrupt: its header cannot be parsed", reason="corrupt") from exc


def _not_an_image(data: bytes, name: str) -> ImageRejected:
    """Say what the bytes look like, so 'receipt.png' that is really a PDF is obvious."""
    kind = sniff_non_image(data)
    supported = ", ".join(ALLOWED_FORMATS)
    if kind in _UNSUPPORTED_IMAGE_KINDS:
        return ImageRejected(
            f"{name} is a {kind}, which is not supported: convert it to JPEG or PNG (supported: {supported})",
            reason="unsupported_format",
        )
    if kind is not None:
        return ImageRejected(f"{name} is not an image: its content looks like {kind}", reason="not_image")
    return ImageRejected(
        f"{name} is not an image: its content is not a recognised image format (supported: {supported})",
        reason="not_image",
    )


_UNSUPPORTED_IMAGE_KINDS: Final = frozenset(
    {"HEIC/HEIF image", "AVIF image", "SVG image", "ICO icon", "JPEG 2000 image", "Photoshop file"}
)


def sniff_non_image(data: bytes) -> str | None:
    """Best-effort label for common non-image (or unsupported image) uploads, by magic bytes.

    Only used to word the rejection message; the decision itself is Pillow's.
    """
    head = bytes(data[:512])
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in {b"avif", b"avis"}:
            return "AVIF image"
        if brand in {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}:
            return "HEIC/HEIF image"
        return "an MP4/QuickTime video"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (or an Office document)"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "a legacy Microsoft Office document"
    if head.startswith(b"8BPS"):
        return "Photoshop file"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO icon"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000 image"
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return "SVG image"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if stripped.startswith(b"<?xml"):
        return "an XML document"
    if stripped.startswith((b"{", b"[")):
        return "JSON or other text"
    if head.startswith((b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return "a compressed archive"
    if _looks_like_text(head):
        return "plain text"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def _check_pixels(img: Image.Image, name: str, max_pixels: int) -> None:
    """Reject by declared dimensions before decoding: the decompression-bomb guard.

    Pillow's own global guard (``Image.MAX_IMAGE_PIXELS``) still applies on top; we do not
    change that process-wide setting.
    """
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageRejected(f"{name} is truncated or corrupt: it has no pixels", reason="corrupt")
    if w * h > max_pixels:
        raise ImageRejected(
            f"{name}: image is {w * h:,} pixels ({w} x {h}); the limit is {max_pixels:,}",
            reason="too_many_pixels",
        )


def _check_single_frame(img: Image.Image, name: str) -> None:
    """Reject animations and multi-page files: the model would silently see only one frame.

    MPO (a JPEG with an embedded preview/second view, common from phone and 3D cameras) is
    the exception: its first frame *is* the photo, so it is accepted and only that is used.
    """
    if img.format == "MPO":
        return
    try:
        frames = int(getattr(img, "n_frames", 1))
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"{name} is truncated or corrupt: its frames cannot be read", reason="corrupt") from exc
    if frames > 1:
        raise ImageRejected(
            f"{name}: animated GIFs / multi-page TIFFs are not supported: upload a single "
            f"frame (this {img.format} file has {frames} frames)",
            reason="multi_frame",
        )


def _decode_upright_rgb(img: Image.Image, name: str) -> Image.Image:
    """Decode every pixel (catching truncation), rotate per EXIF, and flatten to RGB."""
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
        return _to_rgb(upright if upright is not None else img)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            f"{name}: image dimensions are too large to decode safely ({exc})",
            reason="too_many_pixels",
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"{name} is truncated or corrupt: it cannot be fully decoded", reason="corrupt") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and 16-bit/float data scaled, not clipped.

    A plain ``convert("RGB")`` turns transparent screenshot backgrounds black (black text
    vanishes) and clips 16-bit scans to almost pure white.
    """
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and float(arr.max()) > 255.0:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _downscale(img: Image.Image, max_side: int) -> tuple[Image.Image, bool]:
    """Shrink so the longer side is at most ``max_side``, keeping the aspect ratio."""
    w, h = img.size
    longest = max(w, h)
    if longest <= max_side:
        return img, False
    scale = max_side / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), True


def _encode(img: Image.Image, original_format: str) -> tuple[bytes, str]:
    """JPEG for photos (PNG would be 5-10x larger), PNG for everything else (sharp text)."""
    buf = io.BytesIO()
    if original_format in _PHOTO_FORMATS:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return buf.getvalue(), "image/jpeg"
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue(), "image/png"
