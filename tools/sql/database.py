"""Read-only access to the SQL specialist's relational database (SQLite or PostgreSQL).

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

The schema is reflected once per process and rendered compactly for prompts: the local model
reads prompts at about 58 tokens/s, so :meth:`ReadOnlyDatabase.describe` spends few tokens.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlglot
from sqlalchemy import ColumnClause, Select, create_engine, event, func, inspect, literal_column, select
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import CompileError, DBAPIError
from sqlalchemy.pool import QueuePool
from sqlglot import exp

from tools.sql.guard import check_read_only, is_denied_function, validate_identifiers

__all__ = [
    "ColumnInfo",
    "ForeignKey",
    "QueryResult",
    "QueryTimeout",
    "ReadOnlyDatabase",
    "SQLExecutionError",
    "TableInfo",
]

log = logging.getLogger("switchboard.sql")

DEFAULT_TIMEOUT_S = 5.0
# Result bounds (Settings.sql_max_cell_bytes / sql_max_result_bytes): a cell longer than this is
# shortened, a blob is only ever a placeholder, and rows stop once the result reaches its cap.
DEFAULT_MAX_CELL_BYTES = 4 * 1024
DEFAULT_MAX_RESULT_BYTES = 256 * 1024
# SQLite refuses to build any single value larger than this while a model query runs
# (SQLITE_LIMIT_LENGTH): a backstop, so no one value can take hundreds of MB before it is capped.
_SQLITE_MAX_VALUE_BYTES = 16 * 1024 * 1024
_PG_ROW_BUFFER = 8  # rows a server-side cursor brings over at a time (each is capped on arrival)
# Personal-data profile (ReadOnlyDatabase.personal_columns): columns named like contact data...
_PERSONAL_NAME = re.compile(r"e-?mail|phone|fax|mobile|address|street|postal|zip_?code|post_?code", re.I)
_PERSONAL_SAMPLE = 50  # values sampled per text column
_PERSONAL_SHARE = 0.5  # ...or whose sampled values mostly hold e-mails/phones/cards/IBANs or copy such a column
_PERSONAL_COPY_VALUES = 2000  # distinct values of a personal column kept to recognise copies of it
_PERSONAL_COPY_MIN_CHARS = 6  # shorter values ("USA", "1") say nothing about being a copy
_SAMPLE_VALUE_CHARS = 20  # keeps '2021-01-01 00:00:00' whole
_MARKDOWN_CELL_CHARS = 60
_PROGRESS_EVERY_N_OPS = 1000
_PG_QUERY_CANCELED = "57014"  # SQLSTATE raised when statement_timeout fires
_SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres"}


# --------------------------------------------------------------------------------------------
# Errors and results


class SQLExecutionError(RuntimeError):
    """The database rejected a (guard-approved) query; the message is the database's own.

    The agent feeds ``str(error)`` back to the model so it can correct the query and retry.
    """

    def __init__(self, message: str, sql: str) -> None:
        super().__init__(message)
        self.sql = sql


class QueryTimeout(SQLExecutionError):
    """The query ran past the time limit and was interrupted by the database."""


@dataclass(frozen=True)
class QueryResult:
    """What a query returned: at most ``max_rows`` rows, and whether more existed."""

    sql: str  # the SQL actually executed (normalised by the guard), to show the work
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float
    # values shortened or replaced by a placeholder (blobs, text over the per-cell cap)
    cut_cells: int = 0
    # rows stopped because the result reached its byte cap (``truncated`` is then True too)
    size_capped: bool = False

    def cut_note(self) -> str:
        """One sentence saying how the result was cut to its byte caps; "" when it was not."""
        parts = []
        if self.cut_cells:
            parts.append(f"{self.cut_cells} value{'s' if self.cut_cells != 1 else ''} too large to show "
                         "(binary data or long text) were shortened")
        if self.size_capped:
            parts.append(f"only the first {len(self.rows)} row{'s' if len(self.rows) != 1 else ''} fit "
                         "the result size limit")
        return f"(The result was cut: {'; '.join(parts)}.)" if parts else ""

    def as_markdown(self, max_rows: int = 10) -> str:
        """A small Markdown table for an answer or a prompt, with a note when rows are cut."""
        if not self.columns:
            return "(no columns)"
        lines = [
            "| " + " | ".join(_markdown_cell(c) for c in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        shown = self.rows[:max_rows]
        lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in shown]
        if not self.rows:
            lines.append("_(no rows)_")
        elif len(shown) < len(self.rows) or self.truncated:
            total = f"more than {len(self.rows)}" if self.truncated else str(len(self.rows))
            lines.append(f"_{len(shown)} of {total} rows shown_")
        return "\n".join(lines)


def _format_value(value: Any, limit: int) -> str:
    """Render one value compactly: NULL, numbers as-is, text truncated to ``limit`` chars."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".10g")
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cap_cell(value: Any, limit: int) -> tuple[Any, int, bool]:
    """``(value to keep, its size in bytes, whether it was cut)`` under a per-cell byte cap.

    A blob is never kept: it becomes ``<BLOB n bytes>``. Text over ``limit`` bytes (UTF-8) is
    cut at ``limit`` and says how long it was. Everything else is kept as is (small)."""
    if isinstance(value, memoryview):
        return f"<BLOB {value.nbytes} bytes>", 24, True
    if isinstance(value, (bytes, bytearray)):
        return f"<BLOB {len(value)} bytes>", 24, True
    if isinstance(value, str):
        if len(value) * 4 <= limit:  # cannot be over the cap, whatever the characters
            return value, len(value), False
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= limit:
            return value, len(encoded), False
        head = encoded[:limit].decode("utf-8", "ignore")
        return f"{head}… [cut: {len(encoded)} bytes]", limit + 32, True
    return value, 16, False


