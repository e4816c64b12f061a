"""The SQL specialist on Chinook questions, against recorded exchanges with the real local model.

Every test runs on SQLite and on PostgreSQL (Chinook loaded by scripts/postgres.sh; skipped when
``SWITCHBOARD_TEST_PG_URL`` is unset). The prompts differ between the two (dialect notes, and the
schema says TIMESTAMP instead of DATETIME), so each backend has its own cassette, recorded with
``SWITCHBOARD_RECORD_MODE=record .venv/bin/python -m pytest tests/transcripts/test_sql_agent.py``.
Assertions check the SQL and the answer against known Chinook facts (59 customers, 5 in Brazil,
4 in Germany, 347 albums, 275 artists, 3503 tracks, invoices dated 2021-2025).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from agents.sql import SQLAgent
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tests.asserts import has_number

CHINOOK_URL = f"sqlite:///{REPO_ROOT / 'data' / 'chinook' / 'chinook.sqlite'}"
PG_URL = os.environ.get("SWITCHBOARD_TEST_PG_URL", "")
needs_pg = pytest.mark.skipif(not PG_URL, reason='SWITCHBOARD_TEST_PG_URL is not set: eval "$(scripts/postgres.sh)"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_pg)])
def settings(request: pytest.FixtureRequest, cassette_settings: Settings, make_settings) -> Settings:
    """This test's cassette (one per backend: the parameter is part of its name) and database."""
    url = CHINOOK_URL if request.param == "sqlite" else PG_URL
    return make_settings(
        record_mode=cassette_settings.record_mode, cassette_path=cassette_settings.cassette_path, database_url=url
    )


def _handoff(question: str) -> Any:
    subtask = {"id": "t1", "agent": "sql", "task": question, "route": "data", "confidence": 1.0,
               "reason": "test", "depends_on": [], "extract_only": False}
    return {"subtask": subtask, "summary": "", "entities": {}, "evidence": [], "image_path": None,
            "policy": "balanced"}


async def ask(settings: Settings, question: str) -> dict[str, Any]:
    """One question straight to the SQL node; its result (answer, evidence with the SQL)."""
    services = Services(settings)
    try:
        update = await SQLAgent(services)(_handoff(question))
    finally:
        services.db.close()
    result = update["results"][0]
    assert result["ok"], result["answer"]
    return result


@pytest.mark.parametrize(
    ("question", "value", "in_sql"),
    [
        ("How many customers do we have?", "59", "FROM Customer"),
        ("How many customers are from Germany?", "4", "'Germany'"),
        ("How many albums are in the catalog?", "347", "FROM Album"),
        ("How many artists are there?", "275", "FROM Artist"),
        ("How many tracks are in the catalog?", "3503", "FROM Track"),
    ],
    ids=["customers", "germany", "albums", "artists", "tracks"],
)
async def test_counts(settings: Settings, question: str, value: str, in_sql: str) -> None:
    result = await ask(settings, question)
    sql = result["evidence"]["sql"]
    assert "COUNT(" in sql.upper() and in_sql in sql
    assert result["evidence"]["rows"] == [[int(value)]]
    assert value in result["answer"]


async def test_albums_of_an_artist_across_two_tables(settings: Settings) -> None:
    result = await ask(settings, "How many albums does AC/DC have?")
    sql = result["evidence"]["sql"]
    assert "Artist" in sql and "Album" in sql and "'AC/DC'" in sql  # a join or a subquery
    assert result["evidence"]["rows"] == [[2]] and "2" in result["answer"]


async def test_tracks_in_a_genre_across_two_tables(settings: Settings) -> None:
    result = await ask(settings, "How many tracks are in the Rock genre?")
    sql = result["evidence"]["sql"]
    assert "Track" in sql and "Genre" in sql and "'Rock'" in sql
    assert result["evidence"]["rows"] == [[1297]] and "1297" in result["answer"]


@pytest.mark.parametrize(
    ("question", "expected"),
    [("Which genre has the most tracks?", "Rock"), ("Which artist has the most albums?", "Iron Maiden")],
    ids=["genre", "artist"],
)
async def test_join_with_grouping(settings: Settings, question: str, expected: str) -> None:
    """A name from one table ranked by rows of another: a join and a GROUP BY."""
    result = await ask(settings, question)
    sql = result["evidence"]["sql"].upper()
    assert "JOIN" in sql and "GROUP BY" in sql
    assert result["evidence"]["rows"][0][0] == expected and expected in result["answer"]


async def test_join_top_customer_by_spending(settings: Settings) -> None:
    """Names (Customer) and money (Invoice) in one answer.

    With the PostgreSQL prompt the 1.5B local model used to sum InvoiceLine.UnitPrice * Quantity
    over Invoice and flip between the two tables on every retry, so the agent reported that it
    could not build a query (a strict xfail until issue 18); the second opinion from the
    CREATE TABLE view now answers it.
    """
    result = await ask(settings, "What is the name of the customer who spent the most, and the total of their invoices?")
    sql = result["evidence"]["sql"].upper()
    assert "JOIN" in sql and "GROUP BY" in sql
    assert result["evidence"]["rows"] == [["Helena", "Holý", pytest.approx(49.62)]]
    # three columns for the sentence's two {result} slots: shown as a table, never guessed into it
    assert "| Helena | Holý | 49.62 |" in result["answer"]


async def test_aggregate_total_sales(settings: Settings) -> None:
    result = await ask(settings, "What is the total amount of all invoices?")
    assert "SUM(" in result["evidence"]["sql"].upper() and "Invoice" in result["evidence"]["sql"]
    assert result["evidence"]["rows"] == [[pytest.approx(2328.6)]]  # SQLite's float sum: 2328.6000000000004
    assert "2,328.60" in result["answer"]


async def test_aggregate_group_by_country(settings: Settings) -> None:
    result = await ask(settings, "Which country has the most customers?")
    sql = result["evidence"]["sql"].upper()
    assert "GROUP BY" in sql and "ORDER BY" in sql
    assert result["evidence"]["rows"][0][0] == "USA" and "USA" in result["answer"]


async def test_aggregate_invoice_date_range(settings: Settings) -> None:
    result = await ask(settings, "What are the dates of the first and the last invoice?")
    sql = result["evidence"]["sql"].upper()
    assert "MIN(" in sql and "MAX(" in sql
    assert "2021-01-01" in result["answer"] and "2025-12-22" in result["answer"]


async def test_follow_up_question_uses_the_conversation(settings: Settings) -> None:
    """The second question only makes sense with the first: the graph hands over the summary."""
    async with Switchboard.open(settings) as sb:
        first = await sb.ask("How many customers are from Brazil?", thread_id="follow-up")
        second = await sb.ask("Which cities do they live in?", thread_id="follow-up")
    assert has_number(first.answer, 5)
    assert [s.agent for s in second.subtasks] == ["sql"]
    sql = second.results[0]["evidence"]["sql"]
    assert "'Brazil'" in sql and "City" in sql
    for city in ("São Paulo", "Rio de Janeiro", "Brasília", "São José dos Campos"):
        assert city in second.answer
