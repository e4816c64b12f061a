"""The database a process shares with its replicas (audit trail, ledger): SQLAlchemy on PostgreSQL
when the checkpointer is there, else a SQLite file of its own in the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, text

# A PostgreSQL advisory lock key: whoever creates or migrates Switchboard's tables holds it, so
# replicas that start at the same time do not race on CREATE TABLE (PostgreSQL fails the loser).
SCHEMA_LOCK = 0x5357_5343_4845_4D41  # "SWSCHEMA"


def is_postgres(checkpoint_url: str) -> bool:
    """Does the checkpointer setting name a PostgreSQL database (then every shared store is there)?"""
    return checkpoint_url.strip().startswith(("postgres://", "postgresql://"))


def sqlalchemy_postgres_url(checkpoint_url: str) -> str:
    """A ``postgresql://`` URL for SQLAlchemy's psycopg (3) driver."""
    return "postgresql+psycopg://" + checkpoint_url.strip().split("://", 1)[1]


def state_url(checkpoint_url: str, data_dir: Path, sqlite_file: str) -> str:
    """The checkpointer's PostgreSQL database (psycopg driver) when ``checkpoint_url`` names one,
    else ``sqlite_file`` in ``data_dir``."""
    if is_postgres(checkpoint_url):
        return sqlalchemy_postgres_url(checkpoint_url)
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / sqlite_file}"


def open_state_engine(url: str, metadata: MetaData) -> Engine:
    """An engine with ``metadata``'s tables created: SQLite in WAL mode (readers never wait for the
    writer) with synchronous=NORMAL, PostgreSQL with connections checked before use (a restarted
    server)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(engine)
        return engine
    with engine.begin() as conn:  # replicas starting together: one creates the tables, the others wait
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        metadata.create_all(conn)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: in WAL mode, synchronous=NORMAL keeps every commit across a killed process
    (an OS crash or power loss may drop the last ones) without an fsync per write."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
