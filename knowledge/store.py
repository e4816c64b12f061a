"""The knowledge base: a Chroma collection of document chunks, searched by cosine similarity.

Chroma runs embedded (``PersistentClient`` on a folder) by default, or as a server
(``HttpClient``) when a URL is configured. Either way the vectors come from an offline model
(``tools.models.embeddings``: all-mpnet-base-v2 by default in the product, MiniLM when this module
is used alone): Chroma's default embedding function would try to download a model, which fails
offline, so it is never allowed to run. The collection records which model made its vectors (the
name of its Chroma embedding function); opening it with another one is refused, and
:func:`reembed_collection` moves it to a new model without losing a document.

Every chunk carries ``source`` (document identity), ``file``, ``title``, ``url``, ``chunk``
(position), ``chunks`` (total), ``section``, ``content_hash``, ``splitter`` and ``flagged`` (the
instruction-like line found in the document, see ``knowledge.screening``; empty if none). Chunk 0 of a
document is its *marker*: ingestion compares its ``content_hash`` to decide whether a
document changed, and it is always written last so an interrupted write never looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlparse

import numpy as np

from knowledge.lexical import BM25, LEXICAL_WEIGHT, fuse
from tools.models.embeddings import Embedder, get_embedder

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Include

SPACE: Final = "cosine"
PER_SOURCE_DEPTH = 4
"""``search(per_source=True)`` reads ``k`` times this many chunks to find ``k`` distinct documents."""
HYBRID_DEPTH = 30
"""Hybrid search fuses the best this many chunks of each side (dense and BM25) before cutting to ``k``."""
MAX_LEXICAL_CHUNKS = 200_000
"""Above this many chunks the BM25 index (held in memory by every process) is not built: dense only."""
LEXICAL_MAX_AGE_S = 300.0
"""Another process (an ingest, a replica) may change a shared collection without changing its size:
the BM25 index is rebuilt at least this often, besides whenever the chunk count changes."""
COUNT_MAX_AGE_S = 5.0
"""How long a search trusts the chunk count it last read, and a hybrid ranking it just made (a
turn searches its question twice: triage's help-center check, then the help-center agent). This
store's own writes drop both at once; another process's ingest is seen within this long."""
RANKINGS_KEPT = 64
"""Recent hybrid rankings kept (see :data:`COUNT_MAX_AGE_S`)."""
DEFAULT_COLLECTION = "helpcenter"
_GET_PAGE = 1000

log = logging.getLogger("switchboard.knowledge")


class KnowledgeStoreError(RuntimeError):
    """The knowledge base cannot be opened or used as configured."""


class OtherModelsVectors(KnowledgeStoreError):
    """The knowledge base's vectors were made by another embedding model than the configured one."""


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is cosine similarity (1 - cosine distance), higher is better."""

    text: str
    title: str
    source: str
    url: str
    chunk: int
    score: float
    section: str = ""
    flagged: str = ""  # the document holds instruction-like text (``knowledge.screening``): not evidence
    relevance: float = 0.0  # what hybrid search ranked by: the cosine plus the BM25 share (``knowledge.lexical``)


@dataclass(frozen=True)
class _LexicalIndex:
    """BM25 over every chunk as it was embedded (title, section, text), with the chunks' ids."""

    ids: list[str]
    bm25: BM25
    built: float  # time.monotonic()
    positions: dict[str, int]  # chunk id -> its row in ``bm25``


@dataclass(frozen=True)
class _Ranking:
    """A hybrid search's fused hits, valid while the store has not written, the BM25 index is the
    same and it is at most :data:`COUNT_MAX_AGE_S` old."""

    hits: list[Hit]
    writes: int
    lexical: _LexicalIndex
    made: float  # time.monotonic()


@dataclass(frozen=True)
class Chunk:
    """A piece of a document to index; ``section`` is its heading path or ``page N``."""

    text: str
    section: str = ""


@dataclass(frozen=True)
class SourceInfo:
    """What the store knows about one indexed document (read from its chunk-0 marker)."""

    source: str
    file: str
    title: str
    url: str
    content_hash: str
    splitter: str
    chunks: int


def source_hash(source: str) -> str:
    """Short stable hash of a source, the prefix of its chunk ids."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def chunk_id(source: str, index: int) -> str:
    return f"{source_hash(source)}:{index}"


def _client(chroma_dir: Path | None, chroma_url: str | None) -> Any:
    """A Chroma client: a server when ``chroma_url`` is non-empty, else a persistent folder.
    Telemetry is off: it would phone home from an offline support tool."""
    import chromadb
    from chromadb.config import Settings as ChromaClientSettings

    client_settings = ChromaClientSettings(anonymized_telemetry=False)
    if chroma_url:
        host, port, ssl = _parse_chroma_url(chroma_url)
        try:
            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=client_settings)
        except ValueError as exc:  # chromadb raises ValueError when the server is unreachable
            raise KnowledgeStoreError(f"cannot reach the Chroma server at {chroma_url}: {exc}") from exc
    if chroma_dir is not None:
        chroma_dir = Path(chroma_dir)
        chroma_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(chroma_dir), settings=client_settings)
    raise KnowledgeStoreError("set either chroma_dir (local folder) or chroma_url (server)")


def open_collection(
    chroma_dir: Path | None = None, chroma_url: str | None = None, name: str = DEFAULT_COLLECTION,
    embeddings: str = "minilm", embedder: Embedder | None = None,
) -> Collection:
    """Open (or create) the collection for ``embeddings`` vectors (a kind of
    ``tools.models.knowledge_embeddings.KNOWLEDGE_EMBEDDINGS``), in cosine space.

    A collection whose vectors another model made is refused with the way out: searching it with
    this model's query vectors would rank by noise.
    """
    from tools.models.knowledge_embeddings import chroma_embedding_function

    client = _client(chroma_dir, chroma_url)
    try:
        collection = client.get_or_create_collection(
            name=name,
            embedding_function=chroma_embedding_function(embeddings, embedder),
            configuration={"hnsw": {"space": SPACE}},
        )
    except ValueError as exc:
        if "conflict" not in str(exc).lower():
            raise
        raise OtherModelsVectors(_other_model(name, recorded_embeddings(client.get_collection(name)) or "other",
                                              embeddings)) from exc
    _check_space(collection)
    return collection


def check_embeddings(chroma_dir: Path | None, chroma_url: str | None, name: str, embeddings: str) -> None:
    """Refuse (:class:`OtherModelsVectors`, with the way out) a knowledge base whose vectors
    another model made. Cheap: no model is loaded and nothing is ingested; a missing collection or
    folder passes (it is created on first use). A server start calls it, so an upgrade that changes
    the model stops there instead of failing every help-center answer."""
    if chroma_dir is not None and not chroma_url and not Path(chroma_dir).exists():
        return
    client = _client(chroma_dir, chroma_url)
    if name not in _collection_names(client):
        return
    recorded = recorded_embeddings(client.get_collection(name))
    if recorded is not None and recorded != embeddings:
        raise OtherModelsVectors(_other_model(name, recorded, embeddings))


def _collection_names(client: Any) -> set[str]:
    """The client's collection names (older Chroma clients list collection objects)."""
    return {c if isinstance(c, str) else c.name for c in client.list_collections()}


def _other_model(name: str, recorded: str, embeddings: str) -> str:
    return (f"the knowledge base {name!r} holds vectors of the {recorded!r} embeddings, but {embeddings!r} are "
            f"configured: run `switchboard ingest --reembed` to re-embed every document with {embeddings!r}, "
            f"or set SWITCHBOARD_KNOWLEDGE_EMBEDDINGS={recorded}")


def recorded_embeddings(collection: Collection) -> str | None:
    """The embeddings kind a collection's vectors were made with (its Chroma function's name)."""
    from tools.models.knowledge_embeddings import embeddings_kind_of

    function = (collection.configuration_json or {}).get("embedding_function") or {}
    return embeddings_kind_of(str(function.get("name", "")))


def reembed_collection(
    chroma_dir: Path | None, chroma_url: str | None, name: str, embeddings: str, embedder: Embedder,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, bool]:
    """Re-embed every chunk of collection ``name`` with ``embeddings``; returns the chunk count and
    whether anything was re-embedded (False: the collection already holds ``embeddings`` vectors).

    The chunks (text and metadata, as stored) are copied into ``<name>-reembed`` with new vectors;
    only when that copy is complete is the old collection deleted and the copy renamed. A crash
    before the delete leaves the old collection as it was (the partial copy is dropped on the
    next run); one between the delete and the rename leaves a complete copy, which the next run
    renames. Nothing needs the original files.
    """
    from tools.models.knowledge_embeddings import chroma_embedding_function

    client = _client(chroma_dir, chroma_url)
    staging = f"{name}-reembed"
    names = _collection_names(client)
    if name not in names and staging in names:
        copy = client.get_collection(staging)
        copy.modify(name=name)
        return copy.count(), True
    if name not in names:
        raise KnowledgeStoreError(f"there is no knowledge base {name!r} to re-embed")
    if staging in names:  # a copy an earlier run left unfinished (the old collection still exists)
        client.delete_collection(staging)
    current = client.get_collection(name)
    if recorded_embeddings(current) == embeddings:
        return current.count(), False  # already made with this model
    old = KnowledgeStore(current)
    total = old.count()
    new = KnowledgeStore(client.create_collection(
        staging, embedding_function=chroma_embedding_function(embeddings, embedder),
        configuration={"hnsw": {"space": SPACE}}), embedder)
    done = 0
    for page in old._page_lists(["documents", "metadatas"]):  # noqa: SLF001 - same module
        ids, docs, metas = zip(*page, strict=True)
        vectors = embedder.embed([stored_embedding_text(doc, meta) for _, doc, meta in page])
        new._upsert(ids, [doc or "" for doc in docs], metas, list(vectors))  # noqa: SLF001 - same module
        done += len(page)
        if progress:
            progress(done, total)
    client.delete_collection(name)
    new.collection.modify(name=name)
    return done, True


def _parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """``http://host:port`` -> (host, port, ssl); a bare ``host:port`` means http."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise KnowledgeStoreError(f"invalid Chroma URL {url!r}; expected http(s)://host:port")
    if parsed.path not in {"", "/"}:
        raise KnowledgeStoreError(f"Chroma URL {url!r} has a path; only http(s)://host:port works")
    ssl = parsed.scheme == "https"
    try:
        port = parsed.port or (443 if ssl else 8000)
    except ValueError as exc:
        raise KnowledgeStoreError(f"invalid port in Chroma URL {url!r}") from exc
    return parsed.hostname, port, ssl


def _check_space(collection: Collection) -> None:
    """Refuse a pre-existing collection built with another metric: its scores would lie."""
    config = collection.configuration_json or {}
    space = ((config.get("hnsw") or {}).get("space")) or ((config.get("spann") or {}).get("space"))
    if space and space != SPACE:
        raise KnowledgeStoreError(
            f"collection {collection.name!r} uses the {space!r} distance, but {SPACE!r} is "
            "required; delete the collection (or choose another name) and ingest again"
        )


class KnowledgeStore:
    """Chunks of documents in one Chroma collection, keyed by ``source``."""

    def __init__(
        self, collection: Collection, embedder: Embedder | None = None, lexical_weight: float | None = None
    ) -> None:
        self.collection = collection
        self._embedder = embedder
        if lexical_weight is None:  # the embedding model's (its cosines set the scale BM25 is added to)
            lexical_weight = float(getattr(embedder, "lexical_weight", LEXICAL_WEIGHT))
        self.lexical_weight = lexical_weight  # 0: dense search only
        self._lexical: _LexicalIndex | None = None
        self._lexical_lock = threading.Lock()
        self._count: tuple[int, float] | None = None  # (chunks, time.monotonic() read), see _search_count
        self._writes = 0  # this store's writes so far: a count read across one is not kept
        self._rankings: OrderedDict[tuple[str, int, float], _Ranking] = OrderedDict()  # LRU, see _hybrid
        self._rankings_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        *,
        chroma_dir: Path | None = None,
        chroma_url: str | None = None,
        name: str = DEFAULT_COLLECTION,
        embeddings: str = "minilm",
        model_cache: Path | None = None,
    ) -> KnowledgeStore:
        from tools.models.knowledge_embeddings import knowledge_embedder

        embedder = knowledge_embedder(embeddings, model_cache)
        return cls(open_collection(chroma_dir=chroma_dir, chroma_url=chroma_url, name=name, embeddings=embeddings,
                                   embedder=embedder), embedder)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    @property
    def relevance_floor(self) -> float:
        """Below this best cosine a search found nothing relevant (the embedding model's)."""
        return float(getattr(self.embedder, "relevance_floor", Embedder.relevance_floor))

    @property
    def relevance_margin(self) -> float:
        """How far below the best hit's relevance a passage may be and still be given (the model's)."""
        return float(getattr(self.embedder, "relevance_margin", Embedder.relevance_margin))

    def count(self) -> int:
        """Number of chunks in the collection."""
        return self.collection.count()

    def _search_count(self) -> int:
        """:meth:`count` for a search: read at most every :data:`COUNT_MAX_AGE_S` (a round trip
        to Chroma each search otherwise), and again after this store writes."""
        cached = self._count
        if cached is not None and time.monotonic() - cached[1] <= COUNT_MAX_AGE_S:
            return cached[0]
        writes = self._writes
        total = self.count()
        if writes == self._writes:
            self._count = (total, time.monotonic())
        return total

    def _wrote(self) -> None:
        """This store changed the collection: the next search reads the count and BM25 afresh."""
        self._writes += 1
        self._count = None
        self._lexical = None

    def forget_recent(self) -> None:
        """Drop the rankings and query vectors kept from recent searches, so the next search is
        timed as a new question would be (``bench/rag_wixqa.py`` asks every question twice)."""
        with self._rankings_lock:
            self._rankings.clear()
        forget = getattr(self.embedder, "forget_recent", None)
        if forget is not None:
            forget()

    def _page_lists(self, include: Include, where: dict[str, Any] | None = None
                    ) -> Iterator[list[tuple[str, str, Any]]]:
        """(id, document, metadata) of every chunk matching ``where``, one list per :data:`_GET_PAGE` read."""
        offset = 0
        while True:
            page = self.collection.get(where=where, include=include, limit=_GET_PAGE, offset=offset)
            ids = page["ids"]
            docs = page["documents"] or [""] * len(ids)
            metas = page["metadatas"] or [{}] * len(ids)
            if ids:
                yield list(zip(ids, docs, metas, strict=True))
            if len(ids) < _GET_PAGE:
                return
            offset += _GET_PAGE

    def _pages(self, include: Include, where: dict[str, Any] | None = None) -> Iterator[tuple[str, str, Any]]:
        """(id, document, metadata) of every chunk matching ``where``, read :data:`_GET_PAGE` at a time."""
        for page in self._page_lists(include, where):
            yield from page

    def sources(self) -> dict[str, SourceInfo]:
        """Every indexed document, read from the chunk-0 markers (one metadata row each)."""
        infos = (_source_info(meta) for _, _, meta in self._pages(["metadatas"], where={"chunk": 0}))
        return {info.source: info for info in infos}

    def source_info(self, source: str) -> SourceInfo | None:
        got = self.collection.get(ids=[chunk_id(source, 0)], include=["metadatas"])
        metadatas = got["metadatas"] or []
        return _source_info(metadatas[0]) if metadatas else None

    def chunk_ids(self, source: str) -> list[str]:
        """Ids of all chunks stored for ``source``."""
        return list(self.collection.get(where={"source": source}, include=[])["ids"])

    def upsert_document(
        self,
        source: str,
        chunks: Sequence[Chunk],
        *,
        title: str,
        url: str = "",
        file: str = "",
        content_hash: str,
        splitter: str = "",
        flagged: str = "",
    ) -> int:
        """Replace everything stored for ``source`` with ``chunks``; returns the chunk count.

        Order matters for crash safety: stale ids (beyond the new chunk count) are deleted
        first, chunk 0 -- the marker holding ``content_hash`` -- is written last. If the run
        dies midway, the marker still has the old hash (or is gone), so the next ingest sees
        the document as changed and redoes it instead of trusting a half-written state.
        """
        if not chunks:
            raise ValueError(f"no chunks to store for {source}")
        ids = [chunk_id(source, i) for i in range(len(chunks))]
        stale = sorted(set(self.chunk_ids(source)) - set(ids))
        if stale:
            self.collection.delete(ids=stale)
        base: dict[str, str | int] = {
            "source": source,
            "file": file,
            "title": title,
            "url": url,
            "content_hash": content_hash,
            "splitter": splitter,
            "chunks": len(chunks),
            "flagged": flagged,
        }
        metadatas = [{**base, "chunk": i, "section": c.section} for i, c in enumerate(chunks)]
        embeddings = self.embedder.embed([embedding_text(title, c) for c in chunks])
        order = list(range(1, len(chunks))) + [0]
        self._upsert([ids[i] for i in order], [chunks[i].text for i in order], [metadatas[i] for i in order],
                     [embeddings[i] for i in order])
        self._wrote()
        return len(chunks)

    def delete_source(self, source: str) -> int:
        """Remove every chunk of ``source``; returns how many were removed."""
        ids = self.chunk_ids(source)
        if ids:
            self.collection.delete(ids=ids)
            self._wrote()
        return len(ids)

    def search(
        self, query: str, k: int = 5, where: dict[str, Any] | None = None, *, per_source: bool = False
    ) -> list[Hit]:
        """The ``k`` chunks that best match ``query`` (optionally filtered by metadata).

        Hybrid by default: the :data:`HYBRID_DEPTH` nearest chunks by cosine and the as
        many best by BM25 are ranked by :func:`knowledge.lexical.fuse` (``Hit.relevance``).
        ``Hit.score`` stays the cosine similarity in [-1, 1] (see :attr:`relevance_floor`), so "is anything relevant?" thresholds keep their meaning. A ``where`` filter, a
        ``lexical_weight`` of 0 or a collection over :data:`MAX_LEXICAL_CHUNKS` searches dense only.
        ``per_source=True`` keeps only the best chunk of each document, so ``k`` hits are ``k``
        different documents (fewer if the ``k * PER_SOURCE_DEPTH`` best chunks hold fewer).
        """
        if not query.strip() or k <= 0:
            return []
        total = self._search_count()
        if total == 0:
            return []
        n = min(k * PER_SOURCE_DEPTH if per_source else k, total)
        vector = self.embedder.embed([query])[0]
        lexical = self._lexical_index(total) if where is None and self.lexical_weight > 0 else None
        if lexical is None:
            hits = self._query(vector, n, where)
        else:
            hits = self._hybrid(query, vector, n, total, lexical)
        return best_per_source(hits, k) if per_source else hits

    def _hybrid(self, query: str, vector: np.ndarray, n: int, total: int, lexical: _LexicalIndex) -> list[Hit]:
        depth = min(total, max(n, HYBRID_DEPTH))
        key, writes = (query, depth, self.lexical_weight), self._writes
        with self._rankings_lock:
            kept = self._rankings.get(key)
        if (kept is not None and kept.writes == writes and kept.lexical is lexical
                and time.monotonic() - kept.made <= COUNT_MAX_AGE_S):
            return kept.hits[:n]
        fused = self._fuse(query, vector, depth, lexical)
        with self._rankings_lock:
            self._rankings[key] = _Ranking(fused, writes, lexical, time.monotonic())
            self._rankings.move_to_end(key)
            if len(self._rankings) > RANKINGS_KEPT:
                self._rankings.popitem(last=False)
        return fused[:n]

    def _fuse(self, query: str, vector: np.ndarray, depth: int, lexical: _LexicalIndex) -> list[Hit]:
        """The ``depth`` best chunks by cosine and by BM25, ranked by their fused relevance."""
        dense = {chunk_id(h.source, h.chunk): h for h in self._query(vector, depth, None)}
        scores = lexical.bm25.scores(query)
        idx = lexical.bm25.best(scores, depth)
        lexical_ids = [lexical.ids[i] for i in idx.tolist()]
        missing = [cid for cid in lexical_ids if cid not in dense]
        if missing:  # BM25 finds them, the vector search did not: their cosine from their stored vectors
            got = self.collection.get(ids=missing, include=["documents", "metadatas", "embeddings"])
            vectors = np.asarray(got["embeddings"], dtype=np.float32) if len(got["ids"]) else np.zeros((0, 1))
            for cid, doc, meta, vec in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], vectors,
                                           strict=True):
                dense[cid] = _hit(doc, meta, float(np.dot(vec, vector)))
        # Every candidate gets its own BM25 score, also one the dense side found outside BM25's top
        # ``depth``: scoring it 0 there ranked it below chunks it beats on both counts (recall@5
        # 0.919 -> 0.931 on bench/rag_wixqa.py).
        best = float(scores.max()) if scores.size else 0.0
        fused = [replace(h, relevance=round(fuse(h.score, float(scores[lexical.positions[cid]])
                                                 if cid in lexical.positions else 0.0, best, self.lexical_weight), 4))
                 for cid, h in dense.items()]
        fused.sort(key=lambda h: (-h.relevance, -h.score, h.source, h.chunk))
        return fused

    def _lexical_index(self, total: int) -> _LexicalIndex | None:
        """The BM25 index, rebuilt when the chunk count changed, this store wrote, or it is
        :data:`LEXICAL_MAX_AGE_S` old; None (dense only) for a collection too large to hold."""
        if total > MAX_LEXICAL_CHUNKS:
            return None
        with self._lexical_lock:
            index = self._lexical
            if index is None or len(index.ids) != total or time.monotonic() - index.built > LEXICAL_MAX_AGE_S:
                index = self._lexical = self._build_lexical()
            return index

    def embedded_chunks(self) -> list[tuple[str, str, str]]:
        """(id, source, text as it was embedded: title, section, text) of every chunk, page by page."""
        return [(cid, str(meta.get("source", "")), stored_embedding_text(doc, meta))
                for cid, doc, meta in self._pages(["documents", "metadatas"])]

    def _build_lexical(self) -> _LexicalIndex:
        started = time.perf_counter()
        chunks = self.embedded_chunks()
        ids = [c[0] for c in chunks]
        index = _LexicalIndex(ids, BM25([c[2] for c in chunks]), time.monotonic(), {cid: i for i, cid in enumerate(ids)})
        log.info("knowledge: BM25 index of %d chunks built in %.0f ms", len(chunks),
                 (time.perf_counter() - started) * 1000)
        return index

    def _query(self, vector: np.ndarray, n: int, where: dict[str, Any] | None) -> list[Hit]:
        result = self.collection.query(
            query_embeddings=[vector],
            n_results=n,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        docs = (result["documents"] or [[]])[0]
        metas = (result["metadatas"] or [[]])[0]
        dists = (result["distances"] or [[]])[0]
        return [_hit(doc, meta, 1.0 - float(dist)) for doc, meta, dist in zip(docs, metas, dists, strict=True)]

    def _upsert(self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Any],
                embeddings: Sequence[np.ndarray]) -> None:
        """Write rows in order, as many per request as the Chroma client takes (at most 256)."""
        batch = max(1, min(self._max_batch(), 256))
        for start in range(0, len(ids), batch):
            end = start + batch
            self.collection.upsert(ids=list(ids[start:end]), documents=list(documents[start:end]),
                                   metadatas=list(metadatas[start:end]), embeddings=list(embeddings[start:end]))

    def _max_batch(self) -> int:
        try:
            return int(self.collection._client.get_max_batch_size())  # noqa: SLF001
        except (AttributeError, TypeError, ValueError):
            return 100


