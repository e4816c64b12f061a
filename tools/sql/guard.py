"""Static checks for model-written SQL before it reaches a database.

The SQL specialist lets a language model write queries, so every statement is treated as hostile
until proven to be a single read-only query. The proof is structural: the text is *parsed* with
sqlglot (never matched with regexes, which comments and string literals defeat) and the whole
syntax tree is inspected. What the database finally runs is the normalised SQL regenerated from
that tree, so what was checked is what runs.

This is one of two independent layers: :mod:`tools.sql.engines` also opens every connection
read-only (SQLite ``mode=ro``, PostgreSQL read-only transactions and role), so a gap here still
cannot change data.

Besides the guard, :func:`validate_identifiers` lists unknown tables/columns so the agent can
hand them back to the model *before* spending a database round-trip on a doomed query.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Iterable, Mapping
from typing import cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope

__all__ = [
    "DENIED_FUNCTIONS",
    "DENIED_FUNCTION_PREFIXES",
    "UnsafeSQL",
    "check_read_only",
    "double_quoted_values_as_strings",
    "is_denied_function",
    "parse_one",
    "parse_statements",
    "referenced_tables",
    "validate_identifiers",
]

log = logging.getLogger("switchboard.sql")

_LOG_SQL_CHARS = 300

# Functions that read or write files, reach other servers, change settings, signal other
# sessions, execute SQL from a string, or just stall the server. One list for every dialect:
# refusing a PostgreSQL function on SQLite costs nothing and keeps the rule obvious.
DENIED_FUNCTIONS: frozenset[str] = frozenset(
    {
        # SQLite: extension loading, file I/O (fileio / sqlar / zipfile extensions), editor.
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
        "fsdir",
        "lsdir",
        "zipfile",
        "sqlar_compress",
        "sqlar_uncompress",
        "sqlite_dbpage",
        # PostgreSQL: server files and directories.
        "pg_stat_file",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        # PostgreSQL: settings, other backends, server administration.
        "set_config",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_drop_replication_slot",
        "pg_replication_origin_create",
        "pg_logical_emit_message",
        "pg_notify",
        "pg_stat_reset",
        "pg_stat_statements_reset",
        "pg_import_system_collations",
        # PostgreSQL: sequences and transaction ids (writes, even inside a SELECT).
        "nextval",
        "setval",
        "txid_current",
        "pg_current_xact_id",
        # PostgreSQL: functions that execute a query given as a string, bypassing this check.
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
    }
)
# Whole families: every member is dangerous or useless to a support answer.
DENIED_FUNCTION_PREFIXES: tuple[str, ...] = (
    "pg_read_",  # pg_read_file, pg_read_binary_file
    "pg_ls_",  # pg_ls_dir, pg_ls_logdir, pg_ls_waldir, pg_ls_tmpdir, ...
    "lo_",  # large objects: lo_import, lo_export, lo_put, lo_unlink, ...
    "dblink",  # dblink, dblink_exec, dblink_connect, ...
    "pg_sleep",  # pg_sleep, pg_sleep_for, pg_sleep_until: no answer needs to wait
    "pg_advisory",  # advisory locks block other sessions
    "pg_try_advisory",
    "pg_create_",  # replication slots, restore points
    "pg_replication_",
)

# Node types that are never part of a read-only query, wherever they appear in the tree
# (a writable CTE hides a DELETE inside an otherwise valid SELECT).
_FORBIDDEN_NODES: dict[type[exp.Expression], str] = {
    exp.Insert: "data modification (INSERT/REPLACE/UPSERT)",
    exp.Update: "data modification (UPDATE)",
    exp.Delete: "data modification (DELETE)",
    exp.Merge: "data modification (MERGE)",
    exp.Copy: "COPY (file or program I/O)",
    exp.Create: "schema change (CREATE)",
    exp.Drop: "schema change (DROP)",
    exp.Alter: "schema change (ALTER)",
    exp.TruncateTable: "data removal (TRUNCATE)",
    exp.Pragma: "PRAGMA",
    exp.Attach: "ATTACH",
    exp.Detach: "DETACH",
    exp.Set: "SET (session or transaction settings)",
    exp.Transaction: "transaction control (BEGIN)",
    exp.Commit: "transaction control (COMMIT)",
    exp.Rollback: "transaction control (ROLLBACK)",
    exp.Grant: "privilege change (GRANT)",
    exp.Revoke: "privilege change (REVOKE)",
    exp.Analyze: "ANALYZE",
    exp.Use: "USE",
    exp.LoadData: "LOAD DATA",
    exp.Kill: "KILL",
    exp.Execute: "EXECUTE",
    exp.Declare: "DECLARE",
    exp.Cache: "CACHE",
    exp.Uncache: "UNCACHE",
    exp.Refresh: "REFRESH",
    exp.Into: "SELECT ... INTO (creates a table)",
    exp.Lock: "row locking (FOR UPDATE/SHARE)",
    exp.Command: "statement",  # anything sqlglot could not model: VACUUM, CALL, EXPLAIN, ...
}

_FORBIDDEN_TYPES = tuple(_FORBIDDEN_NODES)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery)


class UnsafeSQL(ValueError):
    """A statement the guard refuses to run; ``reason`` is short enough to show the model.

    ``malformed`` is True when the text is not a statement at all (unparseable or empty): a
    typo to correct, unlike a well-formed statement that would write, which the SQL agent
    answers with a refusal rather than a silent retry.
    """

    def __init__(self, reason: str, sql: str = "", *, malformed: bool = False) -> None:
        super().__init__(f"refused SQL: {reason}")
        self.reason = reason
        self.sql = sql
        self.malformed = malformed


def _truncate(sql: str, limit: int = _LOG_SQL_CHARS) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _refuse(reason: str, sql: str, *, malformed: bool = False) -> UnsafeSQL:
    """Log the refusal (audit trail: who tried what) and build the exception to raise."""
    log.warning("refused SQL (%s): %s", reason, _truncate(sql))
    return UnsafeSQL(reason, sql, malformed=malformed)


PARSE_MEMO_SIZE = 256
"""Distinct (SQL, dialect) pairs whose parse is kept; see :func:`parse_statements`."""


@functools.lru_cache(maxsize=PARSE_MEMO_SIZE)
def _parsed(sql: str, dialect: str) -> tuple[exp.Expr | None, ...]:
    return tuple(sqlglot.parse(sql, read=dialect))  # an error is raised again on every call, never kept


def parse_statements(sql: str, dialect: str) -> list[exp.Expr | None]:
    """``sqlglot.parse(sql, read=dialect)``, from a small memo of recent queries.

    One query is parsed by the guard, by the name check, by the double-quote rewrite, by the
    sensitive-column check and again before it runs; parsing is most of their cost. Every call
    gets its own copy of the trees, since some callers rewrite them. Raises ``SqlglotError``."""
    return [None if s is None else s.copy() for s in _parsed(sql, dialect)]


def parse_one(sql: str, dialect: str) -> exp.Expr:
    """``sqlglot.parse_one(sql, read=dialect)`` through :func:`parse_statements`' memo."""
    statements = parse_statements(sql, dialect)
    if not statements or statements[0] is None:
        raise ParseError(f"No expression was parsed from '{sql}'")
    return exp.Block(expressions=statements) if len(statements) > 1 else statements[0]


