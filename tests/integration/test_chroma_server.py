"""The knowledge store against a real Chroma server (``chromadb.HttpClient``).

Start one with ``scripts/chroma.sh`` and run
``SWITCHBOARD_TEST_CHROMA_URL=http://127.0.0.1:28000 pytest tests/integration/test_chroma_server.py``.
Each test uses its own uniquely named collection and deletes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge.ingest import ingest
from knowledge.store import KnowledgeStore, chunk_id

CHROMA_URL = os.environ.get("SWITCHBOARD_TEST_CHROMA_URL", "")

pytestmark = [
    pytest.mark.skipif(
        not CHROMA_URL,
        reason="SWITCHBOARD_TEST_CHROMA_URL is not set; run `eval \"$(scripts/chroma.sh)\"` (the test session does this itself) or set "
        "SWITCHBOARD_TEST_CHROMA_URL=http://127.0.0.1:28000 to run the Chroma server tests",
    ),
    pytest.mark.enable_socket,  # pytest-socket: this test talks to a server by design
]


@pytest.fixture
def store() -> Iterator[KnowledgeStore]:
    import chromadb

    from knowledge.store import _parse_chroma_url

    name = f"switchboard-test-{uuid.uuid4().hex[:12]}"
    kb = KnowledgeStore.open(chroma_url=CHROMA_URL, name=name)
    try:
        yield kb
    finally:
        host, port, ssl = _parse_chroma_url(CHROMA_URL)
        chromadb.HttpClient(host=host, port=port, ssl=ssl).delete_collection(name)


def write_md(path: Path, title: str, n_paragraphs: int, word: str) -> Path:
    body = "\n\n".join(
        f"Paragraph {i} on {word}: " + " ".join(f"{word}{i}y{j}" for j in range(18)) for i in range(n_paragraphs)
    )
    path.write_text(f"---\ntitle: {title}\nurl: https://example.test/{path.stem}\n---\n# {title}\n\n{body}\n")
    return path


def test_server_ingest_is_idempotent_and_replaces_changed_files(store: KnowledgeStore, tmp_path: Path) -> None:
    from chromadb.api.fastapi import FastAPI  # the HTTP transport behind chromadb.HttpClient

    assert isinstance(store.collection._client, FastAPI)  # noqa: SLF001 - really over HTTP
    assert store.collection.configuration_json["embedding_function"]["name"] == "switchboard-minilm-int8"

    for name in ("alpha", "beta", "gamma"):
        write_md(tmp_path / f"{name}.md", name.title(), 6, name)
    first = ingest([tmp_path], store, chunk_size=300, chunk_overlap=30, progress=False)
    count = store.count()
    second = ingest([tmp_path], store, chunk_size=300, chunk_overlap=30, progress=False)

    assert first.added == 3 and first.chunks == count > 3
    assert (second.added, second.updated, second.unchanged, second.chunks) == (0, 0, 3, 0)
    assert store.count() == count

    alpha = write_md(tmp_path / "alpha.md", "Alpha", 1, "shorter")
    third = ingest([tmp_path], store, chunk_size=300, chunk_overlap=30, progress=False)
    source = str(alpha.absolute())
    ids = store.chunk_ids(source)
    assert (third.updated, third.unchanged) == (1, 2)
    assert sorted(ids) == sorted(chunk_id(source, i) for i in range(len(ids)))
    assert store.search("shorter0y3", k=1)[0].source == source
