"""The SQL guard against a corpus of hostile statements, and identifier validation.

Every corpus statement is also run through ``ReadOnlyDatabase.run`` on a copy of Chinook, and
the copy must stay byte-identical: refusals must happen, and nothing allowed may write.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml

from tools.sql.database import ReadOnlyDatabase
from tools.sql.guard import UnsafeSQL, check_read_only, referenced_tables, validate_identifiers
from tools.sql.results import QueryResult

REPO = Path(__file__).resolve().parents[2]
CHINOOK = REPO / "data" / "chinook" / "chinook.sqlite"
CORPUS_FILE = REPO / "tests" / "fixtures" / "hostile_sql.yaml"
DIALECTS = ("sqlite", "postgres")
CASES: list[dict[str, Any]] = yaml.safe_load(CORPUS_FILE.read_text(encoding="utf-8"))["cases"]

CHINOOK_SCHEMA = {
    "Customer": ["CustomerId", "FirstName", "LastName", "Country", "Email", "SupportRepId"],
    "Employee": ["EmployeeId", "FirstName", "LastName", "ReportsTo"],
    "Invoice": ["InvoiceId", "CustomerId", "InvoiceDate", "Total"],
    "InvoiceLine": ["InvoiceLineId", "InvoiceId", "TrackId", "UnitPrice", "Quantity"],
    "Track": ["TrackId", "Name", "AlbumId", "GenreId", "UnitPrice"],
    "Genre": ["GenreId", "Name"],
}


def _params(dialect: str | None = None) -> list[Any]:
    """(case, dialect) pairs; with ``dialect`` only the cases meant for it."""
    return [
        pytest.param(case, d, id=f"{case['id']}-{d}")
        for case in CASES
        for d in case.get("dialects", DIALECTS)
        if dialect is None or d == dialect
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the corpus itself ----------------------------------------------------------------------


def test_corpus_is_large_and_well_formed() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert sum(c["expect"] == "refuse" for c in CASES) >= 40
    assert sum(c["expect"] == "allow" for c in CASES) >= 5
    for case in CASES:
        assert case["expect"] in {"refuse", "allow"}, case["id"]
        assert set(case.get("dialects", DIALECTS)) <= set(DIALECTS), case["id"]


# --- verdicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "dialect"), _params())
def test_guard_verdict_and_reason(case: dict[str, Any], dialect: str) -> None:
    if case["expect"] == "allow":
        normalised = check_read_only(case["sql"], dialect)
        assert len(sqlglot.parse(normalised, read=dialect)) == 1
        return
    with pytest.raises(UnsafeSQL) as refused:
        check_read_only(case["sql"], dialect)
    reason = refused.value.reason
    assert len(reason) >= 10 and reason in str(refused.value), reason
    assert case.get("reason", "").lower() in reason.lower(), f"reason {reason!r} lacks {case.get('reason')!r}"


def test_refusal_is_logged_with_reason_and_truncated_statement(caplog: pytest.LogCaptureFixture) -> None:
    hostile = "SELECT 1; DROP TABLE Customer -- " + "x" * 1000
    with caplog.at_level(logging.WARNING, logger="switchboard.sql"), pytest.raises(UnsafeSQL):
        check_read_only(hostile)
    records = [r for r in caplog.records if r.name == "switchboard.sql"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "2 statements" in message and "DROP TABLE Customer" in message
    assert len(message) < 500  # the statement is truncated, not dumped


def test_unparseable_sql_says_so() -> None:
    with pytest.raises(UnsafeSQL, match="could not parse"):
        check_read_only("SELECT * FROM Customer WHERE")


def test_normalised_sql_drops_comments_and_keeps_literals() -> None:
    sql = "SELECT 'a; DROP TABLE x' AS s /* ; DELETE FROM Customer */ -- trailing"
    normalised = check_read_only(sql)
    assert "DELETE" not in normalised and "--" not in normalised and "/*" not in normalised
    assert "'a; DROP TABLE x'" in normalised


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM Customer AS c JOIN Invoice AS i ON i.CustomerId = c.CustomerId",
        "SELECT Country, COUNT(*) AS n FROM Customer GROUP BY Country HAVING COUNT(*) > 2",
        "WITH t AS (SELECT CustomerId, SUM(Total) AS s FROM Invoice GROUP BY 1) SELECT * FROM t",
        "SELECT TrackId, ROW_NUMBER() OVER (PARTITION BY AlbumId ORDER BY Milliseconds DESC) FROM Track",
        "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
        "(SELECT FirstName FROM Customer) UNION (SELECT FirstName FROM Employee)",
    ],
)
def test_benign_selects_are_allowed(sql: str) -> None:
    assert check_read_only(sql).upper().lstrip("( ").startswith(("SELECT", "WITH"))


# --- every corpus statement against a real SQLite copy -------------------------------------


@pytest.fixture(scope="module")
def chinook_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReadOnlyDatabase, Path, str]]:
    path = tmp_path_factory.mktemp("chinook") / "chinook.sqlite"
    shutil.copyfile(CHINOOK, path)
    db = ReadOnlyDatabase.from_url(f"sqlite:///{path}", timeout_s=5)
    yield db, path, _sha256(path)
    db.close()


@pytest.mark.parametrize(("case", "dialect"), _params("sqlite"))
def test_corpus_through_run_leaves_sqlite_file_identical(
    case: dict[str, Any], dialect: str, chinook_copy: tuple[ReadOnlyDatabase, Path, str]
) -> None:
    db, path, digest = chinook_copy
    if case["expect"] == "refuse":
        with pytest.raises(UnsafeSQL):
            db.run(case["sql"])
    else:
        result = db.run(case["sql"])
        assert isinstance(result, QueryResult) and result.columns
    assert _sha256(path) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["chinook.sqlite"]  # no -journal/-wal


# --- referenced tables and identifier validation --------------------------------------------


def test_referenced_tables_excludes_ctes_and_sees_subqueries() -> None:
    sql = (
        "WITH top AS (SELECT CustomerId FROM Invoice) "
        "SELECT * FROM Customer WHERE CustomerId IN (SELECT CustomerId FROM top) "
        "AND SupportRepId IN (SELECT EmployeeId FROM main.Employee)"
    )
    assert referenced_tables(sql) == {"Invoice", "Customer", "Employee"}


def test_referenced_tables_refuses_unsafe_sql() -> None:
    with pytest.raises(UnsafeSQL):
        referenced_tables("DELETE FROM Customer")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c.firstname, i.total FROM customer AS c JOIN invoice AS i ON i.customerid = c.customerid",
        "WITH spend AS (SELECT CustomerId, SUM(Total) AS spent FROM Invoice GROUP BY CustomerId) "
        "SELECT c.FirstName, s.spent FROM Customer AS c JOIN spend AS s ON s.CustomerId = c.CustomerId "
        "ORDER BY spent DESC",
        "SELECT Country, COUNT(*) AS n FROM Customer GROUP BY Country HAVING n > 1 ORDER BY n",
        "SELECT e.FirstName, (SELECT COUNT(*) FROM Customer WHERE SupportRepId = e.EmployeeId) FROM Employee e",
        "SELECT x.* FROM (SELECT * FROM Track) AS x WHERE x.Whatever = 1",  # star source: skipped
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r",
        "SELECT name FROM sqlite_master WHERE type = 'table'",
    ],
)
def test_validate_identifiers_accepts_valid_queries(sql: str) -> None:
    assert validate_identifiers(sql, CHINOOK_SCHEMA) == []


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT Name FROM Customer", "unknown column 'Name' in Customer"),
        ("SELECT c.Nmae FROM Genre AS c", "unknown column 'Nmae' in Genre; did you mean Name"),
        ("SELECT * FROM Customers", "unknown table 'Customers'; did you mean Customer"),
        ("SELECT Customer.FirstName FROM Customer AS c", "unknown table or alias 'Customer'"),
        ("WITH t AS (SELECT CustomerId AS id FROM Invoice) SELECT t.total FROM t", "unknown column 'total' in t"),
        (
            "SELECT e.FirstName FROM Employee AS e WHERE EXISTS "
            "(SELECT 1 FROM Customer AS c WHERE c.SupportRepId = e.EmploeeId)",
            "unknown column 'EmploeeId' in Employee; did you mean EmployeeId",
        ),
    ],
)
def test_validate_identifiers_reports_problems(sql: str, expected: str) -> None:
    problems = validate_identifiers(sql, CHINOOK_SCHEMA)
    assert any(expected in p for p in problems), problems
