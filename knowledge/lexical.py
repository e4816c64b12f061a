"""The lexical half of hybrid retrieval: Okapi BM25 over the knowledge base's chunks.

Dense vectors catch paraphrases ("money back" ~ refund) but blur exact names a customer
types ("Square", "Google Merchant Center", an error code); BM25 catches those. The store fuses
both (:func:`fuse`): each candidate's cosine plus :data:`LEXICAL_WEIGHT` times its BM25 score
divided by the query's best BM25 score.

Measured with ``bench/rag_wixqa.py`` (160 WixQA questions, 457 documents of which 284 are
distractors), article recall@1 / recall@5 / MRR: dense 0.634 / 0.922 / 0.837; BM25 alone 0.573 /
0.834 / 0.776; reciprocal rank fusion (k=60) 0.670 / 0.887 / 0.855 (BM25's weaker ranking pulls
good dense hits down); this fusion 0.680 / 0.931 / 0.871 (every candidate scored with its own
BM25 score). It moves the right article up (more first places) more than into the top 5. Weights
0.1-0.3 were tried on both halves of the questions separately; 0.15 was the most even. Those are
MiniLM's figures. The product's default all-mpnet-base-v2 reaches 0.714 / 0.950 / 0.908 with a weight
of 0.20, its own ``Embedder.lexical_weight``.

The index is plain numpy (postings per token), built from the collection's stored chunk texts
and rebuilt when the collection changes; about 1 ms per query for 1,300 chunks.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["BM25", "LEXICAL_WEIGHT", "STOPWORDS", "fuse", "tokens"]

LEXICAL_WEIGHT = 0.15
_TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or is are was were be been do does did i my me we our
    you your it its this that how can what when where why which who will would should could there their them
    they have has had not no so if as into about up out""".split()
)


def tokens(text: str) -> list[str]:
    """Lower-case word tokens without stopwords (``how do I`` says nothing about the topic)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    """Okapi BM25 (k1=1.5, b=0.75) with Lucene's non-negative idf: ln(1 + (N - df + 0.5) / (df + 0.5))."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        tokenised = [tokens(d) for d in docs]
        self.n = len(tokenised)
        self.lengths = np.array([len(t) for t in tokenised], dtype=np.float32)
        self.avg = float(self.lengths.mean()) if self.n and self.lengths.sum() else 1.0
        postings: dict[str, dict[int, int]] = {}
        for i, toks in enumerate(tokenised):
            for tok, tf in Counter(toks).items():
                postings.setdefault(tok, {})[i] = tf
        self.postings = {
            tok: (np.fromiter(p.keys(), dtype=np.int64), np.fromiter(p.values(), dtype=np.float32))
            for tok, p in postings.items()
        }

    def scores(self, query: str) -> np.ndarray:
        """One score per document, 0 for documents sharing no token with the query."""
        out = np.zeros(self.n, dtype=np.float32)
        for tok in set(tokens(query)):
            if tok not in self.postings:
                continue
            idx, tf = self.postings[tok]
            idf = math.log(1 + (self.n - len(idx) + 0.5) / (len(idx) + 0.5))
            norm = self.k1 * (1 - self.b + self.b * self.lengths[idx] / self.avg)
            out[idx] += idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top(self, query: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(indexes, scores) of the ``n`` best-scoring documents with a score above 0, best first."""
        scores = self.scores(query)
        idx = self.best(scores, n)
        return idx, scores[idx]

    @staticmethod
    def best(scores: np.ndarray, n: int) -> np.ndarray:
        """Indexes of the ``n`` highest of ``scores`` (from :meth:`scores`) above 0, best first."""
        if not scores.size or n <= 0:
            return np.zeros(0, dtype=np.int64)
        n = min(n, scores.size)
        idx = np.argpartition(-scores, n - 1)[:n]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return idx[scores[idx] > 0]


def fuse(cosine: float, lexical: float, best_lexical: float, weight: float = LEXICAL_WEIGHT) -> float:
    """A candidate's hybrid score: its cosine plus ``weight`` x its BM25 score relative to the query's best."""
    return cosine + (weight * lexical / best_lexical if best_lexical > 0 else 0.0)