def best_per_source(hits: Sequence[Hit], k: int) -> list[Hit]:
    """The first ``k`` hits of distinct sources, in rank order (a source ranks at its best chunk)."""
    out: list[Hit] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.source not in seen:
            seen.add(hit.source)
            out.append(hit)
            if len(out) == k:
                break
    return out


_WS = re.compile(r"\s+")


def embedding_text(title: str, chunk: Chunk) -> str:
    """What gets embedded for a chunk: its title and section, then the text.

    A chunk such as "Partial refunds for albums: ..." rarely repeats the article's topic;
    prefixing the title lets "refund policy" find it. The stored document stays the raw text.
    """
    heading = " > ".join(part for part in (title, chunk.section) if part)
    body = _WS.sub(" ", chunk.text).strip()
    return f"{heading}\n{body}" if heading else body


def stored_embedding_text(doc: str | None, meta: Any) -> str:
    """:func:`embedding_text` of a chunk as the collection stores it (document and metadata)."""
    return embedding_text(str(meta.get("title", "")), Chunk(doc or "", str(meta.get("section", ""))))


def _hit(doc: str | None, meta: Any, cosine: float) -> Hit:
    return Hit(
        text=doc or "",
        title=str(meta.get("title", "")),
        source=str(meta.get("source", "")),
        url=str(meta.get("url", "")),
        chunk=int(cast(int, meta.get("chunk", 0))),  # written as an int by upsert_document
        score=round(cosine, 4),
        section=str(meta.get("section", "")),
        flagged=str(meta.get("flagged", "")),
        relevance=round(cosine, 4),
    )


def _source_info(meta: Any) -> SourceInfo:
    return SourceInfo(
        source=str(meta.get("source", "")),
        file=str(meta.get("file", "")),
        title=str(meta.get("title", "")),
        url=str(meta.get("url", "")),
        content_hash=str(meta.get("content_hash", "")),
        splitter=str(meta.get("splitter", "")),
        chunks=int(meta.get("chunks", 0)),
    )
