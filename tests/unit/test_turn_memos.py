"""What a turn no longer computes twice: embeddings of the same texts, the knowledge base's chunk
count and a query's hybrid ranking, the parse of the same SQL. Each memo must give exactly what
the work it saves would have, stay bounded, and forget what a write made stale."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlglot import exp

from knowledge import store as store_module
from knowledge.store import Chunk, KnowledgeStore, open_collection
from tools.models import embeddings
from tools.models.embeddings import MiniLMEmbedder, get_embedder
from tools.sql import guard
from tools.sql.guard import UnsafeSQL, check_read_only, parse_one, parse_statements


# --- embeddings --------------------------------------------------------------------------------
class Counting:
    """Wraps an embedder's model run, counting the texts that really reach the model."""

    def __init__(self, emb: MiniLMEmbedder) -> None:
        self.run, self.texts = emb._embed, 0  # noqa: SLF001

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.run(texts)


@pytest.fixture
def emb(monkeypatch: pytest.MonkeyPatch) -> MiniLMEmbedder:
    """The process's embedder with an empty memo (restored afterwards) and a counted model run."""
    shared = get_embedder()
    monkeypatch.setattr(shared, "_memo", type(shared._memo)())  # noqa: SLF001
    monkeypatch.setattr(shared, "_memo_rows", 0)
    monkeypatch.setattr(shared, "_embed", Counting(shared))
    return shared


def test_a_memo_hit_is_exactly_what_the_model_returned(emb: MiniLMEmbedder) -> None:
    texts = ["What's your refund policy?", "How many customers are from Brazil?"]
    first = emb.embed(texts)
    again = emb.embed(texts)
    assert np.array_equal(first, again) and np.array_equal(again, emb._embed.run(texts))  # noqa: SLF001
    assert emb._embed.texts == 2  # noqa: SLF001 - the second call never reached the model
    again[0, 0] = 42.0  # a caller's copy: changing it changes nothing kept
    assert np.array_equal(emb.embed(texts), first)


def test_forget_recent_empties_the_memo(emb: MiniLMEmbedder) -> None:
    emb.embed(["a question"])
    emb.forget_recent()  # what bench/rag_wixqa.py does before timing a question it searched before
    emb.embed(["a question"])
    assert emb._embed.texts == 2 and emb._memo_rows == 1  # noqa: SLF001


def test_the_memo_is_keyed_by_the_whole_call(emb: MiniLMEmbedder) -> None:
    emb.embed(["a question", "another one"])
    emb.embed(["a question"])  # a different call: the model runs again
    assert emb._embed.texts == 3  # noqa: SLF001


def test_the_memo_is_bounded_and_skips_large_batches(emb: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "MEMO_ROWS", 3)
    for text in ("one", "two", "three", "four"):
        emb.embed([text])
    assert list(emb._memo) == [("two",), ("three",), ("four",)]  # noqa: SLF001 - the oldest went first
    emb.embed(["one"])
    assert emb._embed.texts == 5  # noqa: SLF001 - forgotten, so embedded again
    big = [f"chunk {i}" for i in range(embeddings.MEMO_MAX_BATCH + 1)]
    emb.embed(big)
    assert tuple(big) not in emb._memo and emb._memo_rows <= 3  # noqa: SLF001


