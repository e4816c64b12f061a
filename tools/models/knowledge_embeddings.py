"""The knowledge base's embedding models by name, and their Chroma adapters.

``SWITCHBOARD_KNOWLEDGE_EMBEDDINGS`` names one of :data:`KNOWLEDGE_EMBEDDINGS`. Each kind has its
own Chroma embedding function, registered under its own name: a collection's configuration
keeps that name, which is its record of the model that made its vectors (``knowledge.store``
refuses to mix two).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tools.models.embeddings import Embedder, MiniLMEmbedder, get_embedder
from tools.models.values import default_model_cache

KNOWLEDGE_EMBEDDINGS = ("mpnet", "minilm")
"""What ``SWITCHBOARD_KNOWLEDGE_EMBEDDINGS`` may name: the knowledge base's embedding model."""
_model_cache = [default_model_cache()]  # the last one knowledge_embedder() was given (Chroma rebuilds need one)


def knowledge_embedder_class(kind: str) -> type[Embedder]:
    """The class of a knowledge-base embedder, without loading it (its ``relevance_floor``)."""
    if kind == "minilm":
        return MiniLMEmbedder
    if kind == "mpnet":
        from tools.models.mpnet import MPNetEmbedder

        return MPNetEmbedder
    raise ValueError(f"unknown knowledge embeddings {kind!r}: choose one of {', '.join(KNOWLEDGE_EMBEDDINGS)}")


def knowledge_embedder(kind: str, cache_dir: Path | None = None) -> Embedder:
    """The process-wide embedder for the knowledge base: all-mpnet-base-v2 (``"mpnet"``, the
    default: better retrieval, ~25 ms a query, built once into ``cache_dir``) or MiniLM."""
    knowledge_embedder_class(kind)  # the error for an unknown name
    if cache_dir is not None:
        _model_cache[0] = Path(cache_dir)
    if kind == "minilm":
        return get_embedder()
    from tools.models.mpnet import get_mpnet_embedder

    return get_mpnet_embedder(_model_cache[0])


def _chroma_embedding_function_base() -> type:
    """Chroma's ``EmbeddingFunction`` base when chromadb is installed, else ``object``.

    Subclassing the real protocol matters: Chroma 1.5 calls ``default_space()`` and
    ``supported_spaces()`` when it serialises a collection's configuration and, if they are
    missing, silently stores a "legacy" config -- a collection reopened without an explicit
    embedding function then falls back to Chroma's default embedder, which downloads a model.
    """
    try:
        from chromadb.api.types import EmbeddingFunction
    except ImportError:  # pragma: no cover - chromadb is a hard dependency
        return object
    return EmbeddingFunction


class ChromaEmbeddingFunction(_chroma_embedding_function_base()):  # type: ignore[misc]
    """Adapter for Chroma: Chroma's default embedder downloads a model, which fails offline.

    Registered with Chroma under ``name()`` so a persisted collection reopened without an
    explicit embedding function is rebuilt with this one (``build_from_config``).
    """

    kind = "minilm"

    def __init__(self, embedder: Embedder | None = None) -> None:
        self._embedder = embedder

    def __call__(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002 - Chroma's name
        emb = self._embedder or knowledge_embedder(self.kind)
        return list(emb.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "switchboard-minilm-int8"

    def is_legacy(self) -> bool:
        return False

    def default_space(self) -> str:
        # Vectors are L2-normalised: cosine is the natural metric (and what knowledge/ uses).
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "l2", "ip"]

    def get_config(self) -> dict:
        return {}

    @classmethod
    def build_from_config(cls, config: dict) -> ChromaEmbeddingFunction:
        return cls()

    def embed_query(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002
        return self(input)


class ChromaMPNetEmbeddingFunction(ChromaEmbeddingFunction):
    """The same adapter over all-mpnet-base-v2. Its own name is the collection's record of which
    model made its vectors: Chroma refuses to reopen a collection with another one."""

    kind = "mpnet"

    @staticmethod
    def name() -> str:
        return "switchboard-mpnet-nbits8"


def chroma_embedding_function(kind: str, embedder: Embedder | None = None) -> ChromaEmbeddingFunction:
    """The Chroma adapter that records ``kind`` (see :data:`KNOWLEDGE_EMBEDDINGS`) in a collection."""
    for cls in (ChromaEmbeddingFunction, ChromaMPNetEmbeddingFunction):
        if cls.kind == kind:
            return cls(embedder)
    knowledge_embedder_class(kind)
    raise AssertionError(kind)  # pragma: no cover - every kind has an adapter


def embeddings_kind_of(function_name: str) -> str | None:
    """The :data:`KNOWLEDGE_EMBEDDINGS` kind a persisted Chroma function name stands for."""
    for cls in (ChromaEmbeddingFunction, ChromaMPNetEmbeddingFunction):
        if cls.name() == function_name:
            return cls.kind
    return None


def _register_with_chroma() -> None:
    """Let Chroma rebuild our function from a persisted collection config."""
    try:
        from chromadb.utils.embedding_functions import register_embedding_function
    except ImportError:  # pragma: no cover - chromadb is a hard dependency
        return
    register_embedding_function(ChromaEmbeddingFunction)
    register_embedding_function(ChromaMPNetEmbeddingFunction)


_register_with_chroma()


