"""Chat history: Chainlit's SQLAlchemy data layer on SQLite (its tables, kept up to date, and a data
layer that serializes writes), and the folder Chainlit keeps live sessions' uploads in."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

from switchboard.access import Access
from switchboard.services import Services
from switchboard.settings import Settings
from switchboard.ui.uploads import upload_dir
from tools.state_db import SCHEMA_LOCK, is_postgres, sqlalchemy_postgres_url

log = logging.getLogger("switchboard.ui")


def private_files_dir() -> None:
    """Chainlit keeps live sessions' uploads in ``<app root>/.files`` and deletes that whole
    folder when a server stops, which breaks uploads in every other server started from the
    same folder (a second instance, a test run next to a dev server). This process gets its
    own folder; Chainlit still deletes it at shutdown (sessions' files are transient: what the
    graph needs is copied under the data dir)."""
    import chainlit.config
    import chainlit.server

    if chainlit.config.FILES_DIRECTORY.name.startswith("switchboard-chainlit-files-"):
        return  # already ours (`chainlit run -w` re-imports app.py)
    own = Path(tempfile.mkdtemp(prefix="switchboard-chainlit-files-"))
    chainlit.config.FILES_DIRECTORY = own  # read at call time by sessions
    chainlit.server.FILES_DIRECTORY = own  # the folder removed at shutdown


# The tables Chainlit 2.x's SQLAlchemyDataLayer reads and writes (its documented PostgreSQL schema,
# with the columns the 2.12 code writes: it inserts every non-empty key of a step/element dict,
# so a missing column loses the whole row). Types are SQLite affinities.
UI_SCHEMA: dict[str, dict[str, str]] = {
    "users": {
        "id": "TEXT PRIMARY KEY",
        "identifier": "TEXT NOT NULL UNIQUE",
        "metadata": "TEXT NOT NULL",
        "createdAt": "TEXT",
    },
    "threads": {
        "id": "TEXT PRIMARY KEY",
        "createdAt": "TEXT",
        "name": "TEXT",
        "userId": "TEXT",
        "userIdentifier": "TEXT",
        "tags": "TEXT",
        "metadata": "TEXT",
    },
    "steps": {
        "id": "TEXT PRIMARY KEY",
        "name": "TEXT NOT NULL",
        "type": "TEXT NOT NULL",
        "threadId": "TEXT NOT NULL",
        "parentId": "TEXT",
        "streaming": "BOOLEAN NOT NULL",
        "waitForAnswer": "BOOLEAN",
        "isError": "BOOLEAN",
        "metadata": "TEXT",
        "tags": "TEXT",
        "input": "TEXT",
        "output": "TEXT",
        "createdAt": "TEXT",
        "command": "TEXT",
        "modes": "TEXT",
        "start": "TEXT",
        "end": "TEXT",
        "generation": "TEXT",
        "showInput": "TEXT",
        "language": "TEXT",
        "indent": "INT",
        "defaultOpen": "BOOLEAN",
        "autoCollapse": "BOOLEAN",
    },
    "elements": {
        "id": "TEXT PRIMARY KEY",
        "threadId": "TEXT",
        "type": "TEXT",
        "url": "TEXT",
        "chainlitKey": "TEXT",
        "name": "TEXT NOT NULL",
        "display": "TEXT",
        "objectKey": "TEXT",
        "size": "TEXT",
        "page": "INT",
        "language": "TEXT",
        "forId": "TEXT",
        "mime": "TEXT",
        "props": "TEXT",
        "autoPlay": "BOOLEAN",
        "playerConfig": "TEXT",
    },
    "feedbacks": {
        "id": "TEXT PRIMARY KEY",
        "forId": "TEXT NOT NULL",
        "threadId": "TEXT",
        "value": "INT NOT NULL",
        "comment": "TEXT",
    },
}


def _plain_type(sql_type: str) -> str:
    """A column type without its constraints, for ``ALTER TABLE ... ADD COLUMN``."""
    return sql_type.replace(" NOT NULL", "").replace(" PRIMARY KEY", "").replace(" UNIQUE", "")


def ensure_ui_schema(db_path: Path) -> None:
    """Create the history tables if missing, and add any column a newer Chainlit writes (SQLite)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as con:
        con.execute("PRAGMA journal_mode=WAL")
        for table, columns in UI_SCHEMA.items():
            cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
            con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
            have = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
            for c, t in columns.items():
                if c not in have:
                    con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{c}" {_plain_type(t)}')
        con.execute('CREATE INDEX IF NOT EXISTS steps_thread ON steps ("threadId")')
        con.execute('CREATE INDEX IF NOT EXISTS threads_user ON threads ("userId")')


