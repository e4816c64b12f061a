"""Offline OCR (RapidOCR, ONNX): image pixels to recognised text boxes and printed rows.

Why layout matters: a receipt prints the item on the left and its price far to the right on
the same printed line, and OCR returns them as separate boxes. ``OcrResult.rows()`` regroups
boxes into printed rows by vertical overlap, and the extraction rules in
:mod:`tools.vision.receipts` work on rows: "the amount on the row that says SUMME", "the name
above the street address".

The RapidOCR models (PP-OCRv4 det/rec, mobile cls) ship inside the pinned
``rapidocr-onnxruntime`` wheel; loading them needs no network. One engine is created per
process on first use (``get_engine``) and calls are serialised with a lock.
"""

from __future__ import annotations

import io
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from PIL import Image

from tools.vision.images import ValidatedImage, validate_image

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rapidocr_onnxruntime import RapidOCR

# Files the pinned rapidocr-onnxruntime==1.4.4 wheel ships in its ``models`` folder.
_MODEL_FILES: Final = (
    "ch_PP-OCRv4_det_infer.onnx",
    "ch_PP-OCRv4_rec_infer.onnx",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx",
)


class OcrUnavailable(RuntimeError):
    """The OCR engine cannot be loaded (package or model files missing)."""


# --------------------------------------------------------------------------- OCR data


@dataclass
class OcrLine:
    """One recognised text box: axis-aligned ``box`` = (x0, y0, x1, y1) in image pixels."""

    text: str
    box: tuple[float, float, float, float]
    score: float

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center_y(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass
class OcrResult:
    """All text boxes of one image, in no particular order; use ``rows()``/``text()``."""

    lines: list[OcrLine]

    def rows(self) -> list[list[OcrLine]]:
        """Boxes grouped into printed rows (top to bottom), each row left to right."""
        return group_rows(self.lines)

    def text(self) -> str:
        """Reading-order text: one printed row per line, wide gaps kept as 3 spaces.

        The wide gap keeps "BIO HONIG   3,29 C" recognisable as item + price for an LLM.
        """
        return "\n".join(join_row(row, wide_gap="   ") for row in self.rows())

    @classmethod
    def from_rapidocr(cls, raw: Sequence[Sequence[Any]] | None) -> OcrResult:
        """Build from RapidOCR's ``[[4 corner points], text, score], ...`` (None = no text).

        Text is NFKC-normalised: the recogniser's Chinese dictionary sometimes returns
        full-width punctuation ("，" "（" "！") for Latin receipts.
        """
        lines: list[OcrLine] = []
        for points, text, score in raw or []:
            xs = [float(p[0]) for p in points]
            ys = [float(p[1]) for p in points]
            clean = unicodedata.normalize("NFKC", str(text)).strip()
            if clean:
                lines.append(OcrLine(clean, (min(xs), min(ys), max(xs), max(ys)), float(score)))
        return cls(lines)


def group_rows(lines: Iterable[OcrLine], min_overlap: float = 0.35) -> list[list[OcrLine]]:
    """Group boxes whose vertical extents overlap into rows.

    Overlap is measured as 1-D intersection-over-union against the row's mean band, not as
    "any overlap": a tall logo would otherwise swallow the small address line beside it, and
    on a slightly skewed scan neighbouring rows touch. A box joins the row it overlaps most
    (IoU >= ``min_overlap``); rows are returned top to bottom, boxes left to right.
    """
    ordered = sorted(lines, key=lambda ln: (ln.center_y, ln.box[0]))
    rows: list[list[OcrLine]] = []
    bands: list[tuple[float, float]] = []
    for line in ordered:
        y0, y1 = line.box[1], line.box[3]
        best, best_iou = -1, min_overlap
        for i in range(len(rows) - 1, max(-1, len(rows) - 6), -1):
            iou = _iou_1d(bands[i], (y0, y1))
            if iou >= best_iou:
                best, best_iou = i, iou
        if best < 0:
            rows.append([line])
            bands.append((y0, y1))
        else:
            rows[best].append(line)
            n = len(rows[best])
            b0, b1 = bands[best]
            bands[best] = (b0 + (y0 - b0) / n, b1 + (y1 - b1) / n)
    order = sorted(range(len(rows)), key=lambda i: (bands[i][0] + bands[i][1]) / 2)
    return [sorted(rows[i], key=lambda ln: ln.box[0]) for i in order]


def _iou_1d(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    if inter <= 0:
        return 0.0
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def join_row(row: Sequence[OcrLine], wide_gap: str = " ") -> str:
    """Join a row's boxes; a gap wider than 1.5 text heights becomes ``wide_gap``."""
    parts: list[str] = []
    prev: OcrLine | None = None
    for line in row:
        if prev is not None:
            gap = line.box[0] - prev.box[2]
            parts.append(wide_gap if gap > 1.5 * max(prev.height, line.height) else " ")
        parts.append(line.text)
        prev = line
    return "".join(parts)


# --------------------------------------------------------------------------- engine

_ENGINE: RapidOCR | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> RapidOCR:
    """The process-wide RapidOCR engine, created on first use (about 0.1-1 s).

    Raises :class:`OcrUnavailable` with an actionable message if the package or its bundled
    model files are missing (RapidOCR itself would fail with an obscure onnxruntime error).
    """
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _load_engine()
        return _ENGINE


def _load_engine() -> RapidOCR:
    try:
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable("rapidocr-onnxruntime is not installed; run `uv sync` to install the OCR engine") from exc
    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    missing = [name for name in _MODEL_FILES if not (models / name).is_file()]
    if missing:
        raise OcrUnavailable(
            f"RapidOCR model files missing from {models}: {', '.join(missing)}; reinstall rapidocr-onnxruntime==1.4.4"
        )
    return RapidOCR()


def read_image(img: ValidatedImage | bytes) -> OcrResult:
    """OCR an image. Raw bytes are validated first (raises ``ImageRejected``)."""
    validated = img if isinstance(img, ValidatedImage) else validate_image(img)
    with Image.open(io.BytesIO(validated.data)) as pil:
        rgb = pil.convert("RGB")
    engine = get_engine()
    # Serialised: RapidOCR objects are not documented as thread-safe and onnxruntime
    # already uses every core for one image, so parallel calls would not be faster.
    with _ENGINE_LOCK:
        raw, _elapsed = engine(rgb)
    return OcrResult.from_rapidocr(raw)
