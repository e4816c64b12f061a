"""Which tables the SQL prompt shows: every table of a small database, the relevant few of a big one.

The local model reads about 58 prompt tokens/s within a 4k context, so a 40-table schema would
cost half a minute before the first output token and crowd out the question. Up to a budget
(:data:`MAX_FULL_TABLES` tables and :data:`MAX_FULL_CHARS` characters, which Chinook's 11 tables
fit) the whole compact schema is sent, exactly as before. Above it, tables are ranked by

* the MiniLM similarity of the question to a one-line description of each table (names and
  columns as words: "invoice line: invoice line id, track id, unit price, quantity"), which
  catches synonyms ("purchases" ~ invoice), and
* the overlap of the question's words with table and column names, which catches exact names
  the embedding blurs ("Genre" must select Genre, not Playlist);

the best :data:`SEED_TABLES` are kept, the tables they reference and the link tables joining two
chosen ones are added (a join needs both ends), at most :data:`MAX_SELECTED` in all. Chosen
tables come with one sample row each (real value formats); the rest are listed by name only,
so the model knows they exist and the validator's "did you mean" hints make sense.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tools.sql.database import ReadOnlyDatabase
from tools.sql.schema import TableInfo, create_table, name_words

__all__ = [
    "MAX_FULL_CHARS",
    "MAX_FULL_TABLES",
    "MAX_SELECTED",
    "SchemaSelector",
    "TableScore",
    "name_words",
]

MAX_FULL_TABLES = 12
MAX_FULL_CHARS = 3000  # ~750 prompt tokens, ~13 s of prompt reading on the local model
SEED_TABLES = 4
MAX_SELECTED = 8
MAX_LISTED_OTHERS = 60
LEXICAL_WEIGHT = 0.5
TABLE_NAME_WEIGHT = 2.0  # a question word naming a table says more than one naming a column
SAMPLE_ROWS = 1

Embed = Callable[[Sequence[str]], np.ndarray]

_STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or not no is are was were be been do does did
    have has had how many much what which who whom whose when where why there their them they it its
    this that these those me my our we us you your i all any each every some show list give tell find
    get number count total please than more most less least""".split()
)


def _question_words(question: str) -> set[str]:
    return {w for w in name_words(question) if w not in _STOPWORDS and len(w) > 1}


def _description(table: TableInfo) -> str:
    """What the embedding sees of a table: its name and columns as plain words."""
    columns = ", ".join(" ".join(name_words(c)) for c in table.column_names())
    return f"{' '.join(name_words(table.name))}: {columns}"


@dataclass(frozen=True)
class TableScore:
    """How relevant one table looks to a question; ``score`` orders the tables."""

    name: str
    score: float
    semantic: float
    lexical: float