def _parse(sql: str, dialect: str) -> list[exp.Expression]:
    """Parse into statements, dropping the empty ones a trailing ``;`` produces."""
    try:
        statements = parse_statements(sql, dialect)
    except SqlglotError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(f"could not parse the SQL ({first_line})", sql, malformed=True) from exc
    # sqlglot types parse() as ``Expr``; the statements it builds are ``Expression`` nodes
    return [cast(exp.Expression, s) for s in statements if s is not None]


def _node_label(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return f"{node.name.upper() or 'unknown'} statement"
    return next(label for cls, label in _FORBIDDEN_NODES.items() if isinstance(node, cls))


def _forbidden_node(tree: exp.Expression) -> exp.Expression | None:
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_TYPES):
            return node
    return None


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def is_denied_function(name: str) -> bool:
    """True for functions the guard refuses; also used by the SQLite authorizer at run time."""
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)


def _denied_function(tree: exp.Expression) -> str | None:
    for node in tree.find_all(exp.Func):
        name = _function_name(node)
        if is_denied_function(name):
            return name
    return None


def _disguised_function(tree: exp.Expression) -> str | None:
    """A function name that is not a plain identifier, e.g. PostgreSQL's U&"pg\\005fread_file".

    Escapes and quoting tricks could spell a denied name the deny-list would not recognise.
    """
    for node in tree.find_all(exp.Anonymous):
        name = str(node.name)
        if not _PLAIN_NAME.fullmatch(name):
            return name
    return None


