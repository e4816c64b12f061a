"""The reflected schema (:class:`TableInfo` with its :class:`ColumnInfo` and :class:`ForeignKey`)
and its rendering for prompts: one compact line per table, or the full listing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "COMPACT_HEADER",
    "ColumnInfo",
    "ForeignKey",
    "TableInfo",
    "canonical_names",
    "compact_table",
    "compact_type",
    "full_table",
    "name_words",
]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _singular(word: str) -> str:
    """Crude plural folding, applied to both sides so "customers" meets "Customer"."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def name_words(text: str) -> list[str]:
    """Lower-case words of a name or sentence: CamelCase and snake_case split, plurals folded
    (the schema selector's lexical ranking, value grounding's "which table does the question name")."""
    spaced = _CAMEL.sub(" ", text.replace("_", " "))
    return [_singular(w.lower()) for w in _WORD.findall(spaced)]


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


def compact_type(declared: str) -> str:
    """Short type for prompts; "" for text, which the prompt header declares as the default."""
    base = declared.split("(")[0].strip().upper()
    if not base or any(word in base for word in ("CHAR", "TEXT", "CLOB", "STRING")):
        return ""
    return base.split()[0]  # "TIMESTAMP WITHOUT TIME ZONE" -> "TIMESTAMP"


def _compact_column(table: TableInfo, col: ColumnInfo) -> str:
    parts = [col.name]
    reference = table.reference(col.name)
    if reference is None and compact_type(col.type):
        parts.append(compact_type(col.type))  # a foreign key's type is its target's
    if col.primary_key:
        parts.append("PK")
    if reference is not None:
        parts.append(f"-> {reference}")
    return " ".join(parts)


def compact_table(table: TableInfo) -> str:
    columns = ", ".join(_compact_column(table, c) for c in table.columns)
    extra = [
        f"({', '.join(fk.columns)}) -> {fk.ref_table}({', '.join(fk.ref_columns)})"
        for fk in table.foreign_keys
        if len(fk.columns) > 1
    ]
    return f"{table.name}({', '.join([columns, *extra])})"


def full_table(table: TableInfo) -> list[str]:
    lines = [f"TABLE {table.name} ({table.row_count} rows)"]
    for col in table.columns:
        flags = [col.type, "PRIMARY KEY" if col.primary_key else "", "" if col.nullable else "NOT NULL"]
        lines.append("  " + " ".join(f for f in [col.name, *flags] if f))
    for fk in table.foreign_keys:
        lines.append(f"  FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES {fk.ref_table} ({', '.join(fk.ref_columns)})")
    return lines


def create_table(table: TableInfo) -> str:
    """The table as one ``CREATE TABLE`` statement, the form code models see most in training."""
    columns = [" ".join(p for p in (c.name, c.type or "TEXT", "PRIMARY KEY" if c.primary_key and
                                     len(table.primary_key) == 1 else "") if p) for c in table.columns]
    if len(table.primary_key) > 1:
        columns.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    columns += [f"FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES {fk.ref_table}({', '.join(fk.ref_columns)})"
                for fk in table.foreign_keys]
    return f"CREATE TABLE {table.name} ({', '.join(columns)});"


COMPACT_HEADER = "Tables (PK = primary key, A -> T.B = foreign key, untyped columns are text):"


def canonical_names(tables: Sequence[TableInfo]) -> dict[str, str]:
    """lower-case -> exact spelling for table and column names whose case is unambiguous."""
    spellings: dict[str, set[str]] = {}
    for table in tables:
        for name in [table.name, *table.column_names()]:
            spellings.setdefault(name.lower(), set()).add(name)
    return {low: next(iter(names)) for low, names in spellings.items() if len(names) == 1}
