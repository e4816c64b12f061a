"""Conversation persistence: a LangGraph checkpointer, SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver

from switchboard.settings import Settings


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    url = settings.checkpoint_url.strip()
    if url.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if url and not url.startswith("sqlite:///"):
        raise ValueError(
            f"SWITCHBOARD_CHECKPOINT_URL must be empty, sqlite:///PATH or postgresql://...; got {url!r}"
        )
    path = url.removeprefix("sqlite:///") if url else str(settings.checkpoint_sqlite_path)
    settings.ensure_dirs()
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        yield saver