def _structural_problem(tree: exp.Expression) -> str | None:
    """Why this single parsed statement is not a plain read-only query, or None if it is."""
    bad = _forbidden_node(tree)
    if bad is not None:
        where = "" if bad is tree else " inside the query"
        return f"{_node_label(bad)}{where} is not allowed: the database is read-only"
    if not isinstance(tree, _QUERY_ROOTS):
        # Unknown statements can parse as odd nodes (SAVEPOINT s -> an alias): name the keyword.
        words = tree.sql().split()
        kind = words[0].upper() if words else tree.key.upper()
        return f"only a single SELECT query is allowed (got {kind})"
    function = _denied_function(tree)
    if function is not None:
        return f"function {function}() is not allowed (file, server or session access)"
    disguised = _disguised_function(tree)
    if disguised is not None:
        return f"function name {disguised!r} is not a plain identifier"
    return None


def _check_one(sql: str, dialect: str) -> exp.Expression:
    statements = _parse(sql, dialect)
    if not statements:
        raise _refuse("empty SQL: expected one SELECT query", sql, malformed=True)
    if len(statements) > 1:
        raise _refuse(
            f"{len(statements)} statements found: send exactly one SELECT query, no ';'-stacking",
            sql,
        )
    problem = _structural_problem(statements[0])
    if problem is not None:
        raise _refuse(problem, sql)
    return statements[0]


def check_read_only(sql: str, dialect: str = "sqlite") -> str:
    """Return ``sql`` normalised (one statement, comments dropped) if it is a read-only query.

    Raises :class:`UnsafeSQL` unless the text is exactly one SELECT / WITH ... SELECT /
    set operation of SELECTs with no data-changing node anywhere in the tree and no function
    from :data:`DENIED_FUNCTIONS`. The regenerated SQL is parsed and checked a second time, so
    a sqlglot round-trip quirk cannot turn a checked query into an unchecked one.
    """
    return _read_only(sql, dialect)


@functools.lru_cache(maxsize=PARSE_MEMO_SIZE)  # the agent checks a query, then the database again before it runs
def _read_only(sql: str, dialect: str) -> str:
    tree = _check_one(sql, dialect)  # a refusal raises (and is logged) on every call: it is never kept
    normalised = tree.sql(dialect=dialect, comments=False)
    _check_one(normalised, dialect)
    return normalised


def referenced_tables(sql: str, dialect: str = "sqlite") -> set[str]:
    """Names of the real tables a query reads (CTE names excluded), as written in the query."""
    tree = _check_one(sql, dialect)
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    return {
        table.name
        for table in tree.find_all(exp.Table)
        if isinstance(table.this, exp.Identifier) and table.name.lower() not in cte_names
    }


# --------------------------------------------------------------------------------------------
# Identifier validation


def _is_system_table(table: exp.Table) -> bool:
    """Catalog tables exist without being in the described schema; don't flag them."""
    name, db = table.name.lower(), table.db.lower()
    return db in {"information_schema", "pg_catalog"} or name.startswith(("sqlite_", "pg_", "pragma_"))


