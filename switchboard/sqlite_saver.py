"""The default checkpointer: LangGraph's ``SqliteSaver``, called from the event loop without a
thread hop whenever SQLite can take the call at once.

LangGraph's ``AsyncSqliteSaver`` goes through ``aiosqlite``, which hands every cursor operation
(execute, fetch, commit, close) to its worker thread separately. A hand-off per call is not cheap
either: on 2 cores a turn's ~15 checkpoint calls, each a thread wake-up and a GIL round trip with the
event loop, cost it 3-4 ms of CPU, far more than the SQLite work (``bench/overhead.py``; a read or
a write of a ~10 KB checkpoint takes ~0.1 ms in WAL mode).

So a turn's calls (``aget_tuple``, ``aput``, ``aput_writes``) first run right where they are
awaited, on a connection that never waits: its busy timeout is 0, and it never checkpoints the WAL
(that would fsync on the event loop). When SQLite is busy (another process holds the write lock:
``serve --workers``, a CLI next to the server), the call runs instead on the saver's own thread, on a
connection that waits for the lock as LangGraph's saver does. That thread also copies the WAL into
the database now and then (a passive checkpoint). History pages and deletions always run there:
they can be long.

Same tables, same code that reads and writes them (the synchronous saver of the same package), so
databases written by either saver are read by the other.
"""

from __future__ import annotations

import asyncio
import logging
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
log = logging.getLogger("switchboard.checkpoints")

LIST_PAGE = 20
"""Checkpoints ``alist`` reads per job (a turn makes about 5)."""

WAL_CHECKPOINT_EVERY = 200
"""Writes on the event loop's connection between two passive WAL checkpoints on the saver's thread
(SQLite's own automatic checkpoint is every 1,000 pages; a turn writes about 20)."""


class ThreadedSqliteSaver(SqliteSaver):
    """``SqliteSaver`` with an async interface: on the event loop when SQLite can answer at once,
    else one hand-off to the saver's own thread. Its own connection (``conn``) is the waiting one:
    synchronous callers and the thread use it."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        super().__init__(conn)
        self._executor = executor
        self._fast: SqliteSaver | None = None  # on the event loop's side (``open`` sets it)
        self._fast_writes = 0

    @classmethod
    @contextmanager
    def open(cls, path: str) -> Iterator[ThreadedSqliteSaver]:
        """A saver on the SQLite file at ``path``: WAL, ``synchronous=NORMAL``, tables created."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoints")
        try:
            conn = executor.submit(partial(sqlite3.connect, path, check_same_thread=False)).result()
            fast = None
            try:
                saver = cls(conn, executor)
                executor.submit(saver._prepare).result()
                # never waits for a lock (busy timeout 0) and never checkpoints the WAL itself
                fast = sqlite3.connect(path, check_same_thread=False, timeout=0)
                fast.execute("PRAGMA synchronous=NORMAL")
                fast.execute("PRAGMA wal_autocheckpoint=0")
                saver._fast = SqliteSaver(fast, serde=saver.serde)
                saver._fast.is_setup = True
                yield saver
            finally:
                if fast is not None:
                    fast.close()
                executor.submit(conn.close).result()
        finally:
            executor.shutdown(wait=True)

    def _prepare(self) -> None:
        self.setup()  # LangGraph's tables, WAL journal
        # WAL with synchronous=NORMAL: a commit survives the process being killed (what crash
        # recovery is built on) without an fsync per checkpoint write (a turn makes about 9);
        # only an OS crash or power loss can drop the last commits
        self.conn.execute("PRAGMA synchronous=NORMAL")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _now_or_later(self, method: Callable[..., T], *args: Any, writes: bool = False) -> T:
        """``method(saver, *args)`` on the event loop's connection; on the saver's thread when
        SQLite is busy there (nothing was written: the lock is taken by a call's first write)."""
        if self._fast is not None:
            try:
                result = method(self._fast, *args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                self._fast.conn.rollback()
            else:
                if writes:
                    self._fast_writes += 1
                    if self._fast_writes % WAL_CHECKPOINT_EVERY == 0:
                        self._executor.submit(self._checkpoint_wal)
                return result
        return await self._run(partial(method, self, *args))

    def _checkpoint_wal(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:  # a later one catches up; SQLite's own automatic checkpoints still run
            log.warning("checkpoints: the WAL checkpoint did not run", exc_info=True)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._now_or_later(SqliteSaver.get_tuple, config)

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
        return await self._now_or_later(SqliteSaver.put, config, checkpoint, metadata, new_versions, writes=True)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._now_or_later(SqliteSaver.put_writes, config, writes, task_id, task_path, writes=True)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(partial(self.delete_thread, thread_id))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._run(partial(self.get_delta_channel_history, config=config, channels=channels))
