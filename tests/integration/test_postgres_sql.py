"""The same SQL checks on SQLite and on PostgreSQL (Chinook loaded by scripts/postgres.sh).

PostgreSQL runs only when ``SWITCHBOARD_TEST_PG_URL`` is set, normally to the read-only role:
``eval "$(scripts/postgres.sh)"`` starts a local server and exports it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy.exc import DBAPIError

from tools.sql.database import QueryTimeout, ReadOnlyDatabase, SQLExecutionError
from tools.sql.guard import UnsafeSQL

REPO = Path(__file__).resolve().parents[2]
CHINOOK = REPO / "data" / "chinook" / "chinook.sqlite"
PG_URL = os.environ.get("SWITCHBOARD_TEST_PG_URL", "")
NO_PG = 'SWITCHBOARD_TEST_PG_URL is not set: run `eval "$(scripts/postgres.sh)"` to include PostgreSQL'
needs_pg = pytest.mark.skipif(not PG_URL, reason=NO_PG)
CORPUS = yaml.safe_load((REPO / "tests" / "fixtures" / "hostile_sql.yaml").read_text(encoding="utf-8"))["cases"]

DbFactory = Callable[..., ReadOnlyDatabase]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=needs_pg)])
def make_db(request: pytest.FixtureRequest) -> Iterator[DbFactory]:
    """Builds databases of one backend; every test using it runs once per backend."""
    url = f"sqlite:///{CHINOOK}" if request.param == "sqlite" else PG_URL
    opened: list[ReadOnlyDatabase] = []

    def build(timeout_s: float = 5.0) -> ReadOnlyDatabase:
        opened.append(ReadOnlyDatabase.from_url(url, timeout_s=timeout_s))
        return opened[-1]

    yield build
    for db in opened:
        db.close()


@pytest.fixture(scope="module")
def db(make_db: DbFactory) -> ReadOnlyDatabase:
    return make_db()


def _plain(value: Any) -> Any:
    """Make SQLite's and PostgreSQL's Python values comparable (Decimal, datetime)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return value


# Unquoted PascalCase identifiers on purpose: the same model SQL must work on both backends.
SAME_ANSWERS = [
    ("SELECT COUNT(*) AS customers FROM Customer", [(59,)]),
    (
        "SELECT c.Country, ROUND(SUM(i.Total), 2) AS revenue FROM Customer AS c "
        "JOIN Invoice AS i ON i.CustomerId = c.CustomerId GROUP BY c.Country ORDER BY revenue DESC LIMIT 3",
        [("USA", 523.06), ("Canada", 303.96), ("France", 195.1)],
    ),
    (
        "SELECT g.Name, COUNT(*) AS tracks FROM Track AS t JOIN Genre AS g ON g.GenreId = t.GenreId "
        "GROUP BY g.Name ORDER BY tracks DESC, g.Name LIMIT 2",
        [("Rock", 1297), ("Latin", 579)],
    ),
    (
        "WITH spend AS (SELECT CustomerId, SUM(Total) AS spent FROM Invoice GROUP BY CustomerId) "
        "SELECT c.FirstName, c.LastName, ROUND(s.spent, 2) FROM spend AS s "
        "JOIN Customer AS c ON c.CustomerId = s.CustomerId ORDER BY s.spent DESC, c.CustomerId LIMIT 2",
        [("Helena", "Holý", 49.62), ("Richard", "Cunningham", 47.62)],
    ),
    (
        "WITH RECURSIVE chain(EmployeeId, depth) AS (SELECT EmployeeId, 0 FROM Employee WHERE ReportsTo IS NULL "
        "UNION ALL SELECT e.EmployeeId, c.depth + 1 FROM Employee AS e JOIN chain AS c ON e.ReportsTo = c.EmployeeId) "
        "SELECT depth, COUNT(*) FROM chain GROUP BY depth ORDER BY depth",
        [(0, 1), (1, 2), (2, 5)],
    ),
    (
        "SELECT e.LastName, COUNT(c.CustomerId) AS customers, RANK() OVER (ORDER BY COUNT(c.CustomerId) DESC) AS rnk "
        "FROM Employee AS e JOIN Customer AS c ON c.SupportRepId = e.EmployeeId "
        "GROUP BY e.EmployeeId, e.LastName ORDER BY rnk, e.LastName",
        [("Peacock", 21, 1), ("Park", 20, 2), ("Johnson", 18, 3)],
    ),
    ("select firstname, lastname from customer where customerid = 1", [("Luís", "Gonçalves")]),
    ("SELECT Name FROM Track WHERE TrackId = 3435", [("Cavalleria Rusticana \\ Act \\ Intermezzo Sinfonico",)]),
    ("SELECT MIN(InvoiceDate), MAX(InvoiceDate) FROM Invoice", [("2021-01-01 00:00:00", "2025-12-22 00:00:00")]),
]