def _scope_outputs(scope: Scope) -> set[str] | None:
    """Lower-cased output column names of a CTE/derived table, or None when not knowable."""
    alias = scope.expression.parent
    alias_columns = alias.args.get("alias") if isinstance(alias, (exp.CTE, exp.Subquery)) else None
    if isinstance(alias_columns, exp.TableAlias) and alias_columns.columns:
        return {c.name.lower() for c in alias_columns.columns}
    query = scope.expression
    if isinstance(query, exp.SetOperation):
        query = query.left
        while isinstance(query, (exp.SetOperation, exp.Subquery)):
            query = query.left if isinstance(query, exp.SetOperation) else query.this
    if not isinstance(query, exp.Select):
        return None
    if any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star) for e in query.expressions):
        return None
    names = query.named_selects
    if any(not n for n in names):
        return None
    return {n.lower() for n in names}


def _source_columns(source: object, schema: Mapping[str, set[str]]) -> set[str] | None:
    """Columns a FROM source provides, or None when it can't be attributed (skip, don't guess)."""
    if isinstance(source, exp.Table):
        return schema.get(source.name.lower())
    if isinstance(source, Scope):
        return _scope_outputs(source)
    return None


def lookup_source(scope: Scope | None, name: str) -> tuple[bool, object]:
    """Find a table alias in this scope or an enclosing one (correlated subqueries)."""
    while scope is not None:
        for key, source in scope.sources.items():
            if key.lower() == name:
                return True, source
        scope = scope.parent
    return False, None


def _suggest(name: str, candidates: Iterable[str]) -> str:
    """A "did you mean" hint: small models often misspell or pluralise names."""
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), sorted(by_lower), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


def _found_in(name: str, schema: Mapping[str, set[str]], display_tables: Mapping[str, str]) -> str:
    """Where a misplaced column really is ("; 'MakeId' is a column of car_names"), or "".

    Small models often take a column from the wrong table; naming its table points the model at
    the missing join, where a spelling suggestion would offer the very name it just used.
    """
    owners = sorted(display_tables.get(t, t) for t, columns in schema.items() if name.lower() in columns)
    if not owners:
        return ""
    more = f" and {len(owners) - 3} more" if len(owners) > 3 else ""
    return f"; {name!r} is a column of {', '.join(owners[:3])}{more}"


def _check_qualified(
    column: exp.Column,
    scope: Scope,
    schema: Mapping[str, set[str]],
    display: Mapping[str, str],
    display_tables: Mapping[str, str],
) -> str | None:
    qualifier = column.table.lower()
    found, source = lookup_source(scope, qualifier)
    if not found:
        return f"unknown table or alias {column.table!r} in {column.sql()}"
    columns = _source_columns(source, schema)
    if columns is None or column.name.lower() in columns:
        return None
    owner = source.name if isinstance(source, exp.Table) else column.table
    known = [display.get(c, c) for c in columns]
    hint = _found_in(column.name, schema, display_tables) or _suggest(column.name, known)
    return f"unknown column {column.name!r} in {owner}{hint}"


def _select_aliases(scope: Scope) -> set[str]:
    query = scope.expression
    if not isinstance(query, exp.Select):
        return set()
    return {e.alias.lower() for e in query.expressions if isinstance(e, exp.Alias)}


def _check_unqualified(
    column: exp.Column,
    scope: Scope,
    schema: Mapping[str, set[str]],
    all_columns: set[str],
    display_tables: Mapping[str, str],
) -> str | None:
    name = column.name.lower()
    current: Scope | None = scope
    while current is not None:
        if name in _select_aliases(current):
            return None  # a select-list alias (ORDER BY / HAVING / GROUP BY total)
        sources = [s for _, s in current.selected_sources.values()]
        provided = [_source_columns(s, schema) for s in sources]
        if any(p is None for p in provided):
            return None  # some source has unknown columns: can't attribute
        if any(name in p for p in provided if p is not None):
            return None
        current = current.parent
    tables = sorted(s.name for _, s in scope.selected_sources.values() if isinstance(s, exp.Table))
    where = f" in {', '.join(tables)}" if tables else ""
    hint = _found_in(column.name, schema, display_tables) or _suggest(column.name, all_columns)
    return f"unknown column {column.name!r}{where}{hint}"


