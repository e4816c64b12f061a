"""Upload validation: every bad file is rejected with a message naming the file and reason."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from tools.vision.images import ImageRejected, ValidatedImage, validate_image, validate_image_file


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noisy(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random pixels: compresses badly, so a cut file really misses image data."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def _rejected(data: bytes, name: str, **kwargs: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        validate_image(data, name, **kwargs)
    assert name in info.value.message
    assert str(info.value) == info.value.message
    return info.value


# --------------------------------------------------------------------------- rejections


def test_zero_bytes_is_rejected_as_empty() -> None:
    err = _rejected(b"", "empty.png")
    assert err.reason == "empty"
    assert err.message == "empty.png: the file is empty (0 bytes)"


def test_pdf_named_png_is_identified_as_pdf() -> None:
    err = _rejected(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "receipt.png")
    assert err.reason == "not_image"
    assert err.message == "receipt.png is not an image: its content looks like a PDF document"


def test_random_bytes_are_not_an_image() -> None:
    data = b"\x00\x9c" + random.Random(1).randbytes(4096)
    err = _rejected(data, "blob.jpg")
    assert err.reason == "not_image"
    assert "blob.jpg is not an image" in err.message
    assert "not a recognised image format" in err.message


def test_heic_is_named_as_unsupported_image_format() -> None:
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    err = _rejected(data, "IMG_0001.HEIC")
    assert err.reason == "unsupported_format"
    assert "HEIC" in err.message and "convert it to JPEG or PNG" in err.message


def test_truncated_jpeg_is_rejected() -> None:
    whole = _encode(_noisy((256, 256)), "JPEG", quality=90)
    err = _rejected(whole[: len(whole) // 2], "image.jpg")
    assert err.reason == "corrupt"
    assert err.message.startswith("image.jpg is truncated or corrupt")


def test_truncated_png_is_rejected() -> None:
    whole = _encode(_noisy((128, 128)), "PNG")
    err = _rejected(whole[: len(whole) // 2], "shot.png")
    assert err.reason == "corrupt"
    assert "truncated or corrupt" in err.message


def test_animated_gif_is_rejected() -> None:
    # Different colours: Pillow merges identical consecutive frames when writing GIFs.
    frames = [Image.new("RGB", (20, 20), "red"), Image.new("RGB", (20, 20), "blue")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    err = _rejected(data, "cat.gif")
    assert err.reason == "multi_frame"
    assert "animated GIFs / multi-page TIFFs are not supported: upload a single frame" in err.message
    assert "2 frames" in err.message


def test_multi_page_tiff_is_rejected() -> None:
    pages = [Image.new("RGB", (30, 40), "white"), Image.new("RGB", (30, 40), "black")]
    data = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    err = _rejected(data, "scan.tiff")
    assert err.reason == "multi_frame"
    assert "TIFF file has 2 frames" in err.message


def test_oversized_file_is_rejected_before_decoding() -> None:
    # Not an image at all: proves the size check runs before any decoding.
    err = _rejected(b"\x00" * 2048, "big.png", max_bytes=1024)
    assert err.reason == "too_large"
    assert err.message == "big.png: file is 2 KB; the limit is 1 KB"


def test_oversized_message_in_megabytes() -> None:
    err = _rejected(b"\x00" * int(25.3 * 1024 * 1024), "photo.jpg")
    assert err.message == "photo.jpg: file is 25.3 MB; the limit is 10 MB"


def test_too_many_pixels_is_rejected() -> None:
    data = _encode(Image.new("RGB", (200, 100), "white"), "PNG")
    err = _rejected(data, "wide.png", max_pixels=10_000)
    assert err.reason == "too_many_pixels"
    assert err.message == "wide.png: image is 20,000 pixels (200 x 100); the limit is 10,000"


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression-bomb header)."""
    png = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr_start = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data = bytearray(png[ihdr_start + 8 : ihdr_start + 8 + 13])
    data[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(data)) & 0xFFFFFFFF)
    return png[: ihdr_start + 8] + bytes(data) + crc + png[ihdr_start + 8 + 13 + 4 :]


