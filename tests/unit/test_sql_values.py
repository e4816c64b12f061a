"""Value grounding (tools/sql/values.py): which stored value a question's words name.

Over the repo's own databases: Chinook (data/chinook) and the kennel example (examples/kennel,
Spider's dog_kennels, CC BY-SA 4.0), whose misspelt and squashed values ('Veterenarian',
'NorthDakota') made the SQL specialist answer 0 before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.sql.database import ReadOnlyDatabase
from tools.sql.values import MAX_MATCHES, ValueIndex, squash

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chinook() -> ValueIndex:
    db = ReadOnlyDatabase(f"sqlite:///{ROOT / 'data' / 'chinook' / 'chinook.sqlite'}")
    try:
        return ValueIndex.build(db, exclude=["Customer.Email"])
    finally:
        db.close()


@pytest.fixture(scope="module")
def kennel() -> ValueIndex:
    db = ReadOnlyDatabase(f"sqlite:///{ROOT / 'examples' / 'kennel' / 'kennel.sqlite'}")
    try:
        return ValueIndex.build(db)
    finally:
        db.close()


def rendered(index: ValueIndex, question: str) -> list[str]:
    return [m.render() for m in index.match(question)]


def test_squash_folds_case_spaces_and_punctuation() -> None:
    assert squash("AC/DC") == "acdc" and squash("North Dakota") == squash("NorthDakota") == "northdakota"


@pytest.mark.parametrize(("question", "expected"), [
    ("How many Jazz tracks are there?", ["Genre.Name = 'Jazz'"]),
    ("How many jazz tracks are there?", ["Genre.Name = 'Jazz'"]),  # case folded
    ("Which albums did ac/dc release?", ["Artist.Name = 'AC/DC'"]),  # the entity, not Track.Composer's copy
    ("List all tracks by Led Zepelin", ["Artist.Name = 'Led Zeppelin'"]),  # a typo: fuzzy
    ("Who holds the title sales support agent?", ["Employee.Title = 'Sales Support Agent'"]),
])
def test_chinook_values(chinook: ValueIndex, question: str, expected: list[str]) -> None:
    assert rendered(chinook, question) == expected


def test_one_column_per_value_the_one_of_the_table_the_question_names(chinook: ValueIndex) -> None:
    """Shown 'Brazil' in Customer.Country and Invoice.BillingCountry, the local model filtered on both."""
    assert rendered(chinook, "How many customers are from Brazil?") == ["Customer.Country = 'Brazil'"]
    assert rendered(chinook, "How many invoices were billed to Brazil?") == ["Invoice.BillingCountry = 'Brazil'"]


@pytest.mark.parametrize("question", [
    "Which artist has the most albums?",  # "the most" is not a misspelt 'The Moth'
    "Which albums did they release last year?",  # a plain word is not one of 3,500 track titles
    "What is the total number of invoices?",
])
def test_common_words_are_not_values(chinook: ValueIndex, question: str) -> None:
    assert rendered(chinook, question) == []


def test_excluded_and_contact_columns_are_never_indexed(chinook: ValueIndex) -> None:
    assert rendered(chinook, "Who has the email luisg@embraer.com.br?") == []  # excluded
    assert rendered(chinook, "Who lives at Av. Brigadeiro Faria Lima, 2170?") == []  # an address: personal


def test_kennel_misspelt_and_squashed_values(kennel: ValueIndex) -> None:
    assert rendered(kennel, "How many professionals live in North Dakota?") == ["Owners.state = 'NorthDakota'"]
    match = kennel.match("List the veterinarian professionals")
    assert [m.render() for m in match] == ["Professionals.role_code = 'Veterenarian'"] and not match[0].exact
    assert rendered(kennel, "How many Bulldog dogs are there?") == ["Breeds.breed_name = 'Bulldog'"]


def test_matches_are_bounded(chinook: ValueIndex) -> None:
    question = " ".join(["Jazz Rock Metal Blues Latin Pop Reggae Classical Soundtrack Comedy Drama"])
    assert len(chinook.match(question)) == MAX_MATCHES
