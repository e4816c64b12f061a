"""Ingestion: idempotency, replacement, removal, bad inputs and every supported format.

All runs use a throwaway Chroma folder under ``tmp_path`` and the offline MiniLM model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from knowledge.ingest import IngestReport, ingest, remove, split_document
from knowledge.loaders import SkippedFile, load_file
from knowledge.store import KnowledgeStore, chunk_id, source_hash


@pytest.fixture
def store(tmp_path: Path) -> KnowledgeStore:
    return KnowledgeStore.open(chroma_dir=tmp_path / "chroma", name="test-kb")


def write_md(path: Path, title: str, body: str, url: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    front = f"---\ntitle: {title}\nurl: {url or 'https://example.test/' + path.stem}\n---\n"
    path.write_text(front + body, encoding="utf-8")
    return path


def paragraphs(word: str, n: int) -> str:
    """``n`` distinct paragraphs of ~180 characters, each tagged with ``word`` and its number."""
    return "\n\n".join(
        f"Paragraph {i} about {word}: " + " ".join(f"{word}{i}x{j}" for j in range(18)) for i in range(n)
    )


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF with Helvetica text; pypdf can read but not author text pages."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n_pages = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{4 + 2 * i} 0 R".encode() for i in range(n_pages))
        + f"] /Count {n_pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        ops = " ".join(f"({esc(line)}) Tj 0 -16 Td" for line in lines)
        stream = f"BT /F1 12 Tf 72 720 Td {ops} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def all_ids(store: KnowledgeStore) -> set[str]:
    return set(store.collection.get(include=[])["ids"])


# --- idempotency, replacement, removal -------------------------------------------------------


def test_ingesting_twice_adds_nothing_the_second_time(store: KnowledgeStore, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for name in ("alpha", "beta", "gamma"):
        write_md(docs / f"{name}.md", name.title(), f"# {name.title()}\n\n" + paragraphs(name, 6))

    first = ingest([docs], store, progress=False)
    count, ids = store.count(), all_ids(store)
    second = ingest([docs], store, progress=False)

    assert (first.added, first.updated, first.unchanged) == (3, 0, 0)
    assert first.chunks == count > 3
    assert (second.added, second.updated, second.unchanged, second.chunks) == (0, 0, 3, 0)
    assert store.count() == count
    assert all_ids(store) == ids
    assert not second.changed


def test_changed_file_replaces_its_chunks_and_leaves_no_stale_ids(store: KnowledgeStore, tmp_path: Path) -> None:
    doc = write_md(tmp_path / "policy.md", "Policy", "# Policy\n\n" + paragraphs("oldtext", 12))
    other = write_md(tmp_path / "other.md", "Other", paragraphs("other", 2))
    ingest([doc, other], store, chunk_size=300, chunk_overlap=30, progress=False)
    source = str(doc.absolute())
    before = store.chunk_ids(source)
    other_ids = set(store.chunk_ids(str(other.absolute())))

    write_md(doc, "Policy v2", "# Policy\n\n" + paragraphs("newtext", 3))
    report = ingest([doc, other], store, chunk_size=300, chunk_overlap=30, progress=False)

    after = store.chunk_ids(source)
    assert (report.updated, report.unchanged) == (1, 1)
    assert len(after) < len(before)
    assert sorted(after) == sorted(chunk_id(source, i) for i in range(len(after)))
    texts = store.collection.get(where={"source": source}, include=["documents", "metadatas"])
    assert not any("oldtext" in t for t in texts["documents"])
    assert {m["title"] for m in texts["metadatas"]} == {"Policy v2"}
    assert set(store.chunk_ids(str(other.absolute()))) == other_ids
    assert store.count() == len(after) + len(other_ids)


def test_changing_chunk_settings_rechunks_unchanged_files(store: KnowledgeStore, tmp_path: Path) -> None:
    doc = write_md(tmp_path / "a.md", "A", paragraphs("alpha", 8))
    ingest([doc], store, chunk_size=800, chunk_overlap=100, progress=False)
    coarse = store.count()
    report = ingest([doc], store, chunk_size=250, chunk_overlap=20, progress=False)
    assert report.updated == 1
    assert store.count() > coarse


def test_deleted_file_is_pruned_only_within_the_given_paths(store: KnowledgeStore, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keep = write_md(a / "keep.md", "Keep", paragraphs("keep", 2))
    gone = write_md(a / "gone.md", "Gone", paragraphs("gone", 2))
    elsewhere = write_md(b / "elsewhere.md", "Elsewhere", paragraphs("elsewhere", 2))
    ingest([a, b], store, progress=False)
    gone.unlink()
    elsewhere.unlink()

    without_prune = ingest([a], store, progress=False)
    assert without_prune.removed == 0
    assert str(gone.absolute()) in store.sources()

    report = ingest([a], store, progress=False, prune=True)
    sources = store.sources()
    assert report.removed == 1
    assert str(gone.absolute()) not in sources
    assert store.chunk_ids(str(gone.absolute())) == []
    assert str(keep.absolute()) in sources
    assert str(elsewhere.absolute()) in sources  # outside the pruned paths: untouched


def test_remove_deletes_documents_of_files_and_folders(store: KnowledgeStore, tmp_path: Path) -> None:
    one = write_md(tmp_path / "one.md", "One", paragraphs("one", 2))
    sub = tmp_path / "sub"
    write_md(sub / "two.md", "Two", paragraphs("two", 2))
    write_md(sub / "deeper" / "three.md", "Three", paragraphs("three", 2))
    ingest([tmp_path], store, progress=False)
    assert len(store.sources()) == 3

    assert remove([sub], store) == 2
    assert list(store.sources()) == [str(one.absolute())]
    assert remove([one], store) == 1
    assert store.count() == 0


# --- bad inputs ------------------------------------------------------------------------------


def test_bad_files_are_reported_by_name_and_the_rest_is_ingested(store: KnowledgeStore, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    good = write_md(docs / "good.md", "Good", paragraphs("good", 3))
    (docs / "empty.md").write_bytes(b"")
    (docs / "blank.txt").write_text("  \n\t\n")
    (docs / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary\x00junk")
    (docs / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (docs / "huge.txt").write_text("x" * 5000)
    (docs / "broken.md").symlink_to(docs / "does-not-exist.md")
    (docs / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    (docs / "notes.docx").write_bytes(b"ignored: unsupported extensions in folders are not listed")
    unsupported = docs / "explicit.docx"
    unsupported.write_bytes(b"named explicitly, so it is reported")
    missing = tmp_path / "missing.md"

    report = ingest([docs, unsupported, missing], store, progress=False, max_bytes=4096)

    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {
        "empty.md",
        "blank.txt",
        "binary.txt",
        "latin1.txt",
        "huge.txt",
        "broken.md",
        "bad.jsonl",
        "explicit.docx",
        "missing.md",
    }
    assert "empty" in reasons["empty.md"]
    assert "empty" in reasons["blank.txt"]
    assert "binary" in reasons["binary.txt"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "too large" in reasons["huge.txt"] and "4.0 KB" in reasons["huge.txt"]
    assert "broken symbolic link" in reasons["broken.md"]
    assert "line 2" in reasons["bad.jsonl"]
    assert "unsupported" in reasons["explicit.docx"]
    assert "not found" in reasons["missing.md"]
    assert report.added == 1
    assert list(store.sources()) == [str(good.absolute())]
    summary = report.summary()
    assert "1 added" in summary and "9 skipped" in summary
    assert all(name in summary for name in reasons)


def test_directory_given_as_a_file_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "looks-like-a-file.md"
    folder.mkdir()
    with pytest.raises(SkippedFile, match="directory"):
        load_file(folder)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    try:
        with pytest.raises(SkippedFile, match="cannot read"):
            load_file(locked)
    finally:
        locked.chmod(0o600)


def test_invalid_chunk_settings_are_refused(store: KnowledgeStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_overlap"):
        ingest([tmp_path], store, chunk_size=100, chunk_overlap=100, progress=False)


# --- formats ---------------------------------------------------------------------------------


def test_markdown_front_matter_gives_title_and_url(tmp_path: Path) -> None:
    path = write_md(tmp_path / "x.md", "Refunds: the rules", "# Heading\n\nBody text.", url="https://h.test/r")
    (doc,) = load_file(path)
    assert doc.title == "Refunds: the rules"
    assert doc.url == "https://h.test/r"
    assert "title:" not in doc.text and doc.text.startswith("# Heading")

    listy = tmp_path / "listy.md"
    listy.write_text("---\n- just\n- a list\n---\nBody")
    with pytest.raises(SkippedFile, match="not a YAML mapping"):
        load_file(listy)
    broken = tmp_path / "broken.md"
    broken.write_text("---\ntitle: [unclosed\n  nested: {\n---\nBody")
    with pytest.raises(SkippedFile, match="invalid YAML front matter"):
        load_file(broken)

    bare = tmp_path / "bare.md"
    bare.write_text("Intro line\n\n# Real Title\n\ntext")
    assert load_file(bare)[0].title == "Real Title"


def test_markdown_is_split_by_heading_and_code_fences_are_not_headings(tmp_path: Path) -> None:
    body = (
        "# Guide\n\nIntro.\n\n## Install\n\n" + paragraphs("install", 4) + "\n\n```sh\n# not a heading\nrun\n```\n\n"
        "## Usage\n\n" + paragraphs("usage", 4)
    )
    (doc,) = load_file(write_md(tmp_path / "guide.md", "Guide", body))
    chunks = split_document(doc, chunk_size=400, chunk_overlap=40)
    sections = {c.section for c in chunks}
    assert any(s.startswith("Install") for s in sections)
    assert any(s.startswith("Usage") for s in sections)
    assert not any("not a heading" in s for s in sections)
    assert all(len(c.text) <= 400 for c in chunks)
    assert not any("install" in c.text and "usage0" in c.text for c in chunks)


def test_html_title_text_and_dropped_scripts(store: KnowledgeStore, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>Shipping FAQ</title><style>.x{color:red}</style>"
        '<link rel="canonical" href="https://h.test/shipping"></head>'
        "<body><h1>Ignored heading</h1><script>var secret = 'tracking-js';</script>"
        "<p>Orders ship in <b>two</b> days.</p></body></html>",
        encoding="utf-8",
    )
    no_title = tmp_path / "h1.htm"
    no_title.write_text("<body><h1>Only H1</h1><p>Body</p></body>", encoding="utf-8")

    (doc,) = load_file(page)
    assert doc.title == "Shipping FAQ"
    assert doc.url == "https://h.test/shipping"
    assert "Orders ship in" in doc.text and "two" in doc.text
    assert "tracking-js" not in doc.text and "color:red" not in doc.text
    assert load_file(no_title)[0].title == "Only H1"

    report = ingest([page], store, progress=False)
    assert report.added == 1
    assert store.search("how fast do orders ship", k=1)[0].title == "Shipping FAQ"


def test_jsonl_records_are_documents_and_vanished_records_are_removed(store: KnowledgeStore, tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    records = [
        {"id": "q1", "title": "Opening hours", "url": "https://h.test/hours", "text": "We open at nine."},
        {"id": "q2", "title": "Parking", "text": "Parking is free behind the building."},
        {"text": "A record without id or title."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")

    docs = load_file(path)
    assert [d.source for d in docs] == [f"{path}#q1", f"{path}#q2", f"{path}#line-3"]
    assert docs[0].url == "https://h.test/hours" and docs[1].title == "Parking"

    assert ingest([path], store, progress=False).added == 3
    hit = store.search("where can I park my car", k=1)[0]
    assert (hit.source, hit.title) == (f"{path}#q2", "Parking")

    path.write_text(json.dumps(records[0]) + "\n", encoding="utf-8")
    report = ingest([path], store, progress=False)
    assert (report.unchanged, report.removed) == (1, 2)
    assert list(store.sources()) == [f"{path}#q1"]


def test_pdf_text_is_extracted_per_page(store: KnowledgeStore, tmp_path: Path) -> None:
    path = tmp_path / "manual.pdf"
    path.write_bytes(make_pdf([["Warranty terms", "Devices carry a two year warranty."], ["Returns (page two)"]]))

    (doc,) = load_file(path)
    assert "two year warranty" in doc.text
    assert "Returns (page two)" in doc.text
    assert len(doc.pages) == 2

    ingest([path], store, progress=False)
    hits = store.search("how long is the warranty", k=2)
    assert hits[0].section == "page 1" and "warranty" in hits[0].text


def test_pdf_without_text_or_corrupt_is_skipped(tmp_path: Path) -> None:
    blank = tmp_path / "scan.pdf"
    blank.write_bytes(make_pdf([[]]))
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(SkippedFile, match="no extractable text"):
        load_file(blank)
    with pytest.raises(SkippedFile, match="PDF"):
        load_file(corrupt)


def test_chunk_metadata_and_ids(store: KnowledgeStore, tmp_path: Path) -> None:
    path = write_md(tmp_path / "meta.md", "Meta", paragraphs("meta", 8), url="https://h.test/meta")
    ingest([path], store, chunk_size=300, chunk_overlap=30, progress=False)
    source = str(path.absolute())
    got = store.collection.get(where={"source": source}, include=["metadatas"])
    metas = sorted(got["metadatas"], key=lambda m: m["chunk"])
    n = len(metas)
    assert n > 2
    assert [m["chunk"] for m in metas] == list(range(n))
    assert {m["chunks"] for m in metas} == {n}
    assert {(m["title"], m["url"], m["file"]) for m in metas} == {("Meta", "https://h.test/meta", source)}
    assert len({m["content_hash"] for m in metas}) == 1 and len(metas[0]["content_hash"]) == 64
    assert set(got["ids"]) == {f"{source_hash(source)}:{i}" for i in range(n)}


def test_report_summary_counts() -> None:
    report = IngestReport(files=2, added=1, unchanged=1, chunks=4, seconds=0.31)
    assert report.summary() == (
        "2 file(s): 1 added, 0 updated, 1 unchanged, 0 removed, 0 skipped; 4 chunk(s) written in 0.3 s"
    )


# --- store plumbing --------------------------------------------------------------------------


def test_chroma_url_parsing() -> None:
    from knowledge.store import KnowledgeStoreError, _parse_chroma_url

    assert _parse_chroma_url("http://127.0.0.1:58000") == ("127.0.0.1", 58000, False)
    assert _parse_chroma_url("https://chroma.internal") == ("chroma.internal", 443, True)
    assert _parse_chroma_url("localhost:8001") == ("localhost", 8001, False)
    for bad in ("ftp://host:1", "http://host:1/api", "http://:80"):
        with pytest.raises(KnowledgeStoreError):
            _parse_chroma_url(bad)


def test_existing_collection_with_another_distance_is_refused(tmp_path: Path) -> None:
    import chromadb

    from knowledge.store import KnowledgeStoreError, open_collection
    from tools.models.knowledge_embeddings import ChromaEmbeddingFunction

    client = chromadb.PersistentClient(path=str(tmp_path))
    client.create_collection(
        "l2-kb", embedding_function=ChromaEmbeddingFunction(), configuration={"hnsw": {"space": "l2"}}
    )
    with pytest.raises(KnowledgeStoreError, match="'l2' distance"):
        open_collection(chroma_dir=tmp_path, name="l2-kb")


def test_reopened_collection_uses_our_embedding_function(store: KnowledgeStore, tmp_path: Path) -> None:
    """Chroma must rebuild our function from the persisted config, never fall back to its default."""
    import chromadb

    from tools.models.knowledge_embeddings import ChromaEmbeddingFunction

    ingest([write_md(tmp_path / "a.md", "A", paragraphs("alpha", 2))], store, progress=False)
    reopened = chromadb.PersistentClient(path=str(tmp_path / "chroma")).get_collection("test-kb")
    assert isinstance(reopened.configuration.get("embedding_function"), ChromaEmbeddingFunction)
    assert reopened.query(query_texts=["alpha0x1"], n_results=1)["ids"][0]