class SchemaSelector:
    """Renders the schema part of the SQL prompt for one question (see the module docstring).

    ``embed`` maps texts to L2-normalised vectors (``services.embedder.embed``); it is called
    only for databases over the budget, so Chinook never loads the embedding model. Without it
    the ranking is lexical only.
    """

    def __init__(self, db: ReadOnlyDatabase, embed: Embed | None = None) -> None:
        self.db = db
        self.embed = embed
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    def full_text(self) -> str:
        return self.db.describe(None, sample_rows=0, compact=True)

    def needs_selection(self) -> bool:
        """True when the whole schema is over the prompt budget."""
        return len(self.db.schema()) > MAX_FULL_TABLES or len(self.full_text()) > MAX_FULL_CHARS

    def render(self, question: str, linked: Sequence[str] = ()) -> str:
        """The schema text for the prompt: the whole schema, or the selected tables plus names."""
        if not self.needs_selection():
            return self.full_text()
        chosen = self.select(question, linked)
        text = self.db.describe(chosen, sample_rows=SAMPLE_ROWS, compact=True)
        others = [t for t in self.db.table_names() if t not in chosen]
        if not others:
            return text
        listed = ", ".join(others[:MAX_LISTED_OTHERS])
        more = f" and {len(others) - MAX_LISTED_OTHERS} more" if len(others) > MAX_LISTED_OTHERS else ""
        return f"{text}\nOther tables (columns not shown): {listed}{more}"

    def render_ddl(self, question: str, linked: Sequence[str] = ()) -> str:
        """The same tables as :meth:`render`, as ``CREATE TABLE`` statements (the second opinion's view)."""
        names = self.select(question, linked) if self.needs_selection() else self.db.table_names()
        return "\n".join(create_table(self.db.table(n)) for n in names)

    def select(self, question: str, linked: Sequence[str] = ()) -> list[str]:
        """Names of the tables to show, most relevant first (at most :data:`MAX_SELECTED`).

        ``linked`` tables hold a value the question names (value grounding): they are kept
        whatever their rank, after the best-ranked one, since a filter on them needs them."""
        ranked = self.rank(question)
        order = {s.name: i for i, s in enumerate(ranked)}
        chosen = [s.name for s in ranked[:1]]
        chosen += [t for t in dict.fromkeys(linked) if t in order and t not in chosen][: SEED_TABLES - 1]
        chosen += [s.name for s in ranked[1:] if s.name not in chosen][: max(0, SEED_TABLES - len(chosen))]
        for name in self._referenced(chosen, order) + self._links(chosen, order):
            if len(chosen) >= MAX_SELECTED:
                break
            if name not in chosen:
                chosen.append(name)
        return chosen

    def rank(self, question: str) -> list[TableScore]:
        """Every table scored against the question, best first (ties by name, deterministic)."""
        tables = self.db.schema()
        semantic = self._semantic(question, tables)
        words = _question_words(question)
        scores = []
        for i, table in enumerate(tables):
            lexical = self._lexical(words, table)
            total = float(semantic[i]) + LEXICAL_WEIGHT * lexical
            scores.append(TableScore(table.name, round(total, 4), round(float(semantic[i]), 4), round(lexical, 4)))
        return sorted(scores, key=lambda s: (-s.score, s.name))

    # -- scoring -------------------------------------------------------------------------------

    @staticmethod
    def _lexical(words: set[str], table: TableInfo) -> float:
        """Share of the question's content words that name this table (x2) or one of its columns."""
        if not words:
            return 0.0
        table_words = set(name_words(table.name))
        column_words = {w for c in table.column_names() for w in name_words(c)}
        hits = TABLE_NAME_WEIGHT * len(words & table_words) + len((words - table_words) & column_words)
        return hits / len(words)

    def _semantic(self, question: str, tables: Sequence[TableInfo]) -> np.ndarray:
        """Cosine similarity of the question to each table (vectors are L2-normalised)."""
        if self.embed is None:
            return np.zeros(len(tables), dtype=np.float32)
        with self._lock:  # table vectors once per database: the schema does not change
            if self._vectors is None:
                self._vectors = np.asarray(self.embed([_description(t) for t in tables]), dtype=np.float32)
            vectors = self._vectors
        return vectors @ np.asarray(self.embed([question])[0], dtype=np.float32)

    # -- foreign-key neighbours ----------------------------------------------------------------

    def _referenced(self, chosen: list[str], order: dict[str, int]) -> list[str]:
        """Tables the chosen ones point to (an id column is useless without its lookup table)."""
        targets = {fk.ref_table for name in chosen for fk in self.db.table(name).foreign_keys}
        return sorted((t for t in targets if t in order), key=order.__getitem__)

    def _links(self, chosen: list[str], order: dict[str, int]) -> list[str]:
        """Tables pointing to two or more chosen ones: the join table between them."""
        picked = {c.lower() for c in chosen}
        links = [
            t.name
            for t in self.db.schema()
            if len({fk.ref_table.lower() for fk in t.foreign_keys} & picked) >= 2
        ]
        return sorted(links, key=order.__getitem__)