def ensure_ui_schema_postgres(url: str) -> None:
    """The same tables in PostgreSQL (shared by every replica), with the same column types: JSON is
    kept as text, exactly as on SQLite, so the data layer reads back what it wrote either way."""
    import psycopg

    def pg(sql_type: str) -> str:
        return sql_type.replace("INT", "INTEGER") if sql_type.startswith("INT") else sql_type

    with psycopg.connect(url, autocommit=True) as con:
        # several replicas may start at once: one creates the tables, the others wait for it
        con.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            for table, columns in UI_SCHEMA.items():
                cols = ", ".join(f'"{c}" {pg(t)}' for c, t in columns.items())
                con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
                for c, t in columns.items():
                    con.execute(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{c}" {_plain_type(pg(t))}')
            con.execute('CREATE INDEX IF NOT EXISTS steps_thread ON steps ("threadId")')
            con.execute('CREATE INDEX IF NOT EXISTS threads_user ON threads ("userId")')
        finally:
            con.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def prepare_ui_database(url: str) -> None:
    """Create or update the chat-history tables where ``url`` (:func:`ui_database_url`) points."""
    if url.startswith("sqlite"):
        ensure_ui_schema(Path(url.split(":///", 1)[1]))
    elif url.startswith("postgresql"):
        ensure_ui_schema_postgres("postgresql://" + url.split("://", 1)[1])


class OrderedSQLAlchemyDataLayer(SQLAlchemyDataLayer):
    """Chainlit persists steps from fire-and-forget tasks (one per send/update), and one write can
    take more SQL statements than another (the first also creates the thread row), so a step's
    create could land after its update and save it empty. Step writes are serialized in the
    order their tasks start (an asyncio.Lock is FIFO), and SQL statements are serialized too, so
    SQLite never sees two writers ("database is locked")."""

    def __init__(self, *args: Any, services: Services, access: Access, runtime: Mapping[str, Any],
                 **kwargs: Any) -> None:
        """``services`` and ``access`` are the app's; ``runtime`` its per-process objects (the
        checkpointer under ``"saver"`` once the app has started)."""
        super().__init__(*args, **kwargs)
        self._sql_lock = asyncio.Lock()
        self._step_lock = asyncio.Lock()
        self._services, self._access, self._runtime = services, access, runtime

    async def execute_sql(self, query: str, parameters: dict) -> Any:
        async with self._sql_lock:
            return await super().execute_sql(query, parameters)

    async def create_step(self, step_dict: Any) -> None:
        async with self._step_lock:
            await SQLAlchemyDataLayer.create_step(self, step_dict)

    async def update_step(self, step_dict: Any) -> None:
        # the base update_step calls self.create_step, which would wait for this very lock
        async with self._step_lock:
            await SQLAlchemyDataLayer.create_step(self, step_dict)

    async def delete_step(self, step_id: str) -> None:
        async with self._step_lock:
            await SQLAlchemyDataLayer.delete_step(self, step_id)

    async def upsert_feedback(self, feedback: Any) -> str:
        """A thumbs up/down is kept with the chat and, by answer id, in the audit trail
        (`switchboard compare` reports it per model)."""
        feedback_id = await super().upsert_feedback(feedback)
        try:
            # Chainlit puts feedback on the turn's run step; the answer is its assistant message
            rows = await self.execute_sql(
                'SELECT id FROM steps WHERE (id = :id OR "parentId" = :id) AND type = \'assistant_message\' '
                'ORDER BY "createdAt" DESC LIMIT 1', {"id": feedback.forId})
            answer_id = uuid.UUID(rows[0]["id"]).hex
            await asyncio.to_thread(self._services.audit.record_feedback, answer_id, 1 if feedback.value else -1,
                                    feedback.comment)
        except Exception:  # noqa: BLE001 - feedback on a message without an answer id, or the audit db is down
            log.warning("feedback on %s not recorded in the audit trail", feedback.forId, exc_info=True)
        return feedback_id

    async def delete_thread(self, thread_id: str) -> None:
        """Deleting a conversation in the sidebar (Chainlit checks the user owns it) also deletes
        its graph state (summary, entities) and the images uploaded to it."""
        author = await self.get_thread_author(thread_id)
        await super().delete_thread(thread_id)
        # the graph state only when the LangGraph thread is this user's too: a chat thread can carry
        # the id of a conversation another door owns (the id came from the client)
        if (saver := self._runtime.get("saver")) and await self._access.owner(thread_id) == author:
            await saver.adelete_thread(thread_id)
        shutil.rmtree(upload_dir(self._services.settings.data_dir, thread_id), ignore_errors=True)


def ui_database_url(settings: Settings) -> str:
    """Where chat history lives: ``SWITCHBOARD_UI_DATABASE_URL`` if set, else the checkpointer's
    PostgreSQL database when it has one (every replica shows the same history), else SQLite in
    the data dir."""
    url = os.environ.get("SWITCHBOARD_UI_DATABASE_URL", "").strip()
    if url:
        return url
    if is_postgres(settings.checkpoint_url):
        return sqlalchemy_postgres_url(settings.checkpoint_url)
    return f"sqlite+aiosqlite:///{settings.data_dir / 'ui_history.sqlite'}"
