"""Hybrid retrieval: BM25 fused with the dense ranking (knowledge/lexical.py, KnowledgeStore.search).

The fusion logic is tested over a real Chroma collection with a FAKE embedder that gives every
text the same vector, so the dense side cannot tell documents apart and whatever orders them is
the lexical side; the real MiniLM embeddings are measured by bench/rag_wixqa.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from knowledge import store as store_module
from knowledge.lexical import BM25, LEXICAL_WEIGHT, fuse, tokens
from knowledge.store import Chunk, KnowledgeStore, open_collection


class SameVector:
    """A fake embedder: one unit vector for every text (all cosines are 1.0)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        out[:, 0] = 1.0
        return out


DOCS = {
    "card.md": ("Card payment declined", "Check the card number and the expiry date, then pay again."),
    "codes.md": ("Payment error codes", "Code QX-4471 means the bank check timed out: pay again and approve it."),
    "paypal.md": ("Paying with PayPal", "Choose PayPal at checkout and sign in to your PayPal account."),
    "gift.md": ("Gift cards", "A gift card payment fails when the balance is too low."),
}


@pytest.fixture
def kb(tmp_path: Path) -> KnowledgeStore:
    store = KnowledgeStore(open_collection(chroma_dir=tmp_path / "chroma", name="hybrid-test"),
                           embedder=SameVector())  # type: ignore[arg-type]
    for name, (title, text) in DOCS.items():
        store.upsert_document(str(tmp_path / name), [Chunk(text)], title=title, content_hash=name)
    return store


def test_tokens_drop_stopwords_and_punctuation() -> None:
    assert tokens("How do I fix error QX-4471?") == ["fix", "error", "qx", "4471"]


def test_bm25_ranks_the_document_with_the_rare_term_first() -> None:
    bm25 = BM25(["pay again with a card", "code qx 4471 means pay again", "gift card balance"])
    idx, scores = bm25.top("what does qx 4471 mean", 3)
    assert idx.tolist() == [1] and scores[0] > 0  # documents sharing no token are not returned
    assert bm25.scores("the of and").tolist() == [0.0, 0.0, 0.0]


def test_fuse_adds_the_lexical_share_to_the_cosine() -> None:
    assert fuse(0.5, 3.0, 6.0) == pytest.approx(0.5 + LEXICAL_WEIGHT * 0.5)
    assert fuse(0.5, 0.0, 0.0) == 0.5  # no lexical match at all: the cosine alone


def test_the_lexical_side_orders_what_the_dense_side_cannot_tell_apart(kb: KnowledgeStore) -> None:
    hits = kb.search("What does QX-4471 mean?", k=4)
    assert Path(hits[0].source).name == "codes.md"
    assert hits[0].score == pytest.approx(1.0)  # the score stays the cosine: thresholds keep their meaning
    assert hits[0].relevance == pytest.approx(1.0 + LEXICAL_WEIGHT)
    assert [h.relevance for h in hits] == sorted((h.relevance for h in hits), reverse=True)
    kb.lexical_weight = 0.0
    assert all(h.relevance == h.score for h in kb.search("What does QX-4471 mean?", k=4))  # dense only


def test_a_chunk_only_bm25_finds_gets_its_cosine_from_its_stored_vector(kb: KnowledgeStore, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "HYBRID_DEPTH", 1)  # the dense side returns a single chunk
    hits = kb.search("PayPal account", k=1)
    assert Path(hits[0].source).name == "paypal.md" and hits[0].score == pytest.approx(1.0)


def test_the_lexical_index_follows_writes(kb: KnowledgeStore, tmp_path: Path) -> None:
    assert Path(kb.search("vouchers", k=1)[0].source).name != "vouchers.md"
    kb.upsert_document(str(tmp_path / "vouchers.md"), [Chunk("Vouchers are sent by e-mail.")], title="Vouchers",
                       content_hash="v")
    assert Path(kb.search("vouchers", k=1)[0].source).name == "vouchers.md"
    kb.delete_source(str(tmp_path / "vouchers.md"))
    assert all(Path(h.source).name != "vouchers.md" for h in kb.search("vouchers", k=5))


def test_a_metadata_filter_searches_dense_only(kb: KnowledgeStore, tmp_path: Path) -> None:
    hits = kb.search("QX-4471", k=4, where={"title": "Gift cards"})
    assert [Path(h.source).name for h in hits] == ["gift.md"] and hits[0].relevance == hits[0].score


class GiftNearest:
    """A fake embedder: the query "card payment" and the gift-card article share one vector; every
    other text sits at cosine 0.6 from it."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, :2] = (1.0, 0.0) if text == "card payment" or text.startswith("Gift cards") else (0.6, 0.8)
        return out


def test_a_dense_candidate_outside_the_bm25_top_keeps_its_lexical_share(tmp_path: Path, monkeypatch) -> None:
    """The fused score of every candidate counts its own BM25 score: the gift-card chunk is the
    dense side's best but only BM25's second ("card" once, not twice), and used to be fused with 0."""
    store = KnowledgeStore(open_collection(chroma_dir=tmp_path / "chroma", name="hybrid-depth"),
                           embedder=GiftNearest())  # type: ignore[arg-type]
    for name, (title, text) in DOCS.items():
        store.upsert_document(str(tmp_path / name), [Chunk(text)], title=title, content_hash=name)
    monkeypatch.setattr(store_module, "HYBRID_DEPTH", 1)  # one candidate from each side
    [gift] = store.search("card payment", k=1)  # dense side: gift.md; BM25 side: card.md
    assert Path(gift.source).name == "gift.md" and gift.score == pytest.approx(1.0)
    assert 1.0 < gift.relevance < 1.0 + LEXICAL_WEIGHT  # a share of BM25's best, not nothing