def validate_identifiers(sql: str, schema: Mapping[str, Iterable[str]], dialect: str = "sqlite") -> list[str]:
    """Problems with table/column names in ``sql`` against ``schema`` ({table: [columns]}).

    Matching is case-insensitive; table aliases, CTE names and select-list aliases are resolved
    and correlated subqueries look outwards. Columns that cannot be attributed with certainty
    (``SELECT *`` sources, table functions) are skipped rather than guessed, so an empty list
    means "nothing obviously wrong", not "guaranteed to run". Raises :class:`UnsafeSQL` for SQL
    the guard would refuse anyway.
    """
    tree = _check_one(sql, dialect)
    lowered = {t.lower(): {c.lower() for c in cols} for t, cols in schema.items()}
    display = {c.lower(): c for cols in schema.values() for c in cols}
    display_tables = {t.lower(): t for t in schema}
    problems: list[str] = []
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or _is_system_table(table):
            continue
        name = table.name.lower()
        if name not in lowered and name not in cte_names:
            hint = _suggest(table.name, display_tables.values())
            problems.append(f"unknown table {table.name!r}{hint}")
    if problems:
        return sorted(set(problems))  # column checks against missing tables would only add noise
    all_columns = set(display.values())
    seen: set[int] = set()
    # Child scopes come first; a parent scope also lists its subqueries' unqualified columns,
    # so each column is checked once, in its innermost scope (which then looks outwards).
    for scope in traverse_scope(tree):
        for column in scope.columns:
            if column.is_star or id(column) in seen:
                continue
            seen.add(id(column))
            if column.table:
                problem = _check_qualified(column, scope, lowered, display, display_tables)
            else:
                problem = _check_unqualified(column, scope, lowered, all_columns, display_tables)
                if problem is not None and column.this.quoted:
                    problem += f" (a text value takes single quotes: '{column.name}')"
            if problem is not None and problem not in problems:
                problems.append(problem)
    return problems


# --------------------------------------------------------------------------------------------
# SQLite's double-quoted strings


def _names_in_query(tree: exp.Expression) -> set[str]:
    """Lower-cased aliases the query itself defines (select-list, table and CTE aliases)."""
    names = {a.alias.lower() for a in tree.find_all(exp.Alias) if a.alias}
    for alias in tree.find_all(exp.TableAlias):
        names.add(alias.name.lower())
        names.update(c.name.lower() for c in alias.columns)
    return names


def double_quoted_values_as_strings(sql: str, schema: Mapping[str, Iterable[str]], dialect: str = "sqlite") -> str:
    """Rewrite ``col = "Asia"`` as ``col = 'Asia'`` where ``"Asia"`` names no column or alias.

    SQLite reads a double-quoted name that matches no column as a string literal (a documented
    legacy quirk) and models trained on SQLite examples write values that way. The database
    would run such a query fine, but :func:`validate_identifiers` would report ``"Asia"`` as an
    unknown column and cost a retry. Only operands of a comparison (``=``, ``<>``, ``LIKE``,
    ``IN``, ``BETWEEN``, ...) are rewritten, and only when the name matches no column, table or
    alias anywhere, so a real quoted column is never turned into text. Returns ``sql`` unchanged
    when nothing needs rewriting. Raises :class:`UnsafeSQL` for SQL the guard would refuse.
    """
    tree = _check_one(sql, dialect)
    known = {name.lower() for table, columns in schema.items() for name in (table, *columns)}
    known |= _names_in_query(tree)
    values = [
        column
        for column in tree.find_all(exp.Column)
        if not column.table
        and isinstance(column.this, exp.Identifier)
        and column.this.quoted
        and isinstance(column.parent, exp.Predicate)
        and column.name.lower() not in known
    ]
    if not values:
        return sql
    for column in values:
        column.replace(exp.Literal.string(column.name))
    return check_read_only(tree.sql(dialect=dialect, comments=False), dialect)
