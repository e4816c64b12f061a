"""Turn files into plain-text documents for the knowledge base.

Supported: Markdown (YAML front matter ``title``/``url``), plain text, HTML, PDF and JSONL (one
document per line). Anything we cannot or should not index -- missing, unreadable, empty,
binary, undecodable or oversized files -- raises :class:`SkippedFile` with a reason a person
can act on, so an ingest run can report it by name and carry on with the other files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
"""Files above this size are skipped: they are almost always exports or dumps, not articles."""

MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
TEXT_EXTENSIONS = frozenset({".txt", ".text"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})
PDF_EXTENSIONS = frozenset({".pdf"})
JSONL_EXTENSIONS = frozenset({".jsonl"})
SUPPORTED_EXTENSIONS = MARKDOWN_EXTENSIONS | TEXT_EXTENSIONS | HTML_EXTENSIONS | PDF_EXTENSIONS | JSONL_EXTENSIONS

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_MD_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BINARY_SNIFF_BYTES = 8192


class SkippedFile(Exception):
    """A file that was deliberately not indexed; ``str(exc)`` is the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(reason)
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Document:
    """One indexable document.

    ``source`` is the stable identity used for idempotent re-ingestion: the absolute file path,
    or ``path#id`` for a JSONL record. ``file`` is the file it came from (for pruning).
    ``pages`` is set for PDFs so chunks can cite a page number.
    """

    text: str
    source: str
    file: str
    title: str
    url: str = ""
    kind: str = "text"
    pages: tuple[str, ...] = field(default=(), repr=False)


def is_supported(path: Path) -> bool:
    """Whether ``path``'s extension is one we can load."""
    return path.suffix.lower() in SUPPORTED_EXTENSIONS


def load_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Document]:
    """Load ``path`` into one document (several for JSONL).

    Raises :class:`SkippedFile` for anything that should be reported instead of indexed.
    """
    path = Path(path).absolute()
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise SkippedFile(path, f"unsupported file type {path.suffix or '(no extension)'!r}")
    raw = _read_bytes(path, max_bytes)
    return loader(path, raw)


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """Read a regular file, refusing missing, special, unreadable, empty and oversized ones."""
    if path.is_symlink() and not path.exists():
        raise SkippedFile(path, f"broken symbolic link (points to {os.readlink(path)})")
    if not path.exists():
        raise SkippedFile(path, "file not found")
    if path.is_dir():
        raise SkippedFile(path, "is a directory, not a file")
    if not path.is_file():
        raise SkippedFile(path, "not a regular file (device, socket or pipe)")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SkippedFile(path, f"too large: {_human_bytes(size)} exceeds the {_human_bytes(max_bytes)} limit")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise SkippedFile(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:  # grew between stat and read
        raise SkippedFile(path, f"too large: exceeds the {_human_bytes(max_bytes)} limit")
    if not raw.strip():
        raise SkippedFile(path, "empty file")
    return raw


def _decode_text(path: Path, raw: bytes) -> str:
    """Strict UTF-8: guessing other encodings silently indexes mojibake."""
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        raise SkippedFile(path, "binary content (NUL bytes); not a text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkippedFile(
            path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); binary file?"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _require_text(path: Path, text: str) -> str:
    if not text.strip():
        raise SkippedFile(path, "no text content")
    return text.strip()


def _load_markdown(path: Path, raw: bytes) -> list[Document]:
    text = _decode_text(path, raw)
    meta: dict[str, object] = {}
    match = _FRONT_MATTER.match(text)
    if match:
        meta = _parse_front_matter(path, match.group(1))
        text = text[match.end() :]
    body = _require_text(path, text)
    h1 = _MD_H1.search(body)
    title = str(meta.get("title") or (h1.group(1) if h1 else "") or path.stem)
    return [
        Document(
            text=body,
            source=str(path),
            file=str(path),
            title=title.strip(),
            url=str(meta.get("url") or "").strip(),
            kind="markdown",
        )
    ]


_SIMPLE_FIELD = re.compile(r"^([A-Za-z_][\w-]*):[ \t]*(.*?)[ \t]*$")


def _parse_front_matter(path: Path, block: str) -> dict[str, object]:
    """YAML front matter, tolerating unquoted colons (``title: Refunds: the rules``).

    Strict YAML rejects such titles, which authors write all the time; when every line is a
    simple ``key: value`` pair we read it that way instead of skipping the article.
    """
    try:
        loaded = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        lines = [line for line in block.split("\n") if line.strip() and not line.lstrip().startswith("#")]
        fields = [_SIMPLE_FIELD.match(line) for line in lines]
        if not fields or not all(fields):
            raise SkippedFile(path, f"invalid YAML front matter: {exc}") from exc
        return {m.group(1): m.group(2).strip("\"'") for m in fields if m}
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SkippedFile(path, "front matter is not a YAML mapping (key: value lines)")
    return loaded


def _load_text(path: Path, raw: bytes) -> list[Document]:
    body = _require_text(path, _decode_text(path, raw))
    return [Document(text=body, source=str(path), file=str(path), title=path.stem, kind="text")]


def _load_html(path: Path, raw: bytes) -> list[Document]:
    from bs4 import BeautifulSoup

    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        raise SkippedFile(path, "binary content (NUL bytes); not an HTML file")
    soup = BeautifulSoup(raw, "html.parser")  # bytes: honours <meta charset>
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    title = ""
    if soup.title and soup.title.get_text(strip=True):
        title = soup.title.get_text(" ", strip=True)
    elif (h1 := soup.find("h1")) is not None and h1.get_text(strip=True):
        title = h1.get_text(" ", strip=True)
    canonical = soup.find("link", rel="canonical")
    url = str(canonical.get("href", "")) if canonical is not None else ""
    if soup.head is not None:
        soup.head.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    body = _require_text(path, re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))
    return [Document(text=body, source=str(path), file=str(path), title=title or path.stem, url=url, kind="html")]