def _markdown_cell(value: Any) -> str:
    return _format_value(value, _MARKDOWN_CELL_CHARS).replace("|", "\\|")


def _sql_literal(value: Any) -> str:
    """Sample values as SQL literals, so the model copies the right quoting into WHERE clauses."""
    text = _format_value(value, _SAMPLE_VALUE_CHARS)
    if value is None or isinstance(value, (bool, int, float, Decimal)):
        return text
    return "'" + text.replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # as the database declares it, e.g. "NVARCHAR(40)", "INTEGER", "NUMERIC(10, 2)"
    nullable: bool
    primary_key: bool


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]
    row_count: int

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def reference(self, column: str) -> str | None:
        """``"Table.Column"`` that ``column`` points to via a single-column foreign key."""
        for fk in self.foreign_keys:
            if fk.columns == (column,):
                return f"{fk.ref_table}.{fk.ref_columns[0]}"
        return None


def _compact_type(declared: str) -> str:
    """Short type for prompts; "" for text, which the prompt header declares as the default."""
    base = declared.split("(")[0].strip().upper()
    if not base or any(word in base for word in ("CHAR", "TEXT", "CLOB", "STRING")):
        return ""
    return base.split()[0]  # "TIMESTAMP WITHOUT TIME ZONE" -> "TIMESTAMP"


def _compact_column(table: TableInfo, col: ColumnInfo) -> str:
    parts = [col.name]
    reference = table.reference(col.name)
    if reference is None and _compact_type(col.type):
        parts.append(_compact_type(col.type))  # a foreign key's type is its target's
    if col.primary_key:
        parts.append("PK")
    if reference is not None:
        parts.append(f"-> {reference}")
    return " ".join(parts)


def _compact_table(table: TableInfo) -> str:
    columns = ", ".join(_compact_column(table, c) for c in table.columns)
    extra = [
        f"({', '.join(fk.columns)}) -> {fk.ref_table}({', '.join(fk.ref_columns)})"
        for fk in table.foreign_keys
        if len(fk.columns) > 1
    ]
    return f"{table.name}({', '.join([columns, *extra])})"


