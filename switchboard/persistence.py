"""Conversation persistence: a LangGraph checkpointer, SQLite file by default, PostgreSQL by URL.

On PostgreSQL the saver draws from a connection pool (``checkpoint_pool_size`` per process), so
concurrent turns do not queue behind one connection, and a connection PostgreSQL dropped is
replaced instead of failing every later turn."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from switchboard.settings import Settings
from tools.state_db import SCHEMA_LOCK, is_postgres


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    url = settings.checkpoint_url.strip()
    if is_postgres(url):
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # no check on checkout (a round trip per use): a connection that broke is dropped when returned
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool[AsyncConnection[dict[str, Any]]](
                url, min_size=1, max_size=settings.checkpoint_pool_size, open=False, kwargs=kwargs,
                configure=_fast_json) as pool:
            pg_saver = postgres_saver_class()(pool)
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


# AsyncPostgresSaver's methods that hand a serializer to a worker thread (asyncio.to_thread), and
# the serializers they hand over: pure CPU work on values already in memory, no I/O.
SERDE_ON_THE_LOOP = ("aput", "aput_writes", "_load_checkpoint_tuple")
SERIALIZERS = ("_dump_blobs", "_dump_writes", "_load_writes")


@cache
def postgres_saver_class() -> type[Any]:
    """LangGraph's ``AsyncPostgresSaver``, except that its methods in :data:`SERDE_ON_THE_LOOP`
    run their serializer where they are, on the event loop, instead of on a worker thread.

    Every checkpoint write, pending-writes write and checkpoint read (about 12 a turn) handed its
    msgpack work to a thread and woke the loop when it was done. The hand-off cost more CPU than the
    work: in-process on one PostgreSQL pool, 8 alternating rounds of 40 sequential turns against
    the upstream class, p50 19.4 -> 16.2 ms and CPU 18.6 -> 15.5 ms a turn. (The SQLite saver,
    ``sqlite_saver.py``, runs inline for the same reason.)

    The methods are upstream's own code (their code objects, so an upgrade brings its fixes with
    it) bound to a namespace whose ``asyncio.to_thread`` calls the function directly.
    ``tests/integration/test_postgres_checkpointer.py`` checks that they hand nothing but
    :data:`SERIALIZERS` to ``to_thread``, and that those run on the loop. A class made on first use:
    PostgreSQL's packages load only when a PostgreSQL URL is configured."""
    from langgraph.checkpoint.postgres import aio

    async def run_here(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    namespace = {**vars(aio), "asyncio": types.SimpleNamespace(**{**vars(asyncio), "to_thread": run_here})}

    def here(name: str) -> Callable[..., Any]:
        upstream = getattr(aio.AsyncPostgresSaver, name)
        method = types.FunctionType(upstream.__code__, namespace, name, upstream.__defaults__, upstream.__closure__)
        method.__kwdefaults__ = upstream.__kwdefaults__
        method.__qualname__ = f"PostgresSaver.{name}"
        method.__doc__ = upstream.__doc__
        return method

    return type("PostgresSaver", (aio.AsyncPostgresSaver,), {name: here(name) for name in SERDE_ON_THE_LOOP})


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
