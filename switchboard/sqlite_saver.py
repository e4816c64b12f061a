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
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.sqlite import SqliteSaver

__all__ = ["ThreadedSqliteSaver"]

T = TypeVar("T")

LIST_PAGE = 20
"""Checkpoints ``alist`` reads per job (a turn makes about 7)."""


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

    def _prepare(self) -> None:
        self.setup()  # LangGraph's tables, WAL journal
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
        """Newest first, read :data:`LIST_PAGE` at a time: a caller that stops early (the thread
        view wants its last few turns) does not pay for the whole history. Each page is one job
        that runs the stock ``list`` to its end: it holds the saver's lock while it yields, so a
        generator left open across jobs would block every other call."""
        left = limit
        while left is None or left > 0:
            page = LIST_PAGE if left is None else min(LIST_PAGE, left)
            rows = await self._run(partial(self._list_page, config, filter, before, page))
            for row in rows:
                yield row
            if len(rows) < page:
                return
            before = {"configurable": {"checkpoint_id": rows[-1].config["configurable"]["checkpoint_id"]}}
            left = None if left is None else left - len(rows)

    def _list_page(self, config: RunnableConfig | None, filter: dict[str, Any] | None,  # noqa: A002
                   before: RunnableConfig | None, limit: int) -> list[CheckpointTuple]:
        return [*self.list(config, filter=filter, before=before, limit=limit)]

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
