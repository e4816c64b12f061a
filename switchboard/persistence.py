"""Conversation persistence: a LangGraph checkpointer, SQLite file by default, PostgreSQL by URL.

On PostgreSQL the saver draws from a connection pool (``checkpoint_pool_size`` per process), so
concurrent turns do not queue behind one connection, and a connection PostgreSQL dropped is
replaced instead of failing every later turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from switchboard.settings import Settings
from tools.state_db import SCHEMA_LOCK, is_postgres


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    url = settings.checkpoint_url.strip()
    if is_postgres(url):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # no check on checkout (a round trip per use): a connection that broke is dropped when returned
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool[AsyncConnection[dict[str, Any]]](
                url, min_size=1, max_size=settings.checkpoint_pool_size, open=False, kwargs=kwargs,
                configure=_fast_json) as pool:
            pg_saver = AsyncPostgresSaver(pool)
            async with pool.connection() as conn:  # replicas starting together: one migrates at a time
                # polled, not waited for in a statement: the migrations build an index CONCURRENTLY,
                # which waits for every open transaction, a blocked pg_advisory_lock included
                while not (await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                                     (SCHEMA_LOCK,))).fetchone() or {}).get("ok"):
                    await asyncio.sleep(0.1)
                try:
                    await pg_saver.setup()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
            yield pg_saver
        return
    from switchboard.sqlite_saver import ThreadedSqliteSaver

    if url and not url.startswith("sqlite:///"):
        raise ValueError(
            f"SWITCHBOARD_CHECKPOINT_URL must be empty, sqlite:///PATH or postgresql://...; got {url!r}"
        )
    path = url.removeprefix("sqlite:///") if url else str(settings.checkpoint_sqlite_path)
    settings.ensure_dirs()
    with ThreadedSqliteSaver.open(path) as saver:  # LangGraph's tables, WAL, synchronous=NORMAL
        yield saver


async def _fast_json(conn: Any) -> None:
    """Checkpoints' JSONB columns written with orjson (installed with chromadb and langsmith) instead
    of the standard library's encoder: every step of every turn writes one, and under load
    ``json.dumps`` was about 5% of a replica's event-loop time (``bench/scale.py``, py-spy)."""
    try:
        import orjson  # noqa: F401 - only checked for here
    except ImportError:  # pragma: no cover - a dependency of chromadb's: then psycopg's default stays
        return
    from psycopg.types.json import set_json_dumps

    set_json_dumps(_orjson_dumps, conn)  # a module function: psycopg keeps one adapter per function


def _orjson_dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)  # int keys become strings, as with json.dumps