def _full_table(table: TableInfo) -> list[str]:
    lines = [f"TABLE {table.name} ({table.row_count} rows)"]
    for col in table.columns:
        flags = [col.type, "PRIMARY KEY" if col.primary_key else "", "" if col.nullable else "NOT NULL"]
        lines.append("  " + " ".join(f for f in [col.name, *flags] if f))
    for fk in table.foreign_keys:
        lines.append(f"  FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES {fk.ref_table} ({', '.join(fk.ref_columns)})")
    return lines


COMPACT_HEADER = "Tables (PK = primary key, A -> T.B = foreign key, untyped columns are text):"


# --------------------------------------------------------------------------------------------
# Engines


def _sqlite_path(url: URL, base_dir: Path | None) -> Path:
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


def _sqlite_engine(path: Path) -> Engine:
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


def _postgres_engine(url: URL, timeout_s: float) -> Engine:
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
def _sqlite_query_limits(raw: sqlite3.Connection, timeout_s: float) -> Iterator[None]:
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


def _without_cursor_prefix(message: str) -> str:
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


def _canonical_names(tables: Sequence[TableInfo]) -> dict[str, str]:
    """lower-case -> exact spelling for table and column names whose case is unambiguous."""
    spellings: dict[str, set[str]] = {}
    for table in tables:
        for name in [table.name, *table.column_names()]:
            spellings.setdefault(name.lower(), set()).add(name)
    return {low: next(iter(names)) for low, names in spellings.items() if len(names) == 1}


def _align_identifier_case(sql: str, dialect: str, canonical: Mapping[str, str]) -> str:
    """Quote unquoted identifiers with their exact schema spelling (PostgreSQL folds to lower).

    Chinook's PascalCase names are quoted in PostgreSQL, so ``SELECT FirstName FROM Customer``
    would look for ``customer.firstname``. Rewriting every unquoted identifier that matches a
    schema name, aliases included, keeps references consistent and lets the same model SQL run
    on SQLite and PostgreSQL.
    """
    tree = sqlglot.parse_one(sql, read=dialect)
    for ident in tree.find_all(exp.Identifier):
        exact = canonical.get(ident.name.lower())
        if not ident.quoted and exact is not None and exact != exact.lower():
            ident.set("this", exact)
            ident.set("quoted", True)
    return tree.sql(dialect=dialect, comments=False)


# --------------------------------------------------------------------------------------------
# The database


