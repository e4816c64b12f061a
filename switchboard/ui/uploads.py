"""Images attached to a chat message: which one to use, and its copy under the data dir (typed by
its content, never by the client's claims)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from tools.vision.images import ImageRejected, sniff_upload_file

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def upload_dir(data_dir: Path, thread_id: str) -> Path:
    return data_dir / "uploads" / _SAFE_NAME.sub("_", thread_id)


def stash_upload(element: Any, data_dir: Path, thread_id: str) -> Path:
    """Copy an upload out of Chainlit's per-session folder (deleted when the session ends) into
    the data dir, keeping its file name's stem so the vision specialist's messages can name it.
    Typed by its bytes, never the client's MIME type or extension: anything but a raster image
    the vision path reads (an SVG, a PDF...) raises :class:`ImageRejected` and is not stored;
    the stored file's extension is the one its content shows."""
    stem = _SAFE_NAME.sub("_", Path(element.name or "upload").stem).strip("._") or "upload"
    kind = sniff_upload_file(element.path, name=Path(element.name or "upload").name)
    dest = upload_dir(data_dir, thread_id) / _SAFE_NAME.sub("_", str(element.id)) / f"{stem}{kind.extension}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(element.path, dest)
    return dest


def _is_supported_image(element: Any) -> bool:
    try:
        sniff_upload_file(element.path)
    except (ImageRejected, OSError):
        return False
    return True


def pick_attachment(elements: list[Any]) -> Any | None:
    """The first file whose *content* is a supported image; failing that the first file
    (:func:`stash_upload` refuses it with a message saying what it is)."""
    files = [e for e in elements or [] if getattr(e, "path", None)]
    images = [e for e in files if _is_supported_image(e)]
    return (images or files or [None])[0]
