"""Triage training data built from what is connected, offline and without any LLM.

The routes file's examples describe the demo music store; a new company's database and help
center would be routed badly by them alone. This module writes extra, template-based examples:

* :func:`schema_examples` -- support-style questions from the SQL schema (humanised table and
  column names, a few real sampled values, foreign keys) for the ``sql`` route;
* :func:`knowledge_outline` / :func:`knowledge_examples` -- questions from the titles and
  section headings of the ingested documents for the ``rag`` route;
* :func:`training_set` -- the routes file's examples (weighted higher) plus the generated ones,
  a :class:`TrainingSet` with a ``fingerprint``;
* :func:`load_or_train` -- the fitted classifier, cached on disk by that fingerprint (and the
  embedder), so an unchanged set costs no embedding at start-up;
* :func:`self_check` -- cross-validated accuracy, the most confused route pairs and the most
  ambiguous examples, to show what the generated data does to triage.

Everything is deterministic for a given database, knowledge base and seed. Sampled values are
bounded (rows read, value length) and values that look like contact data are never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from tools.observability.redaction import find_personal_data
from tools.routing.intent import IntentClassifier, RouteConfig
from tools.sql.database import SQLExecutionError
from tools.sql.guard import UnsafeSQL
from tools.sql.schema import TableInfo, compact_type

if TYPE_CHECKING:
    from tools.models.embeddings import MiniLMEmbedder
    from tools.sql.database import ReadOnlyDatabase

__all__ = [
    "GENERATOR_VERSION",
    "SelfCheck",
    "ChunkStore",
    "TrainingSet",
    "cache_path",
    "embedder_identity",
    "knowledge_examples",
    "knowledge_outline",
    "load_or_train",
    "schema_examples",
    "self_check",
    "training_set",
]

log = logging.getLogger("switchboard.triage")

GENERATOR_VERSION: Final = 1
"""Part of every :attr:`TrainingSet.fingerprint`: bump when the templates or the set's layout
change, so cached classifiers built from older data are not reused."""

ORIGINS: Final = ("routes", "schema", "knowledge")

# Bounds on what is read from the database.
_ROWS_READ = 500  # rows of one table read to sample one column's values
_GROUPS_READ = 40  # distinct values kept from those rows
_MAX_VALUE_CHARS = 40
_MAX_TABLES = 60
_MAX_COLUMNS = 16  # columns looked at per table
_MAX_QUERIES = 300  # sample queries per call (a label per table first, then columns)
_VALUES_PER_COLUMN = 3
# Bounds on what is read from the knowledge base.
_MAX_CHUNKS_READ = 20_000
_CHUNK_PAGE = 1000
_MAX_DOCUMENTS = 300
_MAX_SECTIONS = 40
_MAX_HEADING_CHARS = 80
# Self-check.
_SMALL_MARGIN = 0.2  # top-probability minus runner-up below this counts as ambiguous
_MAX_AMBIGUOUS = 10
_MAX_CONFUSED = 5


# ============================================================================================
# Names


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[\W_]+")
_KEY_WORDS = frozenset({"id", "ids", "code", "key", "uuid", "guid", "pk", "fk", "no", "nr", "num", "ref", "yn"})
_PREPOSITIONS = frozenset({"to", "of", "by", "for", "from", "in", "on", "at", "with", "as"})
_LOCATION_WORDS = frozenset({"city", "country", "state", "region", "province", "county", "town", "location"})
_GENERIC_MEASURES = frozenset({"total", "amount", "price", "cost", "value", "quantity", "sum", "fee", "balance"})
_SUMMABLE_WORDS = frozenset({"total", "amount", "price", "cost", "fee", "fees", "quantity", "qty", "revenue", "sales",
                             "paid", "charge", "balance", "bytes", "milliseconds", "seconds", "minutes", "hours",
                             "duration", "length", "units", "spend", "spent", "payment", "tax", "discount", "sum"})
_LABEL_WORDS = ("name", "title", "label", "description")
_PERSONAL_COLUMN = re.compile(
    r"e-?mail|phone|fax|mobile|cell|address|street|postal|zip|post_?code|password|passwd|secret|token|"
    r"ssn|social_?security|iban|card|account_?number|tax_?id|national_?id|passport|ip_?addr", re.I)
_IRREGULAR_PLURALS = {"person": "people", "child": "children", "man": "men", "woman": "women",
                      "mouse": "mice", "analysis": "analyses", "index": "indexes"}
_IRREGULAR_SINGULARS = {v: k for k, v in _IRREGULAR_PLURALS.items()}
_UNCOUNTABLE = frozenset({"data", "staff", "information", "equipment", "media", "series", "news", "species",
                          "feedback", "software", "inventory_data"})
_NUMERIC_TYPES = ("INT", "BIGINT", "SMALLINT", "TINYINT", "MEDIUMINT", "NUMERIC", "DECIMAL", "REAL", "FLOAT",
                  "DOUBLE", "MONEY", "NUMBER")
_DATE_TYPES = ("DATE", "DATETIME", "TIMESTAMP", "TIMESTAMPTZ")


def words(name: str) -> list[str]:
    """``"InvoiceLine"`` / ``"treatment_type_code"`` -> lower-case words."""
    return [w.lower() for w in _NON_WORD.split(_CAMEL.sub(" ", name)) if w]


def plural(word: str) -> str:
    if word in _UNCOUNTABLE or word in _IRREGULAR_SINGULARS:
        return word
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def singular(word: str) -> str:
    if word in _UNCOUNTABLE or word in _IRREGULAR_PLURALS:
        return word
    if word in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class _Noun:
    one: str
    many: str


def _noun(name: str) -> _Noun | None:
    """A table's name as an English noun phrase, singular and plural; None when it has no letters."""
    ws = words(name)
    if not ws or not any(c.isalpha() for c in "".join(ws)):
        return None
    head, last = ws[:-1], ws[-1]
    one = singular(last)
    many = last if one != last or last in _UNCOUNTABLE else plural(last)
    return _Noun(" ".join([*head, one]), " ".join([*head, many]))