def test_decompression_bomb_header_is_rejected_without_decoding() -> None:
    err = _rejected(_png_with_declared_size(100_000, 100_000), "bomb.png")
    assert err.reason == "too_many_pixels"
    assert "bomb.png" in err.message


def test_bomb_below_pillow_limit_is_caught_by_our_limit() -> None:
    err = _rejected(_png_with_declared_size(8_000, 6_000), "big.png")
    assert err.message == "big.png: image is 48,000,000 pixels (8000 x 6000); the limit is 40,000,000"


def test_refuses_to_run_when_truncated_images_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_image(_encode(Image.new("RGB", (4, 4)), "PNG"), "ok.png")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "receipt.jpg"
    with pytest.raises(ImageRejected) as info:
        validate_image_file(path)
    assert info.value.reason == "unreadable_file"
    assert info.value.message == f"{path} does not exist"


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as info:
        validate_image_file(tmp_path)
    assert str(tmp_path) in info.value.message
    assert "not a regular file" in info.value.message


def test_file_rejection_uses_file_name(tmp_path: Path) -> None:
    path = tmp_path / "invoice.png"
    path.write_bytes(b"%PDF-1.4 fake")
    with pytest.raises(ImageRejected) as info:
        validate_image_file(path)
    assert info.value.message == "invoice.png is not an image: its content looks like a PDF document"


# --------------------------------------------------------------------------- accepted images


def test_huge_image_is_downscaled_keeping_aspect() -> None:
    data = _encode(Image.new("RGB", (3000, 1500), "white"), "PNG")
    img = validate_image(data, "wide.png")
    assert (img.width, img.height) == (2048, 1024)
    assert img.downscaled is True
    with Image.open(io.BytesIO(img.data)) as decoded:
        assert decoded.size == (2048, 1024)


def test_small_image_is_not_downscaled() -> None:
    img = validate_image(_encode(Image.new("RGB", (640, 480), "white"), "PNG"), "small.png")
    assert (img.width, img.height, img.downscaled) == (640, 480, False)


def test_exif_orientation_is_applied() -> None:
    # Stored 40 wide x 20 high, left half red, right half blue; EXIF 6 = "rotate 90° CW
    # to display", so the upright image is 20 x 40 with red on top.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    img = validate_image(_encode(stored, "JPEG", quality=95, exif=exif), "phone.jpg")
    assert (img.width, img.height) == (20, 40)
    with Image.open(io.BytesIO(img.data)) as upright:
        top, bottom = upright.getpixel((10, 3)), upright.getpixel((10, 36))
        assert "exif" not in upright.info  # metadata (incl. GPS) is dropped on re-encode
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_png_named_jpg_is_accepted_by_content() -> None:
    img = validate_image(_encode(Image.new("RGB", (10, 10), "white"), "PNG"), "photo.jpg")
    assert img.original_format == "PNG"
    assert img.mime == "image/png"
    assert img.name == "photo.jpg"


def test_jpeg_stays_jpeg_and_data_url_round_trips() -> None:
    img = validate_image(_encode(_noisy((64, 48)), "JPEG"), "cam.jpg")
    assert isinstance(img, ValidatedImage)
    assert img.mime == "image/jpeg"
    prefix = "data:image/jpeg;base64,"
    url = img.data_url()
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :]) == img.data


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "GIF", "TIFF"])
def test_other_single_frame_formats_are_accepted(fmt: str) -> None:
    img = validate_image(_encode(Image.new("RGB", (12, 8), (0, 128, 255)), fmt), f"x.{fmt.lower()}")
    assert img.original_format == fmt
    assert (img.width, img.height) == (12, 8)


def test_transparency_becomes_white_not_black() -> None:
    data = _encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")
    img = validate_image(data, "logo.png")
    with Image.open(io.BytesIO(img.data)) as out:
        assert out.mode == "RGB"
        assert out.getpixel((4, 4)) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    data = _encode(Image.new("I;16", (4, 4), 40_000), "PNG")
    img = validate_image(data, "scan16.png")
    with Image.open(io.BytesIO(img.data)) as out:
        value = out.getpixel((1, 1))
    assert value[0] == value[1] == value[2]
    assert 150 <= value[0] <= 160  # 40000 / 257 = 155.6; a clip would give 255
