"""The business Switchboard answers for: one typed profile that every prompt reads.

Nothing in the code names a business. The demo store is the profile in
``switchboard/config/profile.yaml``; ``switchboard init`` writes a user's own under the data dir.
A profile says who the business is (name, what kind, one line about it, the word it calls
itself), what its database holds and what customers ask about, and the tone of answers. It may
carry notes for the SQL prompt about its own database, used only while a database with those
tables is connected (so another database never hears of tables it does not have).

Every value is plain text, bounded and checked on load: a profile is configuration a person
writes, and it goes into prompts verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.yaml_files import read_small_yaml

MAX_FIELD_CHARS = 300  # one line of a prompt
MAX_NOTE_CHARS = 1_500  # the SQL notes and worked example
MAX_PROFILE_BYTES = 32_000


class ProfileError(ValueError):
    """A profile file that cannot be used, with what to fix."""


@dataclass(frozen=True)
class SQLNotes:
    """What the SQL prompt says about the profile's own database, besides its schema."""

    tables: frozenset[str]  # recognised by these tables (all present)
    subject: str  # "the Chinook music store database"
    example: str  # a worked Question/SQL/ANSWER triple that runs on it ({result} in the answer)
    notes: Mapping[str, str] = field(default_factory=dict)  # per dialect ("sqlite", "postgres"), lines

    def applies_to(self, table_names: set[str]) -> bool:
        return bool(self.tables) and self.tables <= table_names


@dataclass(frozen=True)
class BusinessProfile:
    name: str  # "Chinook"
    kind: str  # a few words: "a digital music store"
    description: str  # one line: "a digital music store that sells music tracks and albums as downloads"
    noun: str = "business"  # what it calls itself: "store", "kennel", "clinic"
    database: str = ""  # what its database holds, for triage's route list
    topics: str = ""  # what customers ask it about: "orders, data or store policies"
    tone: str = "briefly and politely"
    sql: SQLNotes | None = None

    def __post_init__(self) -> None:
        for key in ("name", "kind", "description", "noun", "database", "topics", "tone"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ProfileError(f"profile field {key!r} must be text, not {type(value).__name__}")
            if len(value) > MAX_FIELD_CHARS or "\n" in value:
                raise ProfileError(f"profile field {key!r} must be one line of at most {MAX_FIELD_CHARS} characters")
        for key in ("name", "kind", "description"):
            if not getattr(self, key).strip():
                raise ProfileError(f"profile field {key!r} is empty: say who the business is")
        if self.sql is not None and (len(self.sql.example) > MAX_NOTE_CHARS
                                     or any(len(n) > MAX_NOTE_CHARS for n in self.sql.notes.values())):
            raise ProfileError(f"the profile's sql notes and example must be at most {MAX_NOTE_CHARS} characters each")

    # --- what the prompts say -------------------------------------------------------------------
    @property
    def business(self) -> str:
        """"Chinook, a digital music store"."""
        return f"{self.name}, {self.kind}"

    @property
    def asked_about(self) -> str:
        return self.topics or f"{self.database or 'data'} or {self.noun} policies"

    def prompt_values(self) -> dict[str, str]:
        """The names the prompt templates (``agents/prompts.py``) use."""
        return {"business": self.business, "name": self.name, "description": self.description,
                "noun": self.noun, "topics": self.asked_about, "tone": self.tone}

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "profile") -> BusinessProfile:
        if not isinstance(raw, Mapping):
            raise ProfileError(f"{where}: expected a mapping of profile fields")
        known = {"name", "kind", "description", "noun", "database", "topics", "tone", "sql"}
        if unknown := sorted(set(raw) - known):
            raise ProfileError(f"{where}: unknown profile field(s) {unknown}; known: {sorted(known)}")
        values = {k: ("" if raw.get(k) is None else raw[k]) for k in known - {"sql"} if k in raw}
        values = {"name": "", "kind": "", "description": "", **values}  # a missing one is "empty", below
        sql = raw.get("sql")
        notes = None
        if sql:
            if not isinstance(sql, Mapping) or not sql.get("tables") or not sql.get("subject"):
                raise ProfileError(f"{where}: sql needs tables (a list) and subject")
            notes = SQLNotes(tables=frozenset(str(t) for t in sql["tables"]), subject=str(sql["subject"]),
                             example=str(sql.get("example") or ""),
                             notes={str(k): str(v) for k, v in (sql.get("notes") or {}).items()})
        try:
            return cls(**values, sql=notes)
        except TypeError as exc:
            raise ProfileError(f"{where}: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> BusinessProfile:
        try:
            raw = read_small_yaml(path, MAX_PROFILE_BYTES, what="the business profile")
        except FileNotFoundError as exc:
            raise ProfileError(f"the business profile {path} does not exist") from exc
        except ValueError as exc:
            raise ProfileError(str(exc)) from exc
        return cls.from_dict(raw or {}, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "sql"}
        if self.sql is not None:
            out["sql"] = {"tables": sorted(self.sql.tables), "subject": self.sql.subject,
                          "notes": dict(self.sql.notes), "example": self.sql.example}
        return out
