"""Read-only access to the SQL specialist's relational database (SQLite or PostgreSQL):
:class:`ReadOnlyDatabase`, built with :meth:`ReadOnlyDatabase.from_url`, and its errors.

Defence in depth: :func:`tools.sql.guard.check_read_only` refuses anything but one SELECT, and
*independently* the connection cannot write (:mod:`tools.sql.engines`). Results are
:class:`tools.sql.results.QueryResult`; the schema is :mod:`tools.sql.schema`.

The schema is reflected once per process and rendered compactly for prompts: the local model
reads prompts at about 58 tokens/s, so :meth:`ReadOnlyDatabase.describe` spends few tokens.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnClause, Select, func, inspect, literal_column, select
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import CompileError, DBAPIError

from tools.sql.engines import (
    align_identifier_case,
    postgres_engine,
    sqlite_engine,
    sqlite_path,
    sqlite_query_limits,
    without_cursor_prefix,
)
from tools.sql.guard import check_read_only, validate_identifiers
from tools.sql.results import QueryResult, cap_cell, sql_literal
from tools.sql.schema import (
    COMPACT_HEADER,
    ColumnInfo,
    ForeignKey,
    TableInfo,
    canonical_names,
    compact_table,
    compact_type,
    full_table,
)

__all__ = [
    "QueryTimeout",
    "ReadOnlyDatabase",
    "SQLExecutionError",
]

log = logging.getLogger("switchboard.sql")

DEFAULT_TIMEOUT_S = 5.0
# Result bounds (Settings.sql_max_cell_bytes / sql_max_result_bytes): a cell longer than this is
# shortened, a blob is only ever a placeholder, and rows stop once the result reaches its cap.
DEFAULT_MAX_CELL_BYTES = 4 * 1024
DEFAULT_MAX_RESULT_BYTES = 256 * 1024
_PG_ROW_BUFFER = 8  # rows a server-side cursor brings over at a time (each is capped on arrival)
# Personal-data profile (ReadOnlyDatabase.personal_columns): columns named like contact data...
_PERSONAL_NAME = re.compile(r"e-?mail|phone|fax|mobile|address|street|postal|zip_?code|post_?code", re.I)
_PERSONAL_SAMPLE = 50  # values sampled per text column
_PERSONAL_SHARE = 0.5  # ...or whose sampled values mostly hold e-mails/phones/cards/IBANs or copy such a column
_PERSONAL_COPY_VALUES = 2000  # distinct values of a personal column kept to recognise copies of it
_PERSONAL_COPY_MIN_CHARS = 6  # shorter values ("USA", "1") say nothing about being a copy
_PG_QUERY_CANCELED = "57014"  # SQLSTATE raised when statement_timeout fires
_SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres"}


# --------------------------------------------------------------------------------------------
# Errors


class SQLExecutionError(RuntimeError):
    """The database rejected a (guard-approved) query; the message is the database's own.

    The agent feeds ``str(error)`` back to the model so it can correct the query and retry.
    """

    def __init__(self, message: str, sql: str) -> None:
        super().__init__(message)
        self.sql = sql


class QueryTimeout(SQLExecutionError):
    """The query ran past the time limit and was interrupted by the database."""


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
            self.path = sqlite_path(parsed, base_dir)
            self._engine = sqlite_engine(self.path)
        else:
            self._engine = postgres_engine(parsed, timeout_s)
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

    def text_columns(self) -> list[tuple[str, str]]:
        """(table, column) of every text column that is not a primary key."""
        return [(t.name, c.name) for t in self.schema() for c in t.columns
                if not compact_type(c.type) and not c.primary_key]

    def distinct_text_values(self, columns: list[tuple[str, str]], limit: int) -> dict[tuple[str, str], list[str]]:
        """Up to ``limit`` distinct non-NULL values of each (table, column), read in one connection."""
        out: dict[tuple[str, str], list[str]] = {}
        with self._engine.connect() as conn, self._query_limits(conn):
            for table, column in columns:
                out[(table, column)] = self._text_values(conn, table, column, limit, True)
            conn.rollback()
        return out

    def _text_values(self, conn: Connection, table: str, column: str, limit: int, distinct: bool) -> list[str]:
        col: ColumnClause[Any] = sa_column(column)
        query = select(col).select_from(sa_table(table, col)).where(col.is_not(None)).limit(limit)
        if distinct:
            query = query.distinct()
        try:
            values = conn.execute(query).scalars().all()
        except DBAPIError as exc:
            log.warning("could not sample %s.%s (%s)", table, column, exc)
            conn.rollback()
            return []
        return [v[:200] for v in values if isinstance(v, str) and v.strip()]

    def _profile_personal(self) -> tuple[str, ...]:
        from tools.observability.redaction import find_personal_data

        text_columns = self.text_columns()
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
            lines += [compact_table(table)] if compact else full_table(table)
            if sample_rows > 0:
                samples = self.sample_rows(table.name, sample_rows)
                lines.append("  e.g. " + "; ".join("(" + ", ".join(map(sql_literal, r)) + ")" for r in samples))
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
        aligned = align_identifier_case(safe, self.dialect, canonical_names(self.schema()))
        return check_read_only(aligned, self.dialect)

    @contextmanager
    def _query_limits(self, conn: Connection) -> Iterator[None]:
        if self._backend == "sqlite":
            raw = conn.connection.dbapi_connection
            if not isinstance(raw, sqlite3.Connection):
                raise TypeError(f"expected a sqlite3 connection, got {type(raw).__name__}")
            with sqlite_query_limits(raw, self.timeout_s):
                yield
        else:
            yield  # statement_timeout and read-only transactions are set per session/transaction

    def _execution_error(self, exc: DBAPIError, sql: str) -> SQLExecutionError:
        orig = exc.orig
        message = without_cursor_prefix(str(orig).strip() if orig is not None else str(exc))
        interrupted = isinstance(orig, sqlite3.OperationalError) and message == "interrupted"
        if interrupted or getattr(orig, "sqlstate", None) == _PG_QUERY_CANCELED:
            return QueryTimeout(f"query stopped at the {self.timeout_s:g} s time limit ({message})", sql)
        return SQLExecutionError(message, sql)

    def run(self, sql: str, max_rows: int = 50) -> QueryResult:
        """Guard-check and execute one SELECT, returning at most ``max_rows`` rows.

        Results are bounded in bytes as they are fetched, one row at a time: each cell by
        ``max_cell_bytes`` (a blob is only a ``<BLOB n bytes>`` placeholder), the whole result by
        ``max_result_bytes`` (rows stop there; ``truncated`` and ``size_capped`` say so). On
        SQLite no single value may exceed ``_SQLITE_MAX_VALUE_BYTES`` (:mod:`tools.sql.engines`)
        while the query runs.

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
                        kept, cost, cut = cap_cell(value, self.max_cell_bytes)
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
