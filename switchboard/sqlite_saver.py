"""The default checkpointer: LangGraph's ``SqliteSaver`` with each async call run as one job on
one thread of its own.

LangGraph's ``AsyncSqliteSaver`` goes through ``aiosqlite``, which hands every cursor operation
(execute, fetch, commit, close) to its worker thread separately: about 64 thread hand-offs per
turn of the support graph, each a wake-up and a GIL round trip for the event loop, and on a busy
2-core machine the larger part of what the checkpointer costs a turn (``bench/overhead.py``).
Here a whole ``put``, ``put_writes`` or ``get_tuple`` runs on the saver's thread in a single
hand-off, with the same tables and the same code that reads and writes them (the synchronous
saver of the same package), so databases written by either saver are read by the other.

One thread owns the connection: calls are serialised (SQLite has one writer anyway) and never
wait on each other's locks.

**Channel values are stored once per version**, in ``checkpoint_blobs``, as LangGraph's
PostgreSQL saver does; a checkpoint row keeps only the versions it points at. The stock
``SqliteSaver`` writes the whole state into each of a turn's ~7 checkpoints, so a long
conversation re-serialised its every message ~7 times per turn (at 60 turns, 8.5 ms of CPU per
turn on the saver thread). Rows written the stock way (values inline) are still read as they
are, and a thread written by them is continued. The stock savers reading a row written here
find only a marker where the values were; LangGraph then rebuilds the state from the stored
writes (tested on a small graph: a way back, not a promise).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from functools import partial
from typing import Any, TypeVar, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.sqlite import SqliteSaver

__all__ = ["ThreadedSqliteSaver"]

T = TypeVar("T")

IN_BLOBS = "__switchboard_blobs__"
"""The channel-values key that marks a checkpoint whose values are in ``checkpoint_blobs``."""
_EMPTY = "empty"  # a version with no value (a channel cleared by that update)
_BLOBS_TABLE = """CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    type TEXT NOT NULL,
    blob BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
)"""


class ThreadedSqliteSaver(SqliteSaver):
    """``SqliteSaver`` with an async interface: one hand-off to the saver's own thread per call."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        super().__init__(conn)
        self._executor = executor

    @classmethod
    @contextmanager
    def open(cls, path: str) -> Iterator[ThreadedSqliteSaver]:
        """A saver on the SQLite file at ``path``: WAL, ``synchronous=NORMAL``, tables created."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoints")
        try:
            conn = executor.submit(partial(sqlite3.connect, path, check_same_thread=False)).result()
            try:
                saver = cls(conn, executor)
                executor.submit(saver._prepare).result()
                yield saver
            finally:
                executor.submit(conn.close).result()
        finally:
            executor.shutdown(wait=True)

    def setup(self) -> None:
        if self.is_setup:
            return
        super().setup()  # LangGraph's tables, WAL journal
        self.conn.execute(_BLOBS_TABLE)
        self.conn.commit()

    # --- channel values stored once per version ------------------------------------------------
    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Write the values of versions not stored yet (normally ``new_versions``; every version
        the first time a thread written the stock way is continued), then the checkpoint row
        without them. Blobs first: a row never points at a value that was not written."""
        thread, ns = str(config["configurable"]["thread_id"]), str(config["configurable"]["checkpoint_ns"])
        values, versions = checkpoint["channel_values"], checkpoint["channel_versions"]
        pairs = [(channel, str(version)) for channel, version in versions.items()]
        with self.cursor() as cur:
            stored = self._stored_versions(cur, thread, ns, pairs)
            rows = []
            for channel, version in pairs:
                if (channel, version) in stored:
                    continue
                kind, blob = self.serde.dumps_typed(values[channel]) if channel in values else (_EMPTY, None)
                rows.append((thread, ns, channel, version, kind, blob))
            cur.executemany("INSERT OR IGNORE INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, "
                            "blob) VALUES (?, ?, ?, ?, ?, ?)", rows)
        inline = {k: v for k, v in values.items() if k not in versions}  # a value with no version stays inline
        row = cast(Checkpoint, {**checkpoint, "channel_values": {**inline, IN_BLOBS: 1}})
        return super().put(config, row, metadata, new_versions)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = super().get_tuple(config)
        if found is None or IN_BLOBS not in found.checkpoint["channel_values"]:
            return found
        with self.cursor(transaction=False) as cur:
            return self._with_values(cur, found)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # noqa: A002 - LangGraph's name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        # the stock list() holds the saver's lock while it yields: read the blobs on the same
        # connection without taking it again (it is not re-entrant)
        for found in super().list(config, filter=filter, before=before, limit=limit):
            if IN_BLOBS in found.checkpoint["channel_values"]:
                with closing(self.conn.cursor()) as cur:
                    found = self._with_values(cur, found)
            yield found

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        with self.cursor() as cur:
            cur.execute("DELETE FROM checkpoint_blobs WHERE thread_id = ?", (str(thread_id),))

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        # the stock fast path reads values inline from the rows; the generic walk uses get_tuple
        return BaseCheckpointSaver.get_delta_channel_history(self, config=config, channels=channels)

    def _stored_versions(self, cur: sqlite3.Cursor, thread: str, ns: str,
                         pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not pairs:
            return set()
        rows = ", ".join("(?, ?)" for _ in pairs)
        cur.execute(f"SELECT channel, version FROM checkpoint_blobs WHERE thread_id = ? AND checkpoint_ns = ? "  # noqa: S608 - placeholders only
                    f"AND (channel, version) IN (VALUES {rows})", (thread, ns, *(x for p in pairs for x in p)))
        return {(str(c), str(v)) for c, v in cur.fetchall()}

    def _with_values(self, cur: sqlite3.Cursor, found: CheckpointTuple) -> CheckpointTuple:
        checkpoint = found.checkpoint
        thread = str(found.config["configurable"]["thread_id"])
        ns = str(found.config["configurable"].get("checkpoint_ns", ""))
        pairs = [(channel, str(version)) for channel, version in checkpoint["channel_versions"].items()]
        values = {k: v for k, v in checkpoint["channel_values"].items() if k != IN_BLOBS}
        if pairs:
            rows = ", ".join("(?, ?)" for _ in pairs)
            cur.execute(f"SELECT channel, type, blob FROM checkpoint_blobs WHERE thread_id = ? AND checkpoint_ns = ? "  # noqa: S608
                        f"AND (channel, version) IN (VALUES {rows})", (thread, ns, *(x for p in pairs for x in p)))
            for channel, kind, blob in cur.fetchall():
                if kind != _EMPTY:
                    values[channel] = self.serde.loads_typed((kind, blob))
        return found._replace(checkpoint=cast(Checkpoint, {**checkpoint, "channel_values": values}))

    def _prepare(self) -> None:
        self.setup()  # LangGraph's tables and ours, WAL journal
        # WAL with synchronous=NORMAL: a commit survives the process being killed (what crash
        # recovery is built on) without an fsync per checkpoint write (a turn makes about 13);
        # only an OS crash or power loss can drop the last commits
        self.conn.execute("PRAGMA synchronous=NORMAL")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(partial(self.get_tuple, config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # noqa: A002 - LangGraph's name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        rows = await self._run(lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for row in rows:
            yield row

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(partial(self.put, config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(partial(self.put_writes, config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(partial(self.delete_thread, thread_id))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._run(partial(self.get_delta_channel_history, config=config, channels=channels))