def _load_pdf(path: Path, raw: bytes) -> list[Document]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkippedFile(path, "encrypted PDF (password required)")
        pages = tuple((page.extract_text() or "").strip() for page in reader.pages)
        info_title = (reader.metadata.title if reader.metadata else None) or ""
    except SkippedFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise SkippedFile(path, f"not a readable PDF: {exc}") from exc
    if not any(pages):
        raise SkippedFile(path, "PDF has no extractable text (scanned images? run OCR first)")
    body = "\n\n".join(p for p in pages if p)
    return [
        Document(
            text=body,
            source=str(path),
            file=str(path),
            title=str(info_title).strip() or path.stem,
            kind="pdf",
            pages=pages,
        )
    ]


def _load_jsonl(path: Path, raw: bytes) -> list[Document]:
    """One document per non-blank line; a malformed line skips the whole file.

    Skipping the file (rather than the line) keeps re-ingestion honest: a half-indexed file
    would later look "unchanged" even though records are missing.
    """
    text = _decode_text(path, raw)
    docs: list[Document] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SkippedFile(path, f"line {lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise SkippedFile(path, f"line {lineno}: expected a JSON object")
        body = record.get("text")
        if not isinstance(body, str):
            raise SkippedFile(path, f"line {lineno}: missing string field 'text'")
        if not body.strip():
            continue
        rec_id = str(record.get("id") or f"line-{lineno}")
        if rec_id in seen:
            raise SkippedFile(path, f"line {lineno}: duplicate id {rec_id!r}")
        seen.add(rec_id)
        docs.append(
            Document(
                text=body.strip(),
                source=f"{path}#{rec_id}",
                file=str(path),
                title=str(record.get("title") or rec_id).strip(),
                url=str(record.get("url") or "").strip(),
                kind="jsonl",
            )
        )
    if not docs:
        raise SkippedFile(path, "no records with text")
    return docs


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


_LOADERS: dict[str, Callable[[Path, bytes], list[Document]]] = {
    **{ext: _load_markdown for ext in MARKDOWN_EXTENSIONS},
    **{ext: _load_text for ext in TEXT_EXTENSIONS},
    **{ext: _load_html for ext in HTML_EXTENSIONS},
    **{ext: _load_pdf for ext in PDF_EXTENSIONS},
    **{ext: _load_jsonl for ext in JSONL_EXTENSIONS},
}
