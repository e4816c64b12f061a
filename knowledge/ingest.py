"""Ingest files into the knowledge base, idempotently.

Each document is identified by its ``source`` (absolute path, or ``path#id`` for a JSONL
record) and fingerprinted by ``content_hash`` (SHA-256 of title, url and text) plus a
``splitter`` tag (format and chunk settings). Re-ingesting an unchanged document costs one
metadata lookup and no embedding; a changed one is re-chunked and replaces its old chunks,
leaving no stale ids behind. Bad files are reported by name and never stop the run.

Run ``python -m knowledge.ingest PATH...`` to ingest from the command line.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from knowledge.loaders import DEFAULT_MAX_BYTES, Document, SkippedFile, is_supported, load_file
from knowledge.screening import instruction_like
from knowledge.store import Chunk, KnowledgeStore, SourceInfo

SPLITTER_VERSION = 2
"""Bump when chunking logic or the stored metadata changes, so every document is re-chunked on
the next run. 2: documents carry ``flagged`` (instruction-like text, ``knowledge.screening``)."""

Outcome = Literal["added", "updated", "unchanged"]

_MD_HEADING = re.compile(r"^(#{1,3})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")


@dataclass(frozen=True)
class Skipped:
    """A file that was not ingested, and why."""

    path: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest run did. Document counts; ``chunks`` is chunks written this run."""

    files: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        """One line of counts, then one line per skipped file with its reason."""
        line = (
            f"{self.files} file(s): {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed, {len(self.skipped)} skipped; "
            f"{self.chunks} chunk(s) written in {self.seconds:.1f} s"
        )
        return "\n".join([line, *(f"  skipped {s.path}: {s.reason}" for s in self.skipped)])


def ingest(
    paths: Sequence[Path | str],
    store: KnowledgeStore,
    *,
    chunk_size: int = 800,
    chunk_overlap: int = 120,
    progress: bool = True,
    prune: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IngestReport:
    """Ingest files and directories (recursively, by supported extension) into ``store``.

    ``prune=True`` also removes indexed documents whose files, inside the given paths, no
    longer exist. Pruning is scoped to ``paths`` because a shared Chroma server may hold
    documents ingested from other machines, whose files we cannot see.
    """
    if chunk_size <= 0 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"need chunk_size > 0 and 0 <= chunk_overlap < chunk_size, got {chunk_size}/{chunk_overlap}")
    started = time.perf_counter()
    report = IngestReport()
    roots = [Path(p).absolute() for p in paths]
    files, missing = _expand(roots)
    report.skipped.extend(Skipped(str(p), "file not found") for p in missing)
    report.files = len(files)
    known = store.sources()
    by_file: dict[str, list[SourceInfo]] = {}
    for info in known.values():
        by_file.setdefault(info.file, []).append(info)

    with _Progress(enabled=progress, total=len(files)) as bar:
        for path in files:
            bar.start_file(path)
            try:
                docs = load_file(path, max_bytes=max_bytes)
            except SkippedFile as exc:
                report.skipped.append(Skipped(str(path), exc.reason))
                bar.advance(0)
                continue
            written = 0
            for doc in docs:
                outcome, n = _ingest_document(doc, store, known.get(doc.source), chunk_size, chunk_overlap)
                setattr(report, outcome, getattr(report, outcome) + 1)
                written += n
            current = {d.source for d in docs}
            for info in by_file.get(str(path), []):  # records gone from a multi-document file
                if info.source not in current:
                    store.delete_source(info.source)
                    report.removed += 1
            report.chunks += written
            bar.advance(written)

    if prune:
        report.removed += _prune(store, roots, known.values())
    report.seconds = time.perf_counter() - started
    return report


def remove(paths: Iterable[Path | str], store: KnowledgeStore) -> int:
    """Remove every document that came from these files or from files under these folders."""
    roots = [Path(p).absolute() for p in paths]
    doomed = [info for info in store.sources().values() if _within(info.file, roots)]
    for info in doomed:
        store.delete_source(info.source)
    return len(doomed)


def ensure_demo_ingested(store: KnowledgeStore, helpcenter_dir: Path) -> IngestReport:
    """Ingest the demo help center on first run; later runs only compare hashes (no embedding).

    Prunes articles deleted from the folder so the demo stays in sync with the repository.
    """
    if not Path(helpcenter_dir).is_dir():
        raise FileNotFoundError(f"help center folder not found: {helpcenter_dir}")
    return ingest([helpcenter_dir], store, progress=False, prune=True)