class ReadOnlyDatabase:
    """A database the SQL specialist may read, never change. Build with :meth:`from_url`."""

    def __init__(self, url: str | URL, *, timeout_s: float = DEFAULT_TIMEOUT_S, base_dir: Path | None = None,
                 max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES,
                 max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        parsed = make_url(url)
        backend = "postgresql" if parsed.get_backend_name() in ("postgres", "postgresql") else parsed.get_backend_name()
        if backend not in _SQLGLOT_DIALECTS:
            raise ValueError(f"unsupported database {backend!r}: use a sqlite:// or postgresql:// URL")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_cell_bytes < 64 or max_result_bytes < max_cell_bytes:
            raise ValueError("max_cell_bytes must be at least 64 and max_result_bytes at least max_cell_bytes")
        self.timeout_s = timeout_s
        self.max_cell_bytes = max_cell_bytes
        self.max_result_bytes = max_result_bytes
        self.url = parsed.render_as_string(hide_password=True)
        self._backend = backend
        self.path: Path | None = None
        if backend == "sqlite":
            self.path = _sqlite_path(parsed, base_dir)
            self._engine = _sqlite_engine(self.path)
        else:
            self._engine = _postgres_engine(parsed, timeout_s)
        self._lock = threading.Lock()
        self._schema: tuple[TableInfo, ...] | None = None
        self._descriptions: dict[tuple[object, ...], str] = {}
        self._personal: tuple[str, ...] | None = None

    @classmethod
    def from_url(
        cls, url: str | URL, *, timeout_s: float = DEFAULT_TIMEOUT_S, base_dir: Path | None = None,
        max_cell_bytes: int = DEFAULT_MAX_CELL_BYTES, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> ReadOnlyDatabase:
        """Open ``sqlite:///relative/path`` (against ``base_dir`` or the CWD),
        ``sqlite:////absolute/path`` or ``postgresql://user@host:port/db``."""
        return cls(url, timeout_s=timeout_s, base_dir=base_dir, max_cell_bytes=max_cell_bytes,
                   max_result_bytes=max_result_bytes)

    def __repr__(self) -> str:
        return f"ReadOnlyDatabase({self.url!r})"

    @property
    def dialect(self) -> str:
        """The sqlglot dialect name: "sqlite" or "postgres"."""
        return _SQLGLOT_DIALECTS[self._backend]

    @property
    def engine(self) -> Engine:
        """The underlying engine, read-only at connection level; bypasses the guard (tests)."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    # -- schema --------------------------------------------------------------------------------

    def schema(self) -> tuple[TableInfo, ...]:
        """All tables, reflected once per process (the demo schema does not change)."""
        with self._lock:
            if self._schema is None:
                self._schema = self._reflect()
            return self._schema

    def table_names(self) -> list[str]:
        return [t.name for t in self.schema()]

    def table(self, name: str) -> TableInfo:
        """Case-insensitive lookup; the error lists the real tables so the model can recover."""
        for table in self.schema():
            if table.name.lower() == name.lower():
                return table
        raise KeyError(f"unknown table {name!r}; tables are: {', '.join(self.table_names())}")

    def column_map(self) -> dict[str, list[str]]:
        """``{table: [columns]}``, the shape :func:`tools.sql.guard.validate_identifiers` takes."""
        return {t.name: t.column_names() for t in self.schema()}

    def validate(self, sql: str) -> list[str]:
        """Unknown tables/columns in ``sql``, to hand back to the model before running it."""
        return validate_identifiers(sql, self.column_map(), self.dialect)

    def _type_name(self, sa_type: Any) -> str:
        try:
            return str(sa_type.compile(dialect=self._engine.dialect))
        except CompileError:
            # e.g. a SQLite column declared with a type name SQLAlchemy doesn't know.
            return type(sa_type).__name__.upper()

    def _reflect(self) -> tuple[TableInfo, ...]:
        inspector = inspect(self._engine)
        tables: list[TableInfo] = []
        with self._engine.connect() as conn:
            for name in sorted(inspector.get_table_names()):
                pk = tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ())
                columns = tuple(
                    ColumnInfo(
                        name=c["name"],
                        type=self._type_name(c["type"]),
                        nullable=bool(c.get("nullable", True)),
                        primary_key=c["name"] in pk,
                    )
                    for c in inspector.get_columns(name)
                )
                fks = tuple(
                    ForeignKey(
                        columns=tuple(fk["constrained_columns"]),
                        ref_table=fk["referred_table"],
                        ref_columns=tuple(fk["referred_columns"]),
                    )
                    for fk in inspector.get_foreign_keys(name)
                )
                count = conn.execute(select(func.count()).select_from(sa_table(name))).scalar_one()
                tables.append(TableInfo(name, columns, pk, fks, int(count)))
        return tuple(tables)

    def personal_columns(self) -> tuple[str, ...]:
        """``"Table.Column"`` labels of text columns that hold personal contact data, found in
        this database's own profile (computed once per database object, then cached):

        * by name: e-mail, phone, fax, mobile, address, street, postal/zip code;
        * by value: most of a column's sampled values hold an e-mail, phone, card number or IBAN
          (:func:`tools.observability.redaction.find_personal_data`, the log redactor's detectors);
        * as a copy: most of its sampled values also occur in a column found above, so a
          copied column (``Invoice.BillingAddress`` beside ``Customer.Address``) is covered
          whatever it is called.

        The SQL specialist merges these with ``Settings.sensitive_columns``.
        """
        with self._lock:
            if self._personal is not None:
                return self._personal
        found = self._profile_personal()
        with self._lock:
            self._personal = found
        log.info("personal-data profile of %s: %s", self.url, ", ".join(found) or "none")
        return found

    def _text_values(self, conn: Connection, table: str, column: str, limit: int, distinct: bool) -> list[str]:
        col: ColumnClause[Any] = sa_column(column)
        query = select(col).select_from(sa_table(table, col)).where(col.is_not(None)).limit(limit)
        if distinct:
            query = query.distinct()
        try:
            values = conn.execute(query).scalars().all()
        except DBAPIError as exc:
            log.warning("personal-data profile: could not sample %s.%s (%s)", table, column, exc)
            conn.rollback()
            return []
        return [v[:200] for v in values if isinstance(v, str) and v.strip()]

    def _profile_personal(self) -> tuple[str, ...]:
        from tools.observability.redaction import find_personal_data

        text_columns = [(t.name, c.name) for t in self.schema() for c in t.columns
                        if not _compact_type(c.type) and not c.primary_key]
        personal: set[tuple[str, str]] = set()
        samples: dict[tuple[str, str], list[str]] = {}
        with self._engine.connect() as conn:
            for table, column in text_columns:
                if _PERSONAL_NAME.search(column):
                    personal.add((table, column))
                    continue
                values = samples[(table, column)] = self._text_values(conn, table, column, _PERSONAL_SAMPLE, False)
                hits = sum(1 for v in values if find_personal_data(v))
                if values and hits >= _PERSONAL_SHARE * len(values):
                    personal.add((table, column))
            known: set[str] = set()
            for table, column in sorted(personal):
                known.update(v for v in self._text_values(conn, table, column, _PERSONAL_COPY_VALUES, True)
                             if len(v) >= _PERSONAL_COPY_MIN_CHARS)
            for key, values in samples.items():
                long_values = [v for v in values if len(v) >= _PERSONAL_COPY_MIN_CHARS]
                if key not in personal and long_values and \
                        sum(v in known for v in long_values) >= _PERSONAL_SHARE * len(long_values):
                    personal.add(key)
            conn.rollback()
        return tuple(sorted(f"{t}.{c}" for t, c in personal))

    def sample_rows(self, table: str, n: int = 2) -> list[tuple[Any, ...]]:
        """The first ``n`` rows by primary key: real values show formats (dates, ids) to the model."""
        info = self.table(table)
        order: list[ColumnClause[Any]] = [sa_column(c) for c in info.primary_key]
        query: Select[Any] = select(literal_column("*")).select_from(sa_table(info.name, *order)).order_by(*order).limit(n)
        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def describe(self, tables: list[str] | None = None, sample_rows: int = 2, compact: bool = True) -> str:
        """Schema text for prompts: compact is one line per table (+ one line of samples)."""
        key = (tuple(t.lower() for t in tables) if tables is not None else None, sample_rows, compact)
        with self._lock:
            cached = self._descriptions.get(key)
        if cached is not None:
            return cached
        selected = [self.table(t) for t in tables] if tables is not None else list(self.schema())
        lines = [COMPACT_HEADER] if compact else []
        for table in selected:
            lines += [_compact_table(table)] if compact else _full_table(table)
            if sample_rows > 0:
                samples = self.sample_rows(table.name, sample_rows)
                lines.append("  e.g. " + "; ".join("(" + ", ".join(map(_sql_literal, r)) + ")" for r in samples))
        text = "\n".join(lines)
        with self._lock:
            self._descriptions[key] = text
        return text

    # -- queries -------------------------------------------------------------------------------

    def _executable(self, sql: str) -> str:
        """Guard, then adapt identifier case for PostgreSQL; returns the SQL that will run."""
        safe = check_read_only(sql, self.dialect)
        if self._backend != "postgresql":
            return safe
        aligned = _align_identifier_case(safe, self.dialect, _canonical_names(self.schema()))
        return check_read_only(aligned, self.dialect)

    @contextmanager
    def _query_limits(self, conn: Connection) -> Iterator[None]:
        if self._backend == "sqlite":
            raw = conn.connection.dbapi_connection
            if not isinstance(raw, sqlite3.Connection):
                raise TypeError(f"expected a sqlite3 connection, got {type(raw).__name__}")
            with _sqlite_query_limits(raw, self.timeout_s):
                yield
        else:
            yield  # statement_timeout and read-only transactions are set per session/transaction

    def _execution_error(self, exc: DBAPIError, sql: str) -> SQLExecutionError:
        orig = exc.orig
        message = _without_cursor_prefix(str(orig).strip() if orig is not None else str(exc))
        interrupted = isinstance(orig, sqlite3.OperationalError) and message == "interrupted"
        if interrupted or getattr(orig, "sqlstate", None) == _PG_QUERY_CANCELED:
            return QueryTimeout(f"query stopped at the {self.timeout_s:g} s time limit ({message})", sql)
        return SQLExecutionError(message, sql)

    def run(self, sql: str, max_rows: int = 50) -> QueryResult:
        """Guard-check and execute one SELECT, returning at most ``max_rows`` rows.

        Results are bounded in bytes as they are fetched, one row at a time: each cell by
        ``max_cell_bytes`` (a blob is only a ``<BLOB n bytes>`` placeholder), the whole result by
        ``max_result_bytes`` (rows stop there; ``truncated`` and ``size_capped`` say so). On
        SQLite no single value may exceed ``_SQLITE_MAX_VALUE_BYTES`` while the query runs.

        Raises :class:`tools.sql.guard.UnsafeSQL` before touching the database for anything but
        a read-only query, :class:`QueryTimeout` past ``timeout_s`` and
        :class:`SQLExecutionError` (with the database's message) for any other database error.
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        executable = self._executable(sql)
        options: dict[str, Any] = {"no_parameters": True}  # '%' and ':x' are SQL, not placeholders
        if self._backend == "postgresql":
            options["stream_results"] = True  # server-side cursor: fetch only what we keep
            options["max_row_buffer"] = _PG_ROW_BUFFER
        started = time.perf_counter()
        rows: list[tuple[Any, ...]] = []
        cut_cells, size, size_capped, more = 0, 0, False, False
        try:
            with self._engine.connect() as conn, self._query_limits(conn):
                result = conn.exec_driver_sql(executable, execution_options=options)
                columns = list(result.keys())
                while (raw_row := result.fetchone()) is not None:  # one row in memory at a time
                    if len(rows) == max_rows:
                        more = True
                        break
                    row, row_size = [], 0
                    for value in raw_row:
                        kept, cost, cut = _cap_cell(value, self.max_cell_bytes)
                        row.append(kept)
                        row_size += cost
                        cut_cells += cut
                    del raw_row
                    if size + row_size > self.max_result_bytes:
                        size_capped = more = True
                        break
                    rows.append(tuple(row))
                    size += row_size
                result.close()
                conn.rollback()  # nothing to keep, whatever happened
        except DBAPIError as exc:
            error = self._execution_error(exc, executable)
            log.info("SQL failed (%s): %s", error, executable[:300])
            raise error from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        if cut_cells or size_capped:
            log.info("SQL result cut to its byte caps (%d cells cut, size capped: %s): %s",
                     cut_cells, size_capped, executable[:300])
        return QueryResult(executable, columns, rows, more, elapsed_ms, cut_cells=cut_cells, size_capped=size_capped)