@pytest.mark.parametrize(("sql", "expected"), SAME_ANSWERS)
def test_same_sql_same_answer(db: ReadOnlyDatabase, sql: str, expected: list[tuple[Any, ...]]) -> None:
    result = db.run(sql)
    assert [tuple(_plain(v) for v in row) for row in result.rows] == expected
    assert not result.truncated


def test_schema_matches_on_both(db: ReadOnlyDatabase) -> None:
    counts = {t.name: t.row_count for t in db.schema()}
    assert counts["Track"] == 3503 and counts["PlaylistTrack"] == 8715 and len(counts) == 11
    text = db.describe(sample_rows=0)
    assert "SupportRepId -> Employee.EmployeeId" in text and "Total NUMERIC" in text


def test_row_limit(db: ReadOnlyDatabase) -> None:
    result = db.run("SELECT TrackId FROM Track ORDER BY TrackId", max_rows=3)
    assert result.rows == [(1,), (2,), (3,)] and result.truncated


def test_timeout(make_db: DbFactory) -> None:
    slow = make_db(timeout_s=0.5)
    with pytest.raises(QueryTimeout):
        slow.run(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000000) SELECT COUNT(*) FROM r"
        )
    assert slow.run("SELECT COUNT(*) FROM Genre").rows == [(25,)]


def test_database_error_message_is_clean(db: ReadOnlyDatabase) -> None:
    with pytest.raises(SQLExecutionError) as error:
        db.run("SELECT Nme FROM Artist")
    message = str(error.value)
    assert "nme" in message.lower() and "DECLARE" not in message


def test_hostile_corpus_is_refused_and_data_unchanged(db: ReadOnlyDatabase) -> None:
    before = {t.name: t.row_count for t in db.schema()}
    cases = [c for c in CORPUS if db.dialect in c.get("dialects", ["sqlite", "postgres"])]
    assert len(cases) > 40
    for case in cases:
        if case["expect"] == "refuse":
            with pytest.raises(UnsafeSQL):
                db.run(case["sql"])
        else:
            assert db.run(case["sql"]).columns, case["id"]
    after = {name: db.run(f'SELECT COUNT(*) FROM "{name}"').rows[0][0] for name in before}
    assert after == before


# --- PostgreSQL only: the layers below the guard ---------------------------------------------


@needs_pg
def test_pg_identifiers_are_quoted_to_schema_case() -> None:
    db = ReadOnlyDatabase.from_url(PG_URL)
    result = db.run("SELECT firstname FROM customer WHERE customerid = 2")
    assert result.sql == 'SELECT "FirstName" FROM "Customer" WHERE "CustomerId" = 2'
    assert result.rows == [("Leonie",)]
    db.close()


@needs_pg
def test_pg_read_only_transaction_refuses_write_when_guard_is_bypassed() -> None:
    db = ReadOnlyDatabase.from_url(PG_URL)
    with db.engine.connect() as conn, pytest.raises(DBAPIError, match="read-only transaction"):
        conn.exec_driver_sql("""INSERT INTO "Genre" ("GenreId", "Name") VALUES (999, 'pwned')""")
    db.close()


@needs_pg
@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("""INSERT INTO "Genre" ("GenreId", "Name") VALUES (999, 'pwned')""", "permission denied for table Genre"),
        ('DELETE FROM "InvoiceLine"', "permission denied for table InvoiceLine"),
        ("CREATE TABLE pwned (a int)", "permission denied for schema public"),
        ("CREATE TEMP TABLE pwned (a int)", "permission denied to create temporary tables"),
    ],
)
def test_pg_reader_role_cannot_write_even_in_a_read_write_transaction(statement: str, refusal: str) -> None:
    """No SQLAlchemy, no guard, read-only switched off: only the role's grants remain."""
    with psycopg.connect(PG_URL, connect_timeout=10) as conn:
        conn.read_only = False  # BEGIN READ WRITE, overriding the role's default
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal):
            conn.execute(statement)
