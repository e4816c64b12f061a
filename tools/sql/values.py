"""Value grounding: which text column holds a value the question names.

A small model writes ``WHERE Name = 'jazz'`` for a genre stored as ``'Jazz'``, looks for a
state ``'North Dakota'`` stored as ``'NorthDakota'``, or filters the wrong table for a person's
name. Once per database the distinct values of its text columns are indexed (bounded: at most
:data:`MAX_VALUES_PER_COLUMN` per column, :data:`MAX_VALUES` in all, none longer than
:data:`MAX_VALUE_CHARS`); for each question, its phrases of one to :data:`MAX_PHRASE_WORDS` words
are looked up, exactly after folding case, spaces and punctuation (``ac/dc`` finds ``AC/DC``),
or fuzzily (a typo, a misspelt value: ``veterinarian`` finds ``Veterenarian``). Only the matches
reach the prompt, as ``Table.Column = 'Value'`` lines.

Columns holding personal contact data (``ReadOnlyDatabase.personal_columns`` and the configured
sensitive columns) are never indexed: their values never reach a prompt this way.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tools.sql.database import ReadOnlyDatabase
from tools.sql.results import sql_literal
from tools.sql.schema import name_words

__all__ = ["ValueIndex", "ValueMatch", "squash"]

log = logging.getLogger("switchboard.sql")

MAX_VALUES_PER_COLUMN = 5000
MAX_VALUES = 200_000
MAX_VALUE_CHARS = 60
MAX_PHRASE_WORDS = 5
MAX_MATCHES = 6
FUZZY_CUTOFF = 0.85
FUZZY_MIN_CHARS = 6  # shorter phrases only match exactly: "Jazz" ~ "Jaz" is a coin toss
CATEGORY_MAX = 1000
"""A single lower-case word ("release", "brazil") only matches a column of at most this many distinct
values (genres, countries, roles): among 3,500 track titles some word of any question is a title."""

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCT = "\"'`“”‘’?!.,;:()[]{}"
_STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or not no is are was were be been do does did have has had
    how many much what which who whom whose when where why there their them they it its this that these those
    me my our we us you your i all any each every some show list give tell find get number count total
    please than more most less least per name names than as also only just""".split()
)


def squash(text: str) -> str:
    """Lower case, only letters and digits: "AC/DC" -> "acdc", "North Dakota" -> "northdakota"."""
    return _NON_ALNUM.sub("", text.lower())


@dataclass(frozen=True)
class ValueMatch:
    """A value stored in ``table.column`` that the question's ``phrase`` names."""

    table: str
    column: str
    value: str
    phrase: str
    exact: bool

    def render(self) -> str:
        return f"{self.table}.{self.column} = {sql_literal(self.value)}"


class ValueIndex:
    """Distinct text values of a database, looked up by their squashed form."""

    def __init__(self, entries: Iterable[tuple[str, str, str]], schema_words: Iterable[str] = ()) -> None:
        self._exact: dict[str, list[tuple[str, str, str]]] = {}
        self._distinct: dict[tuple[str, str], int] = {}  # values per column
        for table, column, value in entries:
            key = squash(value)
            if len(key) >= 2:
                self._exact.setdefault(key, []).append((table, column, value))
                self._distinct[(table, column)] = self._distinct.get((table, column), 0) + 1
        # fuzzy candidates grouped by first character and length, so a phrase is compared with few
        self._fuzzy: dict[tuple[str, int], list[str]] = {}
        for key in self._exact:
            if len(key) >= FUZZY_MIN_CHARS:
                self._fuzzy.setdefault((key[0], len(key)), []).append(key)
        self._skip = {squash(w) for w in schema_words} | {squash(w) for w in _STOPWORDS}
        self.size = sum(len(v) for v in self._exact.values())

    @classmethod
    def build(cls, db: ReadOnlyDatabase, exclude: Iterable[str] = ()) -> ValueIndex:
        """Index ``db``'s text columns except ``exclude`` ("Table.Column", any case) and personal ones."""
        started = time.perf_counter()
        skip = {c.lower() for c in [*exclude, *db.personal_columns()]}
        columns = [(t, c) for t, c in db.text_columns() if f"{t}.{c}".lower() not in skip]
        values = db.distinct_text_values(columns, MAX_VALUES_PER_COLUMN)
        entries: list[tuple[str, str, str]] = []
        for (table, column), found in values.items():
            for value in found:
                if len(value) <= MAX_VALUE_CHARS and len(entries) < MAX_VALUES:
                    entries.append((table, column, value))
        words = [w for t in db.schema() for name in [t.name, *t.column_names()] for w in re.split(r"[_\W]+|(?<=[a-z])(?=[A-Z])", name) if w]
        index = cls(entries, words)
        log.info("value index of %s: %d values from %d text columns in %.0f ms", db.url, index.size, len(columns),
                 (time.perf_counter() - started) * 1000)
        return index

    def match(self, question: str) -> list[ValueMatch]:
        """The values the question names, in question order, at most :data:`MAX_MATCHES`; longer
        phrases first, and one column per phrase (:meth:`_best`)."""
        words = [w.strip(_EDGE_PUNCT) for w in _TOKEN.findall(question)]
        named = set(name_words(question))
        used = [False] * len(words)
        found: list[tuple[int, ValueMatch]] = []
        for size in range(min(MAX_PHRASE_WORDS, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                if any(used[start:start + size]):
                    continue
                phrase = " ".join(words[start:start + size]).strip()
                matches = self._lookup(phrase)
                if matches:
                    used[start:start + size] = [True] * size
                    found.append((start, self._best(matches, named)))
        found.sort(key=lambda pm: pm[0])
        return [m for _, m in found][:MAX_MATCHES]

    def _lookup(self, phrase: str) -> list[ValueMatch]:
        key = squash(phrase)
        if len(key) < 2 or key in self._skip or key.isdigit():
            return []
        exact = key in self._exact
        if not exact:
            edges = phrase.split()
            if len(key) < FUZZY_MIN_CHARS or {edges[0].lower(), edges[-1].lower()} & _STOPWORDS:
                return []  # "the most" is not a misspelt "The Moth"
            candidates = [k for n in range(len(key) - 2, len(key) + 3) for k in self._fuzzy.get((key[0], n), ())]
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=FUZZY_CUTOFF)
            if not close:
                return []
            key = close[0]
        entries = self._exact[key]
        if " " not in phrase and phrase.islower():  # a plain word: only category-like columns
            entries = [e for e in entries if self._distinct[(e[0], e[1])] <= CATEGORY_MAX]
        return [ValueMatch(t, c, v, phrase, exact) for t, c, v in entries]

    def _best(self, matches: list[ValueMatch], named: set[str]) -> ValueMatch:
        """One column per phrase: a small model shown 'Brazil' in Customer.Country *and*
        Invoice.BillingCountry filtered on both. The column with clearly fewer distinct values wins
        (Artist.Name's 275 over Track.Composer's 852: the entity, not a free-text copy of it); among
        columns of about the same size (within a factor of 2), the one of a table the question
        names ("customers"), then the name order."""
        def key(m: ValueMatch) -> tuple[int, bool, int, str, str]:
            distinct = self._distinct[(m.table, m.column)]
            return (distinct.bit_length(), not set(name_words(m.table)) & named, distinct, m.table, m.column)

        return min(matches, key=key)