def chunk_metadata(paths: Sequence[Path | str], *, max_files: int = 2_000,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[dict[str, object]]:
    """What ingesting ``paths`` would store as each chunk's metadata (source, title, chunk index,
    section, flagged), without embedding or storing anything: triage learns the help center's
    titles and headings from it (``tools/routing/generate.py``) in milliseconds. Files that
    cannot be read are left out, as ingestion skips them. Bounded by ``max_files``."""
    files, _ = _expand([Path(p).absolute() for p in paths])
    for path in files[:max_files]:
        try:
            docs = load_file(path, max_bytes=max_bytes)
        except (SkippedFile, OSError):
            continue
        for doc in docs:
            flagged = instruction_like(f"{doc.title}\n{doc.text}")
            for i, chunk in enumerate(split_document(doc)):
                yield {"source": doc.source, "title": doc.title, "chunk": i, "section": chunk.section,
                       "flagged": flagged}


def content_hash(doc: Document) -> str:
    """Fingerprint of everything we store from a document: title, url and text."""
    h = hashlib.sha256()
    for part in (doc.title, doc.url, doc.text):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def splitter_tag(doc: Document, chunk_size: int, chunk_overlap: int) -> str:
    """Identifies how a document was chunked; a different tag forces re-chunking."""
    return f"v{SPLITTER_VERSION}:{doc.kind}:{chunk_size}:{chunk_overlap}"


def split_document(doc: Document, chunk_size: int = 800, chunk_overlap: int = 120) -> list[Chunk]:
    """Chunks for a document: Markdown by heading, PDF by page, then by size.

    Markdown sections are split on headings ourselves (not ``MarkdownHeaderTextSplitter``,
    which rewrites blank lines as ``"  \\n"`` and so destroys the paragraph breaks the size
    splitter cuts on); small adjacent sections are merged up to ``chunk_size``.
    """
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    if doc.kind == "markdown":
        sections = _merge_small(_markdown_sections(doc.text, doc.title), chunk_size)
        splitter = RecursiveCharacterTextSplitter.from_language(
            Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )
    else:
        if doc.kind == "pdf":
            sections = [(f"page {i}", text) for i, text in enumerate(doc.pages, start=1) if text.strip()]
        else:
            sections = [("", doc.text)]
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks = [
        Chunk(text=piece, section=label)
        for label, text in sections
        for piece in splitter.split_text(text)
        if piece.strip()
    ]
    return chunks


def _ingest_document(
    doc: Document,
    store: KnowledgeStore,
    known: SourceInfo | None,
    chunk_size: int,
    chunk_overlap: int,
) -> tuple[Outcome, int]:
    digest = content_hash(doc)
    tag = splitter_tag(doc, chunk_size, chunk_overlap)
    if known is not None and known.content_hash == digest and known.splitter == tag:
        return "unchanged", 0
    chunks = split_document(doc, chunk_size, chunk_overlap)
    written = store.upsert_document(
        doc.source,
        chunks,
        title=doc.title,
        url=doc.url,
        file=doc.file,
        content_hash=digest,
        splitter=tag,
        flagged=instruction_like(f"{doc.title}\n{doc.text}"),
    )
    return ("added" if known is None else "updated"), written


def _markdown_sections(text: str, title: str) -> list[tuple[str, str]]:
    """(heading path, text) per H1-H3 section, ignoring ``#`` lines inside code fences.

    The heading path leaves out an H1 equal to the document title (it is embedded anyway).
    """
    sections: list[tuple[str, str]] = []
    path: list[str] = ["", "", ""]
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            levels = [p for i, p in enumerate(path) if p and not (i == 0 and p == title)]
            sections.append((" > ".join(levels), body))

    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _MD_HEADING.match(line)
        if heading:
            flush()
            lines = []
            level = len(heading.group(1)) - 1
            path[level] = heading.group(2).strip()
            for deeper in range(level + 1, len(path)):
                path[deeper] = ""
        lines.append(line)
    flush()
    return sections


def _merge_small(sections: list[tuple[str, str]], chunk_size: int) -> list[tuple[str, str]]:
    """Join adjacent sections while they fit in one chunk: tiny chunks embed poorly."""
    merged: list[tuple[str, str]] = []
    for label, body in sections:
        if merged and len(merged[-1][1]) + 2 + len(body) <= chunk_size:
            prev_label, prev_body = merged[-1]
            labels = [x for x in (prev_label, label) if x]
            merged[-1] = (" | ".join(dict.fromkeys(labels)), f"{prev_body}\n\n{body}")
        else:
            merged.append((label, body))
    return merged


def _expand(roots: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Files to ingest (sorted, deduplicated) and paths that do not exist.

    Directories are walked without following symlinked folders; hidden entries are ignored.
    Files named explicitly are always attempted, so an unsupported one is reported.
    Symlinks with a supported extension are kept even when broken, so they get reported.
    """
    files: dict[Path, None] = {}
    missing: list[Path] = []
    for root in roots:
        if root.is_dir():
            files.update(dict.fromkeys(_walk(root)))
        elif root.exists() or root.is_symlink():
            files[root] = None
        else:
            missing.append(root)
    return list(files), missing


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and is_supported(path):
                yield path


def _within(file: str, roots: Sequence[Path]) -> bool:
    if not file:
        return False
    return any(file == str(root) or file.startswith(str(root) + os.sep) for root in roots)


def _prune(store: KnowledgeStore, roots: Sequence[Path], known: Iterable[SourceInfo]) -> int:
    gone = [info for info in known if _within(info.file, roots) and not Path(info.file).exists()]
    for info in gone:
        store.delete_source(info.source)
    return len(gone)


class _Progress:
    """A rich progress bar over files with a running chunk count; silent when not a TTY."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self._progress = None
        self._task = None
        self._chunks = 0
        if not enabled or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]ingest[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]} chunks"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("", total=total, chunks=0)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_file(self, path: Path) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=_short(path.name))

    def advance(self, chunks: int) -> None:
        if self._progress is not None and self._task is not None:
            self._chunks += chunks
            self._progress.update(self._task, advance=1, chunks=self._chunks)


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