# --- the knowledge base: chunk count and hybrid rankings ---------------------------------------
class SameVector:
    """A fake embedder: one unit vector for every text (the lexical side orders the hits)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def _store(path: Path) -> KnowledgeStore:
    return KnowledgeStore(open_collection(chroma_dir=path, name="memo-test"), embedder=SameVector())  # type: ignore[arg-type]


@pytest.fixture
def kb(tmp_path: Path) -> KnowledgeStore:
    store = _store(tmp_path / "chroma")
    for name in ("refunds", "payments"):
        store.upsert_document(f"/kb/{name}.md", [Chunk(f"All about {name}.")], title=name, content_hash=name)
    return store


def test_a_search_sees_this_stores_writes_at_once(kb: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "COUNT_MAX_AGE_S", 3600.0)  # only a write can refresh the count
    assert len(kb.search("gift cards", k=10)) == 2
    kb.upsert_document("/kb/gift.md", [Chunk("Gift cards never expire.")], title="gift cards", content_hash="g")
    hits = kb.search("gift cards", k=10)
    assert len(hits) == 3 and hits[0].source == "/kb/gift.md"
    kb.delete_source("/kb/gift.md")
    assert [h.source for h in kb.search("gift cards", k=10)] == [h.source for h in hits[1:]]


def test_another_writers_change_is_seen_once_the_count_is_old(kb: KnowledgeStore, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(kb.search("gift cards", k=10)) == 2
    other = _store(tmp_path / "chroma")  # another process on the same collection
    other.upsert_document("/kb/gift.md", [Chunk("Gift cards never expire.")], title="gift cards", content_hash="g")
    monkeypatch.setattr(store_module, "COUNT_MAX_AGE_S", 0.0)
    assert kb.search("gift cards", k=10)[0].source == "/kb/gift.md"


def test_a_repeated_search_reuses_the_ranking(kb: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kb.search("refunds", k=1)
    monkeypatch.setattr(kb, "_query", lambda *a: pytest.fail("the ranking was made again"))
    assert kb.search("refunds", k=2)[:1] == first  # a different k cuts the same ranking


def test_forget_recent_makes_the_ranking_again(kb: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    kb.search("refunds", k=1)
    kb.forget_recent()
    monkeypatch.setattr(kb, "_query", lambda *a: pytest.fail("ranked again") if a else None)
    with pytest.raises(pytest.fail.Exception, match="ranked again"):
        kb.search("refunds", k=1)


def test_the_rankings_kept_are_bounded(kb: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "RANKINGS_KEPT", 2)
    for query in ("refunds", "payments", "gift cards"):
        kb.search(query, k=1)
    assert [key[0] for key in kb._rankings] == ["payments", "gift cards"]  # noqa: SLF001


# --- SQL parsing -------------------------------------------------------------------------------
def test_every_parse_is_a_private_copy() -> None:
    sql = "SELECT Name FROM Artist WHERE ArtistId = 1"
    tree = parse_one(sql, "sqlite")
    tree.find(exp.Table).set("this", exp.to_identifier("Album"))  # type: ignore[union-attr]
    assert parse_one(sql, "sqlite").sql() == "SELECT Name FROM Artist WHERE ArtistId = 1"
    assert isinstance(parse_one("SELECT 1; SELECT 2", "sqlite"), exp.Block)  # like sqlglot.parse_one
    assert parse_statements("SELECT 1;", "sqlite")[0].sql() == "SELECT 1"  # type: ignore[union-attr]


def test_the_parse_memo_is_bounded() -> None:
    assert guard._parsed.cache_info().maxsize == guard.PARSE_MEMO_SIZE  # noqa: SLF001
    assert guard._read_only.cache_info().maxsize == guard.PARSE_MEMO_SIZE  # noqa: SLF001


def test_a_checked_query_is_not_checked_twice_but_a_refusal_is_logged_every_time(
        caplog: pytest.LogCaptureFixture) -> None:
    sql = "SELECT COUNT(*) FROM Customer WHERE Country = 'Chile'"
    check_read_only(sql)
    hits = guard._read_only.cache_info().hits  # noqa: SLF001
    assert check_read_only(sql, dialect="sqlite") == check_read_only(sql)
    assert guard._read_only.cache_info().hits == hits + 2  # noqa: SLF001 - keyword or not, one entry
    with caplog.at_level(logging.WARNING, logger="switchboard.sql"):
        for _ in range(2):
            with pytest.raises(UnsafeSQL):
                check_read_only("DELETE FROM Customer")
    assert sum("refused SQL" in r.getMessage() for r in caplog.records) == 2
