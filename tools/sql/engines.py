"""Read-only engines for the SQL specialist's database, and what a query runs under.

Defence in depth: :func:`tools.sql.guard.check_read_only` refuses anything but one SELECT, and
*independently* the connection cannot write:

* SQLite is opened through ``sqlite3.connect("file:...?mode=ro", uri=True)``, so even a query
  that slipped past the guard gets "attempt to write a readonly database". An authorizer on
  every connection admits only reads and non-denied functions, which also stops ATTACH and
  VACUUM INTO (they would create *other* files despite ``mode=ro``); model queries get no
  PRAGMA at all, and a progress handler interrupts them at the time limit.
* PostgreSQL sessions start with ``default_transaction_read_only=on`` and a
  ``statement_timeout``, and every transaction begins with ``SET TRANSACTION READ ONLY``. Use
  a role that only has SELECT (``scripts/postgres.sh`` creates ``chinook_reader``) so that even
  a session that turned read-only off could not write.

Also here: PostgreSQL error text without the server-side cursor wrapper, and identifier case
alignment so the same model SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import QueuePool
from sqlglot import exp

from tools.sql.guard import is_denied_function, parse_one

__all__ = [
    "AuthorizerFn",
    "align_identifier_case",
    "postgres_engine",
    "sqlite_engine",
    "sqlite_path",
    "sqlite_query_limits",
    "without_cursor_prefix",
]

# SQLite refuses to build any single value larger than this while a model query runs
# (SQLITE_LIMIT_LENGTH): a backstop, so no one value can take hundreds of MB before it is capped.
_SQLITE_MAX_VALUE_BYTES = 16 * 1024 * 1024
_PROGRESS_EVERY_N_OPS = 1000


def sqlite_path(url: URL, base_dir: Path | None) -> Path:
    """The existing database file a sqlite URL names; never lets SQLite create an empty one."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError(
            f"read-only SQLite needs a database file path (sqlite:///relative or "
            f"sqlite:////absolute), got {url.render_as_string(hide_password=True)!r}"
        )
    path = Path(database).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"SQLite database file not found: {path} (not creating an empty one)")
    return path


def sqlite_engine(path: Path) -> Engine:
    uri = f"{path.as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        # mode=ro: the file is opened read-only, so no statement can change it; the authorizer
        # also stops writes to *other* files (ATTACH, VACUUM INTO).
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.set_authorizer(_CONNECTION_AUTHORIZER)
        return conn

    return create_engine("sqlite://", creator=connect, poolclass=QueuePool, pool_size=2)


def _begin_read_only(conn: Connection) -> None:
    """First statement of every PostgreSQL transaction (SQLAlchemy "begin" event)."""
    # Plain cursor even when the triggering query streams (a server-side cursor can't SET).
    conn.exec_driver_sql("SET TRANSACTION READ ONLY", execution_options={"stream_results": False})


def postgres_engine(url: URL, timeout_s: float) -> Engine:
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    timeout_ms = max(1, round(timeout_s * 1000))
    options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
    existing = url.query.get("options")
    if isinstance(existing, str) and existing:
        options = f"{existing} {options}"  # ours come last, so they win
    engine = create_engine(
        url.difference_update_query(["options"]),
        connect_args={"options": options, "connect_timeout": 10},
        pool_pre_ping=True,
        pool_size=2,
    )
    event.listen(engine, "begin", _begin_read_only)
    return engine


_SQLITE_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
# PRAGMAs SQLAlchemy issues on connect and for reflection. The introspection ones only read,
# whatever their argument (a table name); read_uncommitted only reads when given no value.
_SQLITE_INTROSPECTION_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "foreign_key_list", "index_list", "index_info", "index_xinfo"}
)
_SQLITE_READABLE_SETTINGS = frozenset({"read_uncommitted"})
AuthorizerFn = Callable[[int, str | None, str | None, str | None, str | None], int]


def _sqlite_authorizer(*, allow_pragmas: bool) -> AuthorizerFn:
    """SQLite's own veto on every statement it prepares: reads and harmless functions only.

    Needed beyond ``mode=ro``: a read-only connection can still ``ATTACH`` (creating a new
    file) or ``VACUUM INTO`` another file. Connections always carry the variant that admits
    the few reading PRAGMAs SQLAlchemy needs; model queries run under the one that admits none.
    """

    def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None) -> int:
        if action in _SQLITE_READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and not is_denied_function((arg2 or "").lower()):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and allow_pragmas:
            name = (arg1 or "").lower()
            if name in _SQLITE_INTROSPECTION_PRAGMAS or (name in _SQLITE_READABLE_SETTINGS and arg2 is None):
                return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


_CONNECTION_AUTHORIZER = _sqlite_authorizer(allow_pragmas=True)
_QUERY_AUTHORIZER = _sqlite_authorizer(allow_pragmas=False)


@contextmanager
def sqlite_query_limits(raw: sqlite3.Connection, timeout_s: float) -> Iterator[None]:
    """Interrupt the query at the deadline, admit no PRAGMA and no value over
    ``_SQLITE_MAX_VALUE_BYTES``, then restore the defaults."""
    deadline = time.monotonic() + timeout_s
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY_N_OPS)
    raw.set_authorizer(_QUERY_AUTHORIZER)
    length = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _SQLITE_MAX_VALUE_BYTES)
    try:
        yield
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)
        raw.set_authorizer(_CONNECTION_AUTHORIZER)
        raw.set_progress_handler(None, 0)


_DECLARE_PREFIX = re.compile(r'DECLARE "[^"]*" CURSOR (?:WITHOUT HOLD )?FOR ')


def without_cursor_prefix(message: str) -> str:
    """Hide the server-side cursor wrapper from PostgreSQL's error context for the model.

    ``LINE 1: DECLARE "c_..." CURSOR FOR SELECT Nme ...`` becomes ``LINE 1: SELECT Nme ...``
    and the caret line below it moves left by the same amount, so it still points at the error.
    """
    lines = message.split("\n")
    for i, line in enumerate(lines):
        match = _DECLARE_PREFIX.search(line)
        if match is None:
            continue
        lines[i] = line[: match.start()] + line[match.end() :]
        width = match.end() - match.start()
        if i + 1 < len(lines) and lines[i + 1].strip() == "^":
            lines[i + 1] = lines[i + 1][width:]
    return "\n".join(lines)


def align_identifier_case(sql: str, dialect: str, canonical: Mapping[str, str]) -> str:
    """Quote unquoted identifiers with their exact schema spelling (PostgreSQL folds to lower).

    Chinook's PascalCase names are quoted in PostgreSQL, so ``SELECT FirstName FROM Customer``
    would look for ``customer.firstname``. Rewriting every unquoted identifier that matches a
    schema name, aliases included, keeps references consistent and lets the same model SQL run
    on SQLite and PostgreSQL.
    """
    tree = parse_one(sql, dialect)  # memoised: the guard has just parsed this very SQL
    for ident in tree.find_all(exp.Identifier):
        exact = canonical.get(ident.name.lower())
        if not ident.quoted and exact is not None and exact != exact.lower():
            ident.set("this", exact)
            ident.set("quoted", True)
    return tree.sql(dialect=dialect, comments=False)