def _is_key_name(ws: Sequence[str]) -> bool:
    return bool(ws) and ws[-1] in _KEY_WORDS


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# ============================================================================================
# Values


_EMAIL_LIKE = re.compile(r"\S@\S|https?://|www\.", re.I)
_STREET_LIKE = re.compile(r"^\s*\d+[a-z]?[\s,]+\w", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")
_YEAR = re.compile(r"(?<!\d)(19\d\d|20\d\d)(?!\d)")


def looks_personal(value: str) -> bool:
    """E-mail, phone, card, IBAN, URL, street address or anything with five or more digits."""
    if _EMAIL_LIKE.search(value) or _STREET_LIKE.match(value):
        return True
    if sum(c.isdigit() for c in value) >= 5:
        return True
    return bool(find_personal_data(value))


def _usable_value(raw: object) -> str | None:
    """A sampled cell as it may appear in a question, or None (too long, numeric, personal...)."""
    if not isinstance(raw, str):
        return None
    value = " ".join(raw.split())
    if not 2 <= len(value) <= _MAX_VALUE_CHARS or _CONTROL.search(value):
        return None
    if not any(c.isalpha() for c in value) or looks_personal(value):
        return None
    if "?" in value or "\n" in raw:
        return None
    return value


def _is_number(raw: object) -> bool:
    if isinstance(raw, bool):
        return False
    if isinstance(raw, int | float):
        return True
    return isinstance(raw, str) and bool(_NUMBER.match(raw.strip()))


# ============================================================================================
# Schema examples


@dataclass
class _Column:
    name: str
    phrase: str
    kind: str  # "text" | "category" | "number" | "date"
    values: list[str] = field(default_factory=list)
    location: bool = False


@dataclass
class _Link:
    """A single-column foreign key to another table, seen from the referencing table."""

    column: str
    role: _Noun  # "support rep" for Customer.SupportRepId, else the referenced table's noun
    ref_table: str
    values: list[str] = field(default_factory=list)  # label values of the referenced table
    person: bool = False


@dataclass
class _Table:
    info: TableInfo
    noun: _Noun
    columns: list[_Column] = field(default_factory=list)
    links: list[_Link] = field(default_factory=list)
    label: tuple[str, ...] = ()
    label_phrase: str = ""
    label_values: list[str] = field(default_factory=list)
    person: bool = False
    junction: bool = False


class _Sampler:
    """Bounded, read-only value samples through ``ReadOnlyDatabase.run`` (guard included)."""

    def __init__(self, db: ReadOnlyDatabase) -> None:
        self.db = db
        self.queries = 0
        self._cache: dict[tuple[str, tuple[str, ...]], list[tuple[tuple[Any, ...], int]]] = {}

    def groups(self, table: TableInfo, columns: tuple[str, ...]) -> list[tuple[tuple[Any, ...], int]]:
        """Up to ``_GROUPS_READ`` (values, count) among the first ``_ROWS_READ`` rows (by primary
        key) where ``columns`` are all set, most frequent first. [] on any database error."""
        key = (table.name, columns)
        if key in self._cache:
            return self._cache[key]
        if table.row_count == 0 or self.queries >= _MAX_QUERIES:
            self._cache[key] = []
            return []
        aliases = [f"sb_v{i}" for i in range(len(columns))]
        inner_cols = ", ".join(f"{_quote(c)} AS {a}" for c, a in zip(columns, aliases, strict=True))
        where = " AND ".join(f"{_quote(c)} IS NOT NULL" for c in columns)
        order = f" ORDER BY {', '.join(_quote(c) for c in table.primary_key)}" if table.primary_key else ""
        outer = ", ".join(aliases)
        sql = (f"SELECT {outer}, COUNT(*) AS sb_n FROM (SELECT {inner_cols} FROM {_quote(table.name)} "
               f"WHERE {where}{order} LIMIT {_ROWS_READ}) AS sb_s GROUP BY {outer} "
               f"ORDER BY sb_n DESC, {outer} LIMIT {_GROUPS_READ}")
        self.queries += 1
        try:
            result = self.db.run(sql, max_rows=_GROUPS_READ)
        except (UnsafeSQL, SQLExecutionError, SQLAlchemyError) as exc:
            log.info("schema examples: could not sample %s.%s (%s)", table.name, ",".join(columns), exc)
            rows: list[tuple[tuple[Any, ...], int]] = []
        else:
            rows = [(tuple(r[:-1]), int(r[-1]) if isinstance(r[-1], int) else 1) for r in result.rows]
        self._cache[key] = rows
        return rows


def _column_kind(col_type: str, ws: Sequence[str]) -> str:
    base = compact_type(col_type)
    if base.startswith(_DATE_TYPES) or (not base and ("date" in ws or ws[-1:] == ["at"])):
        return "date"
    if base.startswith(_NUMERIC_TYPES) or base in ("INTEGER",):
        return "number"
    if base in ("", "VARCHAR", "NVARCHAR", "CHAR", "CITEXT", "ENUM", "USER-DEFINED"):
        return "text"
    return "other"


def _label_columns(info: TableInfo, text_columns: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The columns that name a row (``Name``, ``Title``, first + last name...), and whether the
    rows are people (a first/last name pair)."""
    by_words = {c: words(c) for c in text_columns}
    first = next((c for c, ws in by_words.items() if ws[-2:] in (["first", "name"], ["given", "name"])), None)
    last = next((c for c, ws in by_words.items() if ws[-2:] in (["last", "name"], ["family", "name"], ["surname"])
                 or ws == ["surname"]), None)
    if first and last:
        return (first, last), True
    for wanted in _LABEL_WORDS:
        found = [c for c, ws in by_words.items() if ws[-1] == wanted]
        if found:
            return (min(found, key=lambda c: len(by_words[c])),), False  # "Name" before "billing name"
    return (), False


def _analyse(db: ReadOnlyDatabase, sampler: _Sampler, rng: random.Random) -> list[_Table]:
    tables = list(db.schema())
    if len(tables) > _MAX_TABLES:  # keep the best-connected, then the largest
        degree = Counter(fk.ref_table for t in tables for fk in t.foreign_keys)
        keep = sorted(tables, key=lambda t: (-(degree[t.name] + len(t.foreign_keys)), -t.row_count, t.name))
        tables = sorted(keep[:_MAX_TABLES], key=lambda t: t.name)
    try:
        personal = {p.lower() for p in db.personal_columns()}
    except (SQLAlchemyError, SQLExecutionError) as exc:  # profile unavailable: names and values still screen
        log.info("schema examples: no personal-data profile (%s)", exc)
        personal = set()
    nouns = {t.name: _noun(t.name) for t in tables}
    analysed: dict[str, _Table] = {}
    for info in tables:
        noun = nouns[info.name]
        if noun is None:
            continue
        fk_columns = {fk.columns[0] for fk in info.foreign_keys if len(fk.columns) == 1}
        multi_fk = {c for fk in info.foreign_keys if len(fk.columns) > 1 for c in fk.columns}
        table = _Table(info, noun)
        text_for_label: list[str] = []
        for col in info.columns[:_MAX_COLUMNS]:
            ws = words(col.name)
            if not ws or col.name in fk_columns or col.name in multi_fk:
                continue
            if f"{info.name}.{col.name}".lower() in personal or _PERSONAL_COLUMN.search(col.name):
                continue
            kind = _column_kind(col.type, ws)
            if col.primary_key and kind != "text":
                continue
            if kind == "text" and not col.primary_key and not _is_key_name(ws):
                text_for_label.append(col.name)
            if kind in ("number", "date") and _is_key_name(ws):
                continue
            if kind in ("number", "date", "text"):
                phrase = " ".join(ws)
                table.columns.append(_Column(col.name, phrase, kind, location=ws[-1] in _LOCATION_WORDS))
        table.label, table.person = _label_columns(info, text_for_label)
        table.label_phrase = " ".join(words(table.label[0])) if len(table.label) == 1 else "name"
        non_key = [c for c in info.columns if c.name not in fk_columns and c.name not in multi_fk and not c.primary_key]
        table.junction = len(info.foreign_keys) >= 2 and not non_key
        analysed[info.name] = table

    # Values: labels first (one query per table), then text columns (categories, numbers stored
    # as text) and dates (years).
    for table in analysed.values():
        if table.label:
            values = []
            for row, _ in sampler.groups(table.info, table.label):
                joined = " ".join(str(v).strip() for v in row if v is not None)
                if (value := _usable_value(joined)) is not None:
                    values.append(value)
            table.label_values = rng.sample(values, min(len(values), _VALUES_PER_COLUMN))
    for table in analysed.values():
        info = table.info
        kept: list[_Column] = []
        for column in table.columns:
            if column.name in table.label:
                continue
            if column.kind == "number":
                kept.append(column)
                continue
            groups = sampler.groups(info, (column.name,))
            raw = [row[0] for row, _ in groups]
            if column.kind == "date":
                years = sorted({m.group(1) for v in raw if (m := _YEAR.search(str(v)))})
                column.values = rng.sample(years, min(len(years), 2))
                kept.append(column)
                continue
            if raw and all(_is_number(v) for v in raw):
                if len(raw) >= 3 and not _is_key_name(words(column.name)):
                    column.kind = "number"  # numbers stored as text ("9.48")
                    kept.append(column)
                continue
            usable = [(v, n) for row, n in groups if (v := _usable_value(row[0])) is not None]
            if not usable:
                if not groups:  # an empty table: still a column users may ask about
                    kept.append(column)
                continue
            repeats = any(n > 1 for _, n in usable)
            if _is_key_name(words(column.name)):  # a code column is only kept when its values are words
                usable = [(v, n) for v, n in usable if len(v) >= 4 and not v.isupper()]
                if not usable:
                    continue
                column.phrase = " ".join(words(column.name)[:-1]) or column.phrase
            column.kind = "category" if repeats or table.junction else "text"
            top = [v for v, _ in usable[:10]]
            column.values = rng.sample(top, min(len(top), _VALUES_PER_COLUMN))
            kept.append(column)
        table.columns = kept

    # Links: single-column foreign keys to other tables (duplicates and self-references dropped).
    for table in analysed.values():
        seen: set[str] = set()
        for fk in sorted(table.info.foreign_keys, key=lambda k: (k.columns, k.ref_table)):
            if len(fk.columns) != 1 or fk.columns[0] in seen or fk.ref_table == table.info.name:
                continue
            ref = analysed.get(fk.ref_table) or next(
                (t for n, t in analysed.items() if n.lower() == fk.ref_table.lower()), None)
            if ref is None:
                continue
            seen.add(fk.columns[0])
            ws = words(fk.columns[0])
            role_ws = ws[:-1] if _is_key_name(ws) else ws
            role = ref.noun
            if role_ws and role_ws[-1] not in _PREPOSITIONS and " ".join(role_ws) != ref.noun.one and \
                    singular(role_ws[-1]) != singular(ref.noun.one.split()[-1]):
                role = _Noun(" ".join(role_ws), " ".join([*role_ws[:-1], plural(role_ws[-1])]))
            table.links.append(_Link(fk.columns[0], role, ref.info.name, list(ref.label_values), ref.person))
    return list(analysed.values())


def _table_candidates(t: _Table, rng: random.Random) -> list[str]:
    """Questions about one table, interleaved by kind so the first few are all different."""
    one, many = t.noun.one, t.noun.many
    kinds: dict[str, list[str]] = defaultdict(list)
    categories = [c for c in t.columns if c.kind == "category"]
    numbers = [c for c in t.columns if c.kind == "number"]
    dates = [c for c in t.columns if c.kind == "date"]
    groups = [c.phrase for c in categories] + [link.role.one for link in t.links]

    if t.junction and len(t.links) >= 2:
        for a, b in ((t.links[0], t.links[1]), (t.links[1], t.links[0])):
            kinds["group"] += [f"Which {a.role.one} has the most {b.role.many}?",
                               f"How many {b.role.many} does each {a.role.one} have?"]
            kinds["link_value"] += [f"How many {b.role.many} does {a.role.one} {v} have?" for v in a.values]
        return _interleave(kinds, rng)
    kinds["count"] += rng.sample([f"How many {many} are there?", f"How many {many} do we have?",
                                  f"What is the total number of {many}?"], 2)
    if t.label:
        kinds["list"].append(rng.choice([f"List all {many}", f"What {many} do we have?"]))
    for c in categories:
        for v in c.values:
            if c.location:
                kinds["by_value"] += [f"How many {many} are from {v}?", f"List all {many} from {v}"]
            else:
                kinds["by_value"] += [f"How many {many} have {c.phrase} {v}?", f"Show the {many} with {c.phrase} {v}"]
        kinds["group"] += [f"Which {c.phrase} has the most {many}?", f"How many {many} are there per {c.phrase}?"]
    for link in t.links:
        role = link.role
        kinds["group"] += [f"Which {role.one} has the most {many}?", f"Top 5 {role.many} by number of {many}",
                           f"How many {many} does each {role.one} have?"]
        for v in link.values:
            kinds["link_value"] += [f"How many {many} have {role.one} {v}?", f"List the {many} of {role.one} {v}"]
            if link.person:
                kinds["link_value"].append(f"How many {many} does {v} have?")
    lookup_targets = [c.phrase for c in t.columns if c.kind in ("text", "category", "number", "date")]
    lookup_targets += [link.role.one for link in t.links]
    for v in t.label_values:
        kinds["lookup"] += rng.sample([f"Show the {one} {v}", f"Tell me about the {one} {v}",
                                       f"Show the {one} with {t.label_phrase} {v}"], 2)
        for target in rng.sample(lookup_targets, min(len(lookup_targets), 3)):
            kinds["lookup_column"].append(f"What is the {target} of {v}?")
    for c in t.columns:
        if c.kind == "text":
            for v in c.values:
                kinds["by_value"].append(f"Show the {one} with {c.phrase} {v}")
    for m in numbers:
        measure = f"{one} {m.phrase}" if m.phrase in _GENERIC_MEASURES else m.phrase
        summable = bool(_SUMMABLE_WORDS & set(m.phrase.split()))
        kinds["measure"] += [f"What is the average {measure}?" if measure != m.phrase else
                             f"What is the average {measure} of {many}?",
                             f"Which {one} has the highest {m.phrase}?", f"Which {one} has the lowest {m.phrase}?",
                             f"Top 5 {many} by {m.phrase}"]
        total = f"sum of {measure}s" if measure.endswith("total") else f"total {measure}"
        if summable and not measure.endswith("total"):
            kinds["measure"].append(f"What is the {total}?")
        for g in groups:
            kinds["measure_group"].append(f"What is the average {measure} per {g}?")
            if summable:
                kinds["measure_group"] += [f"What is the {total} per {g}?", f"Which {g} has the highest {total}?"]
    for d in dates:
        kinds["date"].append(f"What is the most recent {d.phrase}?")
        for year in d.values:
            kinds["date"].append(f"How many {many} have {_article(d.phrase)} {d.phrase} in {year}?")
            for m in [m for m in numbers if _SUMMABLE_WORDS & set(m.phrase.split())][:1]:
                measure = f"{one} {m.phrase}" if m.phrase in _GENERIC_MEASURES else m.phrase
                total = f"sum of {measure}s" if measure.endswith("total") else f"total {measure}"
                kinds["date"].append(f"What was the {total} in {year}?")
    return _interleave(kinds, rng)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _interleave(kinds: dict[str, list[str]], rng: random.Random) -> list[str]:
    """Each kind's questions shuffled, then one of every kind in turn: the first few differ."""
    for lst in kinds.values():
        rng.shuffle(lst)
    out: list[str] = []
    for i in range(max((len(v) for v in kinds.values()), default=0)):
        out += [kinds[k][i] for k in kinds if i < len(kinds[k])]
    return [_cap(q) for q in out]


def _round_robin(lists: Sequence[Sequence[str]], limit: int) -> list[str]:
    """Take one from each list in turn, skipping case-insensitive duplicates, up to ``limit``."""
    out: list[str] = []
    seen: set[str] = set()
    for i in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if i < len(lst):
                key = _normal(lst[i])
                if key not in seen:
                    seen.add(key)
                    out.append(lst[i])
                    if len(out) >= limit:
                        return out
    return out


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip("?.! ")


def schema_examples(db: ReadOnlyDatabase, *, limit: int = 150, seed: int = 0) -> list[str]:
    """Up to ``limit`` support-style questions about ``db``'s tables, spread across tables.

    Table and column names are humanised (``InvoiceLine`` -> "invoice line(s)"); a few real
    values are sampled per text column (the first ``_ROWS_READ`` rows by primary key, at most
    ``_MAX_VALUE_CHARS`` characters, never contact data); foreign keys give "which X has the most
    Y" questions. Reads through :meth:`ReadOnlyDatabase.run`, so the guard applies and it works on
    SQLite and PostgreSQL alike. Deterministic for a given database state and ``seed``.
    """
    if limit <= 0:
        return []
    started = time.perf_counter()
    rng = random.Random(seed)
    sampler = _Sampler(db)
    tables = _analyse(db, sampler, rng)
    per_table = [_table_candidates(t, rng) for t in tables]
    out = _round_robin(per_table, limit)
    log.info("schema examples: %d questions from %d tables (%d sample queries) in %.0f ms",
             len(out), len(tables), sampler.queries, (time.perf_counter() - started) * 1000)
    return out


# ============================================================================================
# Knowledge examples


class ChunkStore(Protocol):
    """What :func:`knowledge_outline` needs of ``knowledge.store.KnowledgeStore`` (a Chroma
    collection of chunks with ``source``/``title``/``chunk``/``section``/``flagged`` metadata);
    spelled out here because ``tools/`` may not import ``knowledge/``."""

    @property
    def collection(self) -> Any: ...


_PAGE_SECTION = re.compile(r"^page \d+$", re.I)


def knowledge_outline(store: ChunkStore) -> list[tuple[str, list[str]]]:
    """``(title, [section headings])`` per document ingested in ``store``, from its chunk metadata
    (:func:`outline_from_metadata`); at most ``_MAX_CHUNKS_READ`` chunks are read."""
    metadatas: list[Mapping[str, Any]] = []
    offset = 0
    while offset < _MAX_CHUNKS_READ:
        page = store.collection.get(include=["metadatas"], limit=_CHUNK_PAGE, offset=offset)
        rows = list(page.get("metadatas") or []) if isinstance(page, dict) else list(page["metadatas"] or [])
        metadatas.extend(m for m in rows if m)
        if len(rows) < _CHUNK_PAGE:
            break
        offset += _CHUNK_PAGE
    return outline_from_metadata(metadatas)


def outline_from_metadata(metadatas: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """``(title, [section headings])`` per document, from chunk metadata (what ingestion stores
    per chunk, or ``knowledge.ingest.chunk_metadata`` for a folder not ingested yet).

    Sections are the Markdown heading paths ingestion stores (``"H2 > H3"``, merged sections
    joined by ``" | "``); each heading appears once, in document order. PDF ``page N`` labels
    are not headings. Documents flagged by screening (instruction-like text) are left out.
    Bounded: at most ``_MAX_CHUNKS_READ`` chunks, ``_MAX_DOCUMENTS`` documents and
    ``_MAX_SECTIONS`` headings each. Sorted by title.
    """
    docs: dict[str, dict[str, Any]] = {}
    for n, meta in enumerate(metadatas):
        if n >= _MAX_CHUNKS_READ:
            break
        source = str(meta.get("source", ""))
        doc = docs.setdefault(source, {"title": "", "flagged": False, "sections": []})
        doc["title"] = doc["title"] or str(meta.get("title", "")).strip()
        doc["flagged"] = doc["flagged"] or bool(str(meta.get("flagged", "")).strip())
        try:
            index = int(meta.get("chunk", 0))
        except (TypeError, ValueError):
            index = 0
        doc["sections"].append((index, str(meta.get("section", ""))))
    outline: list[tuple[str, list[str]]] = []
    for source in sorted(docs, key=lambda s: (docs[s]["title"].casefold(), s)):
        doc = docs[source]
        if doc["flagged"] or not doc["title"]:
            continue
        title = " ".join(doc["title"].split())[:_MAX_HEADING_CHARS]
        headings: list[str] = []
        for _, section in sorted(doc["sections"]):
            for merged in section.split(" | "):
                for part in merged.split(" > "):
                    heading = " ".join(part.split())
                    if heading and heading != title and heading not in headings and \
                            len(heading) <= _MAX_HEADING_CHARS and not _PAGE_SECTION.match(heading):
                        headings.append(heading)
        outline.append((title, headings[:_MAX_SECTIONS]))
        if len(outline) >= _MAX_DOCUMENTS:
            break
    return outline


_QUESTION_START = frozenset({"how", "what", "why", "when", "where", "who", "which", "can", "do", "does", "is",
                             "are", "should", "will", "may"})
_AFTER_GERUND = frozenset({"a", "an", "the", "your", "my", "our", "their", "his", "her", "its", "this", "that",
                           "these", "those", "up", "out", "in", "off", "on", "back", "over", "down", "us", "me",
                           "part", "more", "to", "for", "with", "from", "into", "another"})
_NOT_GERUNDS = frozenset({"thing", "things", "something", "nothing", "anything", "everything", "morning", "evening",
                          "spring", "string", "ceiling", "building", "clothing", "bedding", "wedding", "during",
                          "pricing", "shipping", "billing", "listing", "setting", "settings", "meeting", "housing",
                          "boarding", "grooming", "training", "parking", "king", "ring", "wing", "sing", "bring"})
_DOUBLE_DROP = frozenset("bdgmnprt")
_MAGIC_E = re.compile(r"(?:v|[^aeiou][aeiou](?:[bcdgkmnprstvz]|ng)|[aeiou]rg|dg|rc|nc|rv|[aeiou]ir|[aeiou]ur|iz|ys|uc|[aeiou]l)$")
_NO_MAGIC_E = frozenset({"open", "visit", "order", "enter", "offer", "cancel", "travel", "label", "deliver", "answer",
                         "happen", "listen", "limit", "edit", "credit", "deposit", "ship", "sign", "check", "book",
                         "log", "pay", "buy", "send", "get", "set", "put", "stop", "shop", "plan", "add", "find",
                         "need", "meet", "feed", "keep", "sleep", "wait", "mail", "email", "fail", "sail", "install",
                         "request", "redeem", "download", "upload", "contact", "convert", "return", "report", "print",
                         "turn", "transfer", "prefer", "refer", "register", "recover", "remember", "pick", "lock",
                         "unlock", "block", "track", "walk", "talk", "ask", "work", "look", "cook", "park", "mark",
                         "bark", "pack", "unpack", "reset", "collect", "connect", "select", "protect", "update_"})


def _base_verb(gerund: str) -> str | None:
    """``"cancelling"`` -> ``"cancel"``, ``"changing"`` -> ``"change"``; None if not a gerund."""
    prefix, _, word = gerund.rpartition("-")
    if not word.endswith("ing") or len(word) <= 5 or word in _NOT_GERUNDS or not word.isalpha():
        return None
    stem = word[:-3]
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] in _DOUBLE_DROP | {"l"}:
        if stem[-1] != "l" or len(stem) > 5:  # "cancell" -> "cancel", but "sell", "fill" stay
            stem = stem[:-1]
    elif stem.endswith("creat") or (stem not in _NO_MAGIC_E and not stem.endswith(("ee", "oo", "eat", "oat"))
                                     and (_MAGIC_E.search(stem) or stem.endswith("at"))):
        stem += "e"
    return f"{prefix}-{stem}" if prefix else stem


def _how_do_i(heading: str) -> str | None:
    """"How do I ...?" for a heading that is a verb phrase ("Changing your email", "How to cancel")."""
    ws = heading.split()
    if len(ws) >= 3 and ws[0].lower() == "how" and ws[1].lower() == "to":
        rest = ws[2:]
    elif len(ws) >= 2 and ws[1].lower() in _AFTER_GERUND and "and" not in (w.lower() for w in ws) \
            and (base := _base_verb(ws[0].lower())) is not None:
        rest = [base, *ws[1:]]
    else:
        return None
    rest = ["my" if w.lower() == "your" else w for w in rest]
    return f"How do I {' '.join(rest).rstrip('.?!:')}?"


def _lower_first(text: str) -> str:
    """Lower-case the first word unless it is an acronym or a name with inner capitals."""
    first, _, rest = text.partition(" ")
    if len(first) > 1 and (first.isupper() or any(c.isupper() for c in first[1:])):
        return text
    return (first.lower() + (" " + rest if rest else "")).strip()


_PARENTHESIS = re.compile(r"\s*\([^)]*\)\s*$")
_SENTENCE_WORDS = frozenset({"is", "are", "does", "do", "did", "can", "cannot", "can't", "won't", "will", "not",
                             "must", "should", "may", "was", "were"})
_ABOUT_FRAMES = ("Tell me about {}", "What should I know about {}?", "I have a question about {}",
                 "Can you explain {}?")


def _doc_candidates(title: str, headings: Sequence[str]) -> list[str]:
    """Questions about one document: from its title first, then one per heading, then a second
    per heading."""
    plain_title = _PARENTHESIS.sub("", title).strip() or title.strip()
    t = _lower_first(plain_title).rstrip(".?!:")
    out: list[str] = []
    how = _how_do_i(plain_title)
    if how:
        out.append(how)
    if plain_title.endswith("?") or plain_title.split()[0].lower() in _QUESTION_START:
        out.append(plain_title.rstrip(".!:?") + "?")
    elif re.search(r"\bpolic(y|ies)\b", t, re.I):
        out.append(f"What is your {t}?")
    elif not how:
        out.append(f"What is your policy on {t}?")
    out.append(f"Tell me about {t}")
    first: list[str] = []
    second: list[str] = []
    for i, heading in enumerate(headings):
        h = _PARENTHESIS.sub("", heading).strip() or heading.strip()
        low = _lower_first(h).rstrip(".:!?")
        ws = [w.lower() for w in h.split()]
        question = f"{h.rstrip('.!:?')}?"
        if (q := _how_do_i(h)) is not None:
            first.append(q)
            second.append(question)
        elif h.endswith("?") or ws[0] in _QUESTION_START or _SENTENCE_WORDS & set(ws):
            first.append(question)
        else:
            first.append(_ABOUT_FRAMES[i % len(_ABOUT_FRAMES)].format(low))
            if len(ws) > 1:
                second.append(question)
    return [_cap(q) for q in [*out, *first, *second]]


def knowledge_examples(outline: Sequence[tuple[str, Sequence[str]]], *, limit: int = 120) -> list[str]:
    """Up to ``limit`` questions from document titles and headings, spread across documents:
    "How do I {verb phrase}?", "What is your {title} policy?" / "What is your policy on {title}?",
    "Tell me about {heading}", "{heading}?". Deterministic and de-duplicated."""
    if limit <= 0:
        return []
    return _round_robin([_doc_candidates(title, headings) for title, headings in outline if title.strip()], limit)


# ============================================================================================
# The training set


@dataclass(frozen=True)
class TrainingSet:
    """Labelled texts for triage's classifier, each with a sample weight and where it came from."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    weights: tuple[float, ...]
    origins: tuple[str, ...]  # "routes" | "schema" | "knowledge"

    def __post_init__(self) -> None:
        n = len(self.texts)
        if not len(self.labels) == len(self.weights) == len(self.origins) == n:
            raise ValueError("texts, labels, weights and origins must have the same length")
        bad = sorted(set(self.origins) - set(ORIGINS))
        if bad:
            raise ValueError(f"unknown origins {bad}; expected {ORIGINS}")
        if any(not (w > 0 and math.isfinite(w)) for w in self.weights):
            raise ValueError("weights must be positive and finite")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the generator version and every (text, label, weight, origin)."""
        payload = json.dumps(
            {"version": GENERATOR_VERSION, "texts": self.texts, "labels": self.labels,
             "weights": [repr(float(w)) for w in self.weights], "origins": self.origins},
            ensure_ascii=False, separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def counts(self) -> dict[str, int]:
        """Examples per origin."""
        return dict(Counter(self.origins))


def training_set(
    routes: RouteConfig,
    *,
    sql_examples: Iterable[str] = (),
    knowledge_examples: Iterable[str] = (),
    sql_route: str = "sql",
    rag_route: str = "rag",
    user_weight: float = 2.0,
    generated_weight: float = 1.0,
    balance: float = 0.5,
) -> TrainingSet:
    """The routes file's own examples (weight ``user_weight``, origin "routes") plus generated
    ones for ``sql_route`` ("schema") and ``rag_route`` ("knowledge") with ``generated_weight``.

    A generated text equal to any user example (case and spacing ignored) or to an earlier
    generated one is dropped; generated examples for a route the config does not have are skipped.
    """
    texts: list[str] = []
    labels: list[str] = []
    weights: list[float] = []
    origins: list[str] = []
    seen: set[str] = set()
    for route in routes.routes.values():
        for example in route.examples:
            texts.append(example)
            labels.append(route.name)
            weights.append(float(user_weight))
            origins.append("routes")
            seen.add(_normal(example))
    for route_name, origin, generated in ((sql_route, "schema", sql_examples), (rag_route, "knowledge", knowledge_examples)):
        if route_name not in routes.routes:
            log.info("training set: no %r route, %s examples skipped", route_name, origin)
            continue
        for text in generated:
            key = _normal(text)
            if not key or key in seen:
                continue
            seen.add(key)
            texts.append(text)
            labels.append(route_name)
            weights.append(float(generated_weight))
            origins.append(origin)
    if balance and weights:  # a route with few examples (small talk) is not drowned by generated ones:
        totals: dict[str, float] = defaultdict(float)  # each route's weight is scaled by (largest total / its total) ** balance
        for label, weight in zip(labels, weights, strict=True):
            totals[label] += weight
        top = max(totals.values())
        weights = [w * (top / totals[label]) ** balance for label, w in zip(labels, weights, strict=True)]
    return TrainingSet(tuple(texts), tuple(labels), tuple(weights), tuple(origins))


# ============================================================================================
# The cached classifier


def embedder_identity(embedder: object | None) -> str:
    """What the cache keys an embedder by: its class and model name (the default embedder is
    named without being loaded)."""
    if embedder is None:
        from tools.models.embeddings import MiniLMEmbedder

        return f"{MiniLMEmbedder.__module__}.{MiniLMEmbedder.__qualname__}:{MiniLMEmbedder.name}"
    cls = type(embedder)
    return f"{cls.__module__}.{cls.__qualname__}:{getattr(embedder, 'name', '')}"


_CACHE_FORMAT = 1
CACHE_KEEP = 16  # classifiers kept in a cache folder (several data dirs, databases, tests may share one)
_CACHE_PREFIX = "triage-"
_CACHE_SUFFIX = ".npz"
_STALE_TMP_S = 600


def cache_path(ts: TrainingSet, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{_CACHE_PREFIX}{ts.fingerprint[:16]}{_CACHE_SUFFIX}"


def cached_vectors(ts: TrainingSet, cache_dir: Path, embedder: MiniLMEmbedder | None = None, *,
                   C: float = 10.0) -> np.ndarray | None:
    """The embeddings :func:`load_or_train` stored for ``ts`` (None when there are none that
    match): what :func:`self_check` would otherwise embed again."""
    return _read_cache(cache_path(ts, cache_dir), ts, _cache_meta(ts, embedder, C))


def _cache_meta(ts: TrainingSet, embedder: object | None, C: float) -> str:
    return json.dumps({"format": _CACHE_FORMAT, "fingerprint": ts.fingerprint,
                       "embedder": embedder_identity(embedder), "C": C}, sort_keys=True)


def _read_cache(path: Path, ts: TrainingSet, meta: str) -> np.ndarray | None:
    """The cached embedding matrix if ``path`` holds exactly this set for this embedder, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_meta = str(data["meta"][()])
            labels = [str(x) for x in data["labels"]]
            weights = [float(x) for x in data["weights"]]
            X = np.asarray(data["X"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("triage cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if stored_meta != meta or labels != list(ts.labels) or weights != [float(w) for w in ts.weights] \
            or X.ndim != 2 or X.shape[0] != len(ts) or not np.isfinite(X).all():
        log.warning("triage cache %s does not match this training set; rebuilding it", path)
        return None
    return X


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write_cache(path: Path, X: np.ndarray, ts: TrainingSet, meta: str) -> None:
    """Write atomically (temp file + rename), then remove other triage caches. Never raises."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_CACHE_PREFIX}", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, X=np.asarray(X, dtype=np.float32), labels=np.array(ts.labels, dtype=str),
                     weights=np.array(ts.weights, dtype=np.float64), meta=np.array(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("could not write the triage cache %s (%s); it will be rebuilt next time", path, exc)
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    now = time.time()
    kept = sorted(path.parent.glob(f"{_CACHE_PREFIX}*{_CACHE_SUFFIX}"), key=_mtime, reverse=True)
    for old in kept[CACHE_KEEP:]:  # the least recently used, past the newest CACHE_KEEP
        if old != path:
            old.unlink(missing_ok=True)
    for stale in path.parent.glob(f".{_CACHE_PREFIX}*.tmp"):
        try:
            if now - stale.stat().st_mtime > _STALE_TMP_S:
                stale.unlink(missing_ok=True)
        except OSError:
            pass


def load_or_train(ts: TrainingSet, cache_dir: Path, embedder: MiniLMEmbedder | None = None,
                  *, C: float = 10.0) -> IntentClassifier:
    """The classifier for ``ts``, from ``cache_dir`` when an earlier call stored it (no
    embedding then), else embedded, fitted and stored as ``triage-<fingerprint[:16]>.npz``
    (embedding matrix, labels, weights; no pickle); the folder keeps the :data:`CACHE_KEEP` most
    recently used.

    The cache is keyed by ``ts.fingerprint``, :func:`embedder_identity` and ``C``; a file that is
    unreadable or does not match is rebuilt. Failing to write the cache only logs a warning.
    """
    if not len(ts):
        raise ValueError("empty training set")
    path = cache_path(ts, cache_dir)
    meta = _cache_meta(ts, embedder, C)
    clf = IntentClassifier(embedder, C=C)
    X = _read_cache(path, ts, meta)
    if X is not None:
        try:
            os.utime(path)  # recently used: kept when the folder is trimmed
        except OSError:
            pass
        log.info("triage classifier loaded from %s (%d examples)", path, len(ts))
        return clf.fit_vectors(X, ts.labels, sample_weight=ts.weights)
    started = time.perf_counter()
    X = clf.embedder.embed(list(ts.texts))
    clf.fit_vectors(X, ts.labels, sample_weight=ts.weights)
    _write_cache(path, X, ts, meta)
    log.info("triage classifier trained on %d examples in %.1f s, cached at %s",
             len(ts), time.perf_counter() - started, path)
    return clf


# ============================================================================================
# Self-check


@dataclass(frozen=True)
class SelfCheck:
    """How well the classifier separates its own training set (k-fold cross-validated)."""

    accuracy: float
    confused: tuple[tuple[str, str, int], ...]  # (true, predicted, count), most first
    ambiguous: tuple[tuple[str, str, str, float], ...]  # (text, label, predicted, confidence)
    n: int = 0
    folds: int = 0
    per_route: dict[str, tuple[float, int]] = field(default_factory=dict)  # route -> (accuracy, examples)
    per_origin: dict[str, tuple[float, int]] = field(default_factory=dict)  # origin -> (accuracy, examples)

    def render(self) -> str:
        lines = [f"triage self-check: {self.folds}-fold cross-validated accuracy {self.accuracy:.1%} "
                 f"on {self.n} examples"]
        if self.per_origin:
            lines.append("  by origin: " + ", ".join(f"{o} {a:.1%} ({n})" for o, (a, n) in self.per_origin.items()))
        if self.per_route:
            lines.append("  by route: " + ", ".join(f"{r} {a:.1%} ({n})" for r, (a, n) in self.per_route.items()))
        if self.confused:
            lines.append("  most confused (true -> predicted): "
                         + ", ".join(f"{t} -> {p} {c}" for t, p, c in self.confused))
        else:
            lines.append("  no route is confused with another")
        for text, label, predicted, confidence in self.ambiguous[:5]:
            mark = "wrong" if label != predicted else "close"
            lines.append(f"  {mark}: {text!r} is {label}, predicted {predicted} ({confidence:.2f})")
        return "\n".join(lines)


def _fold_ids(labels: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Stratified fold numbers: each route's examples, shuffled, dealt round the folds (a route
    with fewer examples than folds is in fewer test folds, and sklearn's warning is avoided)."""
    rng = np.random.default_rng(seed)
    ids = np.empty(len(labels), dtype=np.int64)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    start = 0
    for label in sorted(by_label):
        idx = np.array(by_label[label])
        rng.shuffle(idx)
        ids[idx] = (start + np.arange(len(idx))) % folds
        start = (start + len(idx)) % folds
    return ids


def self_check(ts: TrainingSet, embedder: MiniLMEmbedder | None = None, folds: int = 5, seed: int = 0,
               *, vectors: np.ndarray | None = None, C: float = 10.0) -> SelfCheck:
    """Cross-validate triage's classifier (same model, same weights) on ``ts``.

    ``vectors`` (one embedding per text) skips embedding. Returns the accuracy, the most
    confused route pairs and up to ``_MAX_AMBIGUOUS`` examples that were misclassified or whose
    top probability beat the runner-up by less than ``_SMALL_MARGIN``.
    """
    if folds < 2:
        raise ValueError("folds must be at least 2")
    n = len(ts)
    if n < 2:
        raise ValueError("need at least two examples")
    X = vectors if vectors is not None else IntentClassifier(embedder).embedder.embed(list(ts.texts))
    X = np.asarray(X)
    if X.shape[0] != n:
        raise ValueError(f"{X.shape[0]} vectors for {n} examples")
    labels = np.array(ts.labels, dtype=object)
    weights = np.array(ts.weights, dtype=np.float64)
    fold_of = _fold_ids(ts.labels, min(folds, n), seed)
    predicted = np.empty(n, dtype=object)
    confidence = np.zeros(n)
    margin = np.zeros(n)
    for f in range(min(folds, n)):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero(fold_of != f)
        if not len(test):
            continue
        classes = sorted(set(labels[train]))
        if len(classes) == 1:
            predicted[test], confidence[test], margin[test] = classes[0], 1.0, 1.0
            continue
        clf = IntentClassifier(embedder, C=C).fit_vectors(X[train], list(labels[train]), sample_weight=weights[train])
        for i, pred in zip(test, clf.predict_vectors(X[test]), strict=True):
            probs = sorted(pred.scores.values(), reverse=True)
            predicted[i], confidence[i] = pred.label, pred.confidence
            margin[i] = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
    correct = predicted == labels
    confused = Counter((str(t), str(p)) for t, p, ok in zip(labels, predicted, correct, strict=True) if not ok)
    pairs = sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_CONFUSED]
    doubtful = [i for i in range(n) if not correct[i] or margin[i] < _SMALL_MARGIN]
    doubtful.sort(key=lambda i: (bool(correct[i]), margin[i], i))

    def share(mask: np.ndarray) -> tuple[float, int]:
        return (round(float(correct[mask].mean()), 4) if mask.any() else 0.0), int(mask.sum())

    origins = np.array(ts.origins, dtype=object)
    return SelfCheck(
        accuracy=round(float(correct.mean()), 4),
        confused=tuple((t, p, c) for (t, p), c in pairs),
        ambiguous=tuple((ts.texts[i], ts.labels[i], str(predicted[i]), round(float(confidence[i]), 4))
                        for i in doubtful[:_MAX_AMBIGUOUS]),
        n=n,
        folds=min(folds, n),
        per_route={r: share(labels == r) for r in sorted(set(ts.labels))},
        per_origin={o: share(origins == o) for o in ORIGINS if o in set(ts.origins)},
    )
