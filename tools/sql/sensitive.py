"""Which sensitive columns a query reads: the SQL specialist asks a reviewer before running one
that reads any (``tools/review.py`` pauses the turn)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope

from tools.sql.guard import lookup_source, parse_one


def sensitive_columns(configured: Iterable[str], db: Any, from_profile: bool = True) -> list[str]:
    """The configured ``Table.Column`` entries plus, when ``from_profile``, the columns the
    database's own profile shows to hold contact data (``db.personal_columns()``); an empty
    configured list still means "never review"."""
    entries = list(configured)
    if not entries:
        return []
    if from_profile:
        entries += [c for c in db.personal_columns() if c not in entries]
    return entries




def resolve_sensitive(entries: Iterable[str], column_map: Mapping[str, Iterable[str]]) -> dict[str, dict[str, str]]:
    """``{table lower: {column lower: "Table.Column"}}`` for configured ``Table.Column`` /
    ``Table.*`` entries that exist in this database (case-insensitive; others are ignored)."""
    tables = {t.lower(): (t, list(cols)) for t, cols in column_map.items()}
    marked: dict[str, dict[str, str]] = {}
    for entry in entries:
        table, _, column = entry.strip().rpartition(".")
        if (found := tables.get(table.strip().strip('"').lower())) is None:
            continue
        name, columns = found
        wanted = column.strip().strip('"').lower()
        for c in columns:
            if wanted == "*" or c.lower() == wanted:
                marked.setdefault(name.lower(), {})[c.lower()] = f"{name}.{c}"
    return marked


def _table_sources(scope: Scope) -> dict[str, exp.Table]:
    return {alias.lower(): source for alias, (_, source) in scope.selected_sources.items()
            if isinstance(source, exp.Table)}


def sensitive_reads(sql: str, column_map: Mapping[str, Iterable[str]], sensitive: Iterable[str],
                    dialect: str = "sqlite") -> list[str]:
    """The configured sensitive columns (``"Table.Column"``) that ``sql`` reads, sorted.

    Conservative: any reference counts (select list, WHERE, JOIN, ORDER BY, inside CTEs and
    subqueries), as does ``SELECT *`` or ``T.*`` over a table with sensitive columns, and a bare
    table alias used as a value (PostgreSQL's whole-row reference). ``COUNT(*)`` and ``EXISTS
    (SELECT * ...)`` read no column. A query that cannot be parsed counts as reading them all.
    """
    marked = resolve_sensitive(sensitive, column_map)
    if not marked:
        return []
    every = sorted(label for cols in marked.values() for label in cols.values())
    try:
        tree = parse_one(sql, dialect)
    except SqlglotError:
        return every
    lowered = {t.lower(): {c.lower() for c in cols} for t, cols in column_map.items()}
    found: set[str] = set()

    def whole(table: exp.Table) -> None:
        found.update(marked.get(table.name.lower(), {}).values())

    for scope in traverse_scope(tree):
        query = scope.expression
        if isinstance(query, exp.Select) and not isinstance(query.parent, exp.Exists):
            for projection in query.expressions:
                if isinstance(projection, exp.Star):
                    for table in _table_sources(scope).values():
                        whole(table)
                elif isinstance(projection, exp.Column) and projection.is_star and projection.table:
                    source = lookup_source(scope, projection.table.lower())[1]
                    if isinstance(source, exp.Table):
                        whole(source)
        for column in scope.columns:
            if column.is_star:
                continue
            name = column.name.lower()
            if column.table:
                source = lookup_source(scope, column.table.lower())[1]
                if isinstance(source, exp.Table) and (label := marked.get(source.name.lower(), {}).get(name)):
                    found.add(label)
                continue
            current: Scope | None = scope
            while current is not None:  # unqualified: the innermost scope with a table that has it
                tables = _table_sources(current)
                owners = [t for t in tables.values() if name in lowered.get(t.name.lower(), set())]
                for table in owners:
                    if label := marked.get(table.name.lower(), {}).get(name):
                        found.add(label)
                if owners:
                    break
                if name in tables:  # a table alias as a value: the whole row
                    whole(tables[name])
                    break
                current = current.parent
    return sorted(found)
