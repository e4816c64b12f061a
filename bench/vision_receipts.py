"""Benchmark the offline vision pipeline on the Softmatic German receipt scans.

Pipeline per receipt (exactly what the vision specialist runs): ``validate_image_file``
(decode, EXIF, RGB, downscale to max 2048 px) -> RapidOCR ``read_image`` ->
``extract_receipt_fields``. The clock covers all three; the one-off engine load is timed
separately.

``--engine tesseract`` swaps only the OCR step for the Debian ``tesseract`` CLI (install it
with ``scripts/tesseract.sh``): the validated image is written to a temporary PNG, read with
``tesseract IMG stdout -l deu+eng --psm 6 tsv`` in a subprocess, and the TSV word boxes are
merged into one ``OcrLine`` per Tesseract line (block/paragraph/line numbers; box = union of
the word boxes, score = mean word confidence / 100). The same ``extract_receipt_fields``
rules then run on that, so the comparison isolates the OCR engine. Tesseract has no
resident engine: every call loads its models, and that cost is inside the per-image time.
``--psm 6`` (one uniform block of text) is the default because it read these receipts better
than ``--psm 4`` (single column of variable sizes): on all 26, total 25 vs 23, date 21 vs 19,
merchant exact 14 vs 12, merchant lenient 23 vs 21 correct. Tesseract runs single-threaded
(``OMP_THREAD_LIMIT=1`` unless set): its OpenMP threads made it ~2x slower on 2 shared cores.

Ground truth (``labels.jsonl``, from the upstream file names): merchant slug, date, total.
Scoring:
  * total:    extracted normalised decimal == label ("24.23");
  * date:     extracted ISO date == label DD.MM.YYYY converted to ISO;
  * merchant: exact = after normalisation (lower-case, umlauts folded, every run of
              non-alphanumerics -> one space, trimmed) the extracted name equals the slug;
              contains = the slug occurs in the normalised name with spaces removed
              ("HORNBACH Baumarkt" contains "hornbach"). Labels are brand slugs ("aldi",
              "apotheke"), so "contains" is the figure that reflects usefulness.
A field the extractor reports as unreadable (None) is counted separately from a wrong one:
abstaining is the intended behaviour when the scan does not show the field.

Usage (from the repo root):
    .venv/bin/python bench/vision_receipts.py [--engine rapidocr|tesseract] [--psm N]
                                               [--limit N] [--verbose] [--data DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make `tools` importable
    sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from tools.observability.stats import percentile  # noqa: E402
from tools.vision.images import MAX_SIDE, ImageRejected, ValidatedImage, validate_image_file  # noqa: E402
from tools.vision.ocr import OcrLine, OcrResult, OcrUnavailable, get_engine, read_image  # noqa: E402
from tools.vision.parsing import fold, normalise_date, parse_amount  # noqa: E402
from tools.vision.receipts import ReceiptFields, extract_receipt_fields  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "vision" / "softmatic_receipts_de"
FIELDS = ("total", "date", "merchant")
ENGINES = ("rapidocr", "tesseract")
ENGINE_TITLES = {"rapidocr": "RapidOCR", "tesseract": "Tesseract"}
TESSERACT_LANGS = "deu+eng"
DEFAULT_PSM = 6  # "one uniform block of text": read these receipts better than 4; see module doc
TESSERACT_TIMEOUT = 120.0  # seconds per image; a hung subprocess must not stall the bench


@dataclass
class Label:
    image: Path
    merchant: str
    date_iso: str
    total: str


@dataclass
class Outcome:
    label: Label
    fields: ReceiptFields | None
    seconds: float
    error: str | None = None

    def total_ok(self) -> bool:
        return self.fields is not None and self.fields.total == self.label.total

    def date_ok(self) -> bool:
        return self.fields is not None and self.fields.date == self.label.date_iso

    def merchant_exact(self) -> bool:
        return self.fields is not None and normalise_merchant(self.fields.merchant) == self.label.merchant

    def merchant_contains(self) -> bool:
        if self.fields is None or self.fields.merchant is None:
            return False
        return self.label.merchant.replace(" ", "") in normalise_merchant(self.fields.merchant).replace(" ", "")


def normalise_merchant(name: str | None) -> str:
    """Lower-case, umlauts folded, non-alphanumeric runs -> one space, trimmed."""
    if name is None:
        return ""
    return re.sub(r"[^a-z0-9]+", " ", fold(name)).strip()


def load_labels(data_dir: Path) -> list[Label]:
    """Read labels.jsonl; a missing folder or file is a clear error, not an empty run."""
    labels_file = data_dir / "labels.jsonl"
    if not labels_file.is_file():
        raise SystemExit(
            f"error: {labels_file} not found. Pass --data pointing at the softmatic_receipts_de "
            "folder (it holds labels.jsonl and the A/ scans)."
        )
    labels: list[Label] = []
    for n, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            day, month, year = row["date"].split(".")
            labels.append(
                Label(
                    image=data_dir / row["image"],
                    merchant=normalise_merchant(row["merchant"]),
                    date_iso=f"{year}-{month}-{day}",
                    total=row["total_eur"],
                )
            )
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise SystemExit(f"error: {labels_file}:{n} is not a valid label row: {exc}") from exc
    return labels


OcrReader = Callable[[ValidatedImage], OcrResult]


def run_one(label: Label, max_side: int, reader: OcrReader = read_image) -> Outcome:
    start = time.perf_counter()
    try:
        image = validate_image_file(label.image, max_side=max_side)
        fields = extract_receipt_fields(reader(image))
    except ImageRejected as exc:
        return Outcome(label, None, time.perf_counter() - start, error=exc.message)
    except OcrUnavailable as exc:  # one image the OCR engine failed on; the rest still count
        return Outcome(label, None, time.perf_counter() - start, error=str(exc))
    return Outcome(label, fields, time.perf_counter() - start)


# --------------------------------------------------------------------------- Tesseract


def check_tesseract() -> str:
    """The ``tesseract`` executable, after checking it lists the deu and eng models.

    Raises :class:`OcrUnavailable` with the install command when either is missing.
    """
    exe = shutil.which("tesseract")
    if exe is None:
        raise OcrUnavailable("the tesseract CLI is not installed; run scripts/tesseract.sh (Debian packages)")
    try:
        listed = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OcrUnavailable(f"`tesseract --list-langs` failed: {exc}") from exc
    langs = set(listed.stdout.split())
    missing = [lang for lang in TESSERACT_LANGS.split("+") if lang not in langs]
    if missing:
        raise OcrUnavailable(
            f"tesseract has no model for {', '.join(missing)}; run scripts/tesseract.sh "
            "(installs tesseract-ocr-deu and tesseract-ocr-eng)"
        )
    return exe


def tesseract_reader(exe: str, psm: int) -> OcrReader:
    """A reader that OCRs a validated image with the tesseract CLI at page segmentation ``psm``."""

    def read(image: ValidatedImage) -> OcrResult:
        return OcrResult(tsv_to_lines(run_tesseract(exe, image, psm)))

    return read


def run_tesseract(exe: str, image: ValidatedImage, psm: int) -> str:
    """TSV output of ``tesseract IMG stdout -l deu+eng --psm N tsv`` on the image as a temp PNG."""
    with tempfile.TemporaryDirectory(prefix="sb-tess-") as tmp:
        png = Path(tmp) / "receipt.png"
        if image.mime == "image/png":
            png.write_bytes(image.data)
        else:  # re-encode losslessly: the same pixels RapidOCR is given
            with Image.open(io.BytesIO(image.data)) as pil:
                pil.convert("RGB").save(png, format="PNG", compress_level=1)
        cmd = [exe, str(png), "stdout", "-l", TESSERACT_LANGS, "--psm", str(psm), "tsv"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TESSERACT_TIMEOUT, env=_tesseract_env())
        except subprocess.TimeoutExpired as exc:
            raise OcrUnavailable(f"tesseract took longer than {TESSERACT_TIMEOUT:.0f}s on {image.name}") from exc
        except OSError as exc:
            raise OcrUnavailable(f"could not run tesseract: {exc}") from exc
    if done.returncode != 0:
        raise OcrUnavailable(f"tesseract exited {done.returncode} on {image.name}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _tesseract_env() -> dict[str, str]:
    # Tesseract's OpenMP build spins one thread per core; the validated receipts are small and
    # the machine is shared, so the default is one thread unless the caller set a limit.
    env = dict(os.environ)
    env.setdefault("OMP_THREAD_LIMIT", "1")
    return env


def tsv_to_lines(tsv: str) -> list[OcrLine]:
    """Tesseract TSV word rows -> one ``OcrLine`` per (page, block, paragraph, line).

    Only word rows (level 5) with text and a real confidence (>= 0) count. The line's box is
    the union of its word boxes, its text the words joined by one space (NFKC-normalised, as
    for RapidOCR), its score the mean word confidence scaled to 0..1.
    """
    rows = tsv.splitlines()
    if not rows:
        return []
    header = rows[0].split("\t")
    col = {name: i for i, name in enumerate(header)}
    needed = ("level", "page_num", "block_num", "par_num", "line_num", "left", "top", "width", "height", "conf", "text")
    if any(name not in col for name in needed):
        raise OcrUnavailable(f"unexpected tesseract TSV header: {rows[0][:200]!r}")
    groups: dict[tuple[int, ...], list[tuple[str, float, float, float, float, float]]] = {}
    for raw in rows[1:]:
        cells = raw.split("\t")
        if len(cells) < len(header) or cells[col["level"]] != "5":
            continue
        text = unicodedata.normalize("NFKC", cells[col["text"]]).strip()
        conf = float(cells[col["conf"]])
        if not text or conf < 0:
            continue
        key = tuple(int(cells[col[k]]) for k in ("page_num", "block_num", "par_num", "line_num"))
        x0, y0 = float(cells[col["left"]]), float(cells[col["top"]])
        x1, y1 = x0 + float(cells[col["width"]]), y0 + float(cells[col["height"]])
        groups.setdefault(key, []).append((text, x0, y0, x1, y1, conf))
    lines: list[OcrLine] = []
    for words in groups.values():
        words.sort(key=lambda w: w[1])
        box = (min(w[1] for w in words), min(w[2] for w in words), max(w[3] for w in words), max(w[4] for w in words))
        lines.append(OcrLine(" ".join(w[0] for w in words), box, mean(w[5] for w in words) / 100))
    return lines


MODEL_PROMPT = (
    "Read this receipt. Reply with JSON only: "
    '{"merchant": shop name, "date": "YYYY-MM-DD", "total": amount paid as 12.34}. Use null for what you cannot read.'
)


def ask_model(handle: Any, image_url: str) -> ReceiptFields:
    """One vision-model call per receipt; the reply is parsed, never trusted blindly."""
    from langchain_core.messages import HumanMessage

    reply = handle.chat.invoke([HumanMessage(content=[
        {"type": "text", "text": MODEL_PROMPT},
        {"type": "image_url", "image_url": {"url": image_url}},
    ])], max_tokens=120)
    text = str(reply.content)
    match = re.search(r"\{.*\}", text, re.S)
    try:
        data = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        data = {}
    total = parse_amount(str(data.get("total"))) if data.get("total") is not None else None
    date = normalise_date(str(data["date"])) if data.get("date") else None
    merchant = data.get("merchant") or None
    unreadable = [k for k, v in (("merchant", merchant), ("date", date), ("total", total)) if v is None]
    return ReceiptFields(merchant=merchant, date=date, total=total, currency=None, line_items=[], unreadable=unreadable)


def run_model(name: str, labels: list[Label], args: argparse.Namespace) -> int:
    from switchboard.services import Services
    from switchboard.settings import Settings

    registry = Services(Settings()).registry
    spec = registry.specs.get(name)
    if spec is None or "vision" not in spec.capabilities:
        print(f"error: {name!r} is not a vision-capable model in {registry.settings.models_file}", file=sys.stderr)
        return 2
    handle = registry.handle(name, role="vision")
    outcomes = []
    for label in labels:
        start = time.perf_counter()
        try:
            image = validate_image_file(label.image, max_side=args.max_side)
        except ImageRejected as exc:
            outcomes.append(Outcome(label, None, time.perf_counter() - start, error=exc.message))
            continue
        outcomes.append(Outcome(label, ask_model(handle, image.data_url()), time.perf_counter() - start))
    if args.verbose:
        print_rows(outcomes)
    print_summary(outcomes, 0.0, args.max_side, title=f"Vision model {name} ({spec.model})")
    return 0


def field_counts(outcomes: list[Outcome], field: str) -> tuple[int, int, int]:
    """(correct, wrong, unreadable) for one field; failed images count as unreadable."""
    correct = wrong = unreadable = 0
    for o in outcomes:
        value = None if o.fields is None else getattr(o.fields, field)
        ok = {"total": o.total_ok, "date": o.date_ok, "merchant": o.merchant_exact}[field]()
        if ok:
            correct += 1
        elif value is None:
            unreadable += 1
        else:
            wrong += 1
    return correct, wrong, unreadable


def print_rows(outcomes: list[Outcome]) -> None:
    print(f"{'image':34} {'total':>16} {'date':>23} {'merchant':<32} {'sec':>5}")
    for o in outcomes:
        f = o.fields
        if f is None:
            print(f"{o.label.image.name:34} REJECTED: {o.error}")
            continue
        total = f"{'+' if o.total_ok() else '-'} {f.total or '—'}"
        if not o.total_ok():
            total += f" ({o.label.total})"
        when = f"{'+' if o.date_ok() else '-'} {f.date or '—'}"
        merchant = f"{'+' if o.merchant_exact() else '~' if o.merchant_contains() else '-'} {f.merchant or '—'}"
        print(f"{o.label.image.name:34} {total:>16} {when:>23} {merchant[:32]:<32} {o.seconds:5.2f}")
    print("(+ correct, - wrong or unreadable, ~ merchant matches only leniently, — unreadable)\n")


def print_summary(
    outcomes: list[Outcome], load_seconds: float, max_side: int, title: str = "", engine: str = "RapidOCR"
) -> None:
    n = len(outcomes)
    secs = [o.seconds for o in outcomes]
    print(title or f"Offline receipt pipeline (validate max_side={max_side} -> {engine} -> rules)", f"n={n}")
    print(f"{'metric':34} {'value':>10}  {'correct / wrong / unreadable':>28}")
    for field in FIELDS:
        c, w, u = field_counts(outcomes, field)
        label = "merchant exact (normalised)" if field == "merchant" else f"{field} exact"
        print(f"{label:34} {c / n:>10.1%}  {f'{c} / {w} / {u}':>28}")
    lenient = sum(o.merchant_contains() for o in outcomes)
    print(f"{'merchant contains (lenient)':34} {lenient / n:>10.1%}  {f'{lenient} of {n}':>28}")
    rejected = sum(o.fields is None for o in outcomes)
    print(f"{'images rejected / OCR failed':34} {rejected:>10}")
    print(f"{'seconds/image mean':34} {mean(secs):>10.2f}")
    print(f"{'seconds/image p50':34} {percentile(secs, 50):>10.2f}")
    print(f"{'seconds/image p95':34} {percentile(secs, 95):>10.2f}")
    print(f"{'OCR engine load (once), seconds':34} {load_seconds:>10.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default: {DEFAULT_DATA})")
    p.add_argument("--limit", type=int, default=None, help="only the first N receipts (quick run)")
    p.add_argument("--verbose", action="store_true", help="print one row per receipt")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help="validation downscale limit (px)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="rapidocr",
        help="offline OCR engine: rapidocr (models in the PyPI wheel) or tesseract (Debian CLI, scripts/tesseract.sh)",
    )
    p.add_argument(
        "--psm",
        type=int,
        default=DEFAULT_PSM,
        help=f"tesseract page segmentation mode (default {DEFAULT_PSM} = one uniform block; 4 = one column); tesseract only",
    )
    p.add_argument(
        "--model",
        default=None,
        help="also run a vision-capable model from the registry (switchboard/config/models.yaml) on the images",
    )
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if not 0 <= args.psm <= 13:
        p.error("--psm must be a tesseract page segmentation mode, 0..13")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = load_labels(args.data)[: args.limit]
    if args.model is not None:
        return run_model(args.model, labels, args)
    start = time.perf_counter()
    reader: OcrReader = read_image
    engine = ENGINE_TITLES[args.engine]
    try:
        if args.engine == "tesseract":
            reader = tesseract_reader(check_tesseract(), args.psm)
            engine = f"Tesseract {TESSERACT_LANGS} --psm {args.psm}"
        else:
            get_engine()
    except OcrUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - start
    outcomes = []
    for label in labels:
        outcomes.append(run_one(label, args.max_side, reader))
        if not args.verbose:
            print(".", end="", flush=True, file=sys.stderr)
    if not args.verbose:
        print(file=sys.stderr)
    if args.verbose:
        print_rows(outcomes)
    print_summary(outcomes, load_seconds, args.max_side, engine=engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
