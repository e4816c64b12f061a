"""Conversation persistence: a LangGraph checkpointer, SQLite file by default, PostgreSQL by URL.

On PostgreSQL the saver draws from a connection pool (``checkpoint_pool_size`` per process), so
concurrent turns do not queue behind one connection, and a connection PostgreSQL dropped is
replaced instead of failing every later turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from switchboard.settings import Settings


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    url = settings.checkpoint_url.strip()
    if url.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # no check on checkout (a round trip per use): a connection that broke is dropped when returned
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool[AsyncConnection[dict[str, Any]]](
                url, min_size=1, max_size=settings.checkpoint_pool_size, open=False, kwargs=kwargs) as pool:
            pg_saver = AsyncPostgresSaver(pool)
            await pg_saver.setup()
            yield pg_saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if url and not url.startswith("sqlite:///"):
        raise ValueError(
            f"SWITCHBOARD_CHECKPOINT_URL must be empty, sqlite:///PATH or postgresql://...; got {url!r}"
        )
    path = url.removeprefix("sqlite:///") if url else str(settings.checkpoint_sqlite_path)
    settings.ensure_dirs()
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        await saver.setup()  # WAL journal (LangGraph's setup)
        # WAL with synchronous=NORMAL: a commit survives the process being killed (what crash
        # recovery is built on) without an fsync per checkpoint write (a turn makes about 13);
        # only an OS crash or power loss can drop the last commits
        await saver.conn.execute("PRAGMA synchronous=NORMAL")
        yield saver
