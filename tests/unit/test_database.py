"""ReadOnlyDatabase on SQLite: read-only at every layer, limits, schema text, errors."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy.exc import DBAPIError, ResourceClosedError

import tools.sql.database as database
from tools.sql.database import QueryTimeout, ReadOnlyDatabase, SQLExecutionError
from tools.sql.results import QueryResult

REPO = Path(__file__).resolve().parents[2]
CHINOOK = REPO / "data" / "chinook" / "chinook.sqlite"
CORPUS = yaml.safe_load((REPO / "tests" / "fixtures" / "hostile_sql.yaml").read_text(encoding="utf-8"))["cases"]
ROW_COUNTS = {
    "Album": 347,
    "Artist": 275,
    "Customer": 59,
    "Employee": 8,
    "Genre": 25,
    "Invoice": 412,
    "InvoiceLine": 2240,
    "MediaType": 5,
    "Playlist": 18,
    "PlaylistTrack": 8715,
    "Track": 3503,
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def chinook_copy(tmp_path: Path) -> Path:
    path = tmp_path / "chinook.sqlite"
    shutil.copyfile(CHINOOK, path)
    return path


@pytest.fixture(scope="module")
def db() -> Iterator[ReadOnlyDatabase]:
    database_ = ReadOnlyDatabase.from_url(f"sqlite:///{CHINOOK}")
    yield database_
    database_.close()


# --- read-only below the guard -----------------------------------------------------------


def test_connection_itself_is_read_only_even_without_guard_or_authorizer(chinook_copy: Path) -> None:
    digest = _sha256(chinook_copy)
    db = ReadOnlyDatabase.from_url(f"sqlite:///{chinook_copy}")
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.set_authorizer(None)  # strip the second layer too: only mode=ro is left
        for statement in ("DELETE FROM Genre", "CREATE TABLE pwned (a)", "UPDATE Track SET UnitPrice = 0"):
            with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
                raw.execute(statement)
        conn.invalidate()  # don't return the stripped connection to the pool
    db.close()
    assert _sha256(chinook_copy) == digest


def test_engine_connections_refuse_writes_to_other_files(chinook_copy: Path) -> None:
    """mode=ro alone would allow ATTACH / VACUUM INTO to create files; the authorizer doesn't."""
    db = ReadOnlyDatabase.from_url(f"sqlite:///{chinook_copy}")
    target = chinook_copy.parent / "stolen.sqlite"
    with db.engine.connect() as conn:
        for statement in (f"VACUUM INTO '{target}'", f"ATTACH DATABASE 'file:{target}?mode=rwc' AS x"):
            with pytest.raises(DBAPIError, match=r"not authorized|authorization denied"):
                conn.exec_driver_sql(statement)
    db.close()
    assert not target.exists()


def test_guard_bypassed_run_still_changes_nothing(chinook_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a guard bug: every hostile SQLite case goes straight to the database."""
    monkeypatch.setattr(database, "check_read_only", lambda sql, dialect="sqlite": sql)
    digest = _sha256(chinook_copy)
    db = ReadOnlyDatabase.from_url(f"sqlite:///{chinook_copy}")
    hostile = [c for c in CORPUS if c["expect"] == "refuse" and "sqlite" in c.get("dialects", ["sqlite"])]
    outcomes: dict[str, str] = {}
    for case in hostile:
        try:
            db.run(case["sql"])
            outcomes[case["id"]] = "ran"
        except (SQLExecutionError, ResourceClosedError) as exc:  # no rows / refused by SQLite
            outcomes[case["id"]] = type(exc).__name__
    db.close()
    assert _sha256(chinook_copy) == digest
    assert sorted(p.name for p in chinook_copy.parent.iterdir()) == ["chinook.sqlite"]
    assert not list(Path("/tmp").glob("switchboard-evil*")) and not list(Path("/tmp").glob("switchboard-stolen*"))
    writes = [
        "delete_all",
        "update_all",
        "insert_values",
        "drop_table",
        "attach",
        "vacuum_into",
        "pragma_writable_schema",
    ]
    assert all(outcomes[name] == "SQLExecutionError" for name in writes), outcomes


# --- limits -----------------------------------------------------------------------------


def test_row_limit_and_truncation_flag(db: ReadOnlyDatabase) -> None:
    capped = db.run("SELECT TrackId FROM Track ORDER BY TrackId", max_rows=5)
    assert capped.rows == [(1,), (2,), (3,), (4,), (5,)] and capped.truncated
    exact = db.run("SELECT GenreId FROM Genre", max_rows=25)
    assert len(exact.rows) == 25 and not exact.truncated
    one_short = db.run("SELECT GenreId FROM Genre", max_rows=24)
    assert len(one_short.rows) == 24 and one_short.truncated


def test_max_rows_must_be_positive(db: ReadOnlyDatabase) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        db.run("SELECT 1", max_rows=0)


def test_slow_query_is_interrupted_and_connection_recovers() -> None:
    db = ReadOnlyDatabase.from_url(f"sqlite:///{CHINOOK}", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit"):
        db.run("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r")
    assert time.monotonic() - started < 3
    assert db.run("SELECT COUNT(*) FROM Genre").rows == [(25,)]  # handler removed, pool healthy
    db.close()


# --- results and errors -----------------------------------------------------------------


def test_result_carries_normalised_sql_columns_and_timing(db: ReadOnlyDatabase) -> None:
    result = db.run("select  GenreId,  Name from Genre  where GenreId = 1 -- comment")
    assert result.sql == "SELECT GenreId, Name FROM Genre WHERE GenreId = 1"
    assert result.columns == ["GenreId", "Name"] and result.rows == [(1, "Rock")]
    assert result.elapsed_ms > 0 and not result.truncated


def test_percent_and_colon_are_sql_not_placeholders(db: ReadOnlyDatabase) -> None:
    result = db.run("SELECT COUNT(*) FROM Track WHERE Name LIKE '%: %' OR Name = ':name'")
    assert result.rows[0][0] > 0


def test_database_error_is_raised_with_its_message(db: ReadOnlyDatabase) -> None:
    with pytest.raises(SQLExecutionError, match="no such column: Nme") as error:
        db.run("SELECT Nme FROM Artist")
    assert error.value.sql == "SELECT Nme FROM Artist"
    assert not isinstance(error.value, QueryTimeout)


def test_as_markdown_renders_a_small_table() -> None:
    result = QueryResult(
        sql="SELECT ...",
        columns=["Name", "Note"],
        rows=[("a|b", None), ("x" * 100, 1.5), ("c", 2)],
        truncated=True,
        elapsed_ms=1.0,
    )
    text = result.as_markdown(max_rows=2)
    lines = text.splitlines()
    assert lines[0] == "| Name | Note |" and lines[1] == "|---|---|"
    assert lines[2] == "| a\\|b | NULL |"
    assert len(lines[3]) < 80 and lines[3].endswith("| 1.5 |")
    assert lines[-1] == "_2 of more than 3 rows shown_" and len(lines) == 5
    empty = QueryResult("SELECT 1 WHERE 0", ["x"], [], False, 0.1).as_markdown()
    assert empty.endswith("_(no rows)_")


# --- schema and prompt text ---------------------------------------------------------------


def test_schema_is_reflected_once_with_keys_and_counts(db: ReadOnlyDatabase) -> None:
    tables = db.schema()
    assert db.schema() is tables  # cached
    assert {t.name: t.row_count for t in tables} == ROW_COUNTS
    assert db.table("playlisttrack").primary_key == ("PlaylistId", "TrackId")
    assert db.table("Customer").reference("SupportRepId") == "Employee.EmployeeId"
    assert db.dialect == "sqlite" and db.table_names() == sorted(ROW_COUNTS)


def test_compact_description_is_one_line_per_table_with_foreign_keys(db: ReadOnlyDatabase) -> None:
    text = db.describe(sample_rows=0)
    lines = text.splitlines()
    assert len(lines) == 1 + len(ROW_COUNTS)
    assert "Customer(CustomerId INTEGER PK, FirstName, LastName," in text
    assert "SupportRepId -> Employee.EmployeeId)" in text
    assert "PlaylistTrack(PlaylistId PK -> Playlist.PlaylistId, TrackId PK -> Track.TrackId)" in lines
    assert "InvoiceDate DATETIME" in text and "NVARCHAR" not in text
    assert len(text) < 1400  # ~300 tokens for the local model: keep it that way


def test_description_samples_are_short_sql_literals(db: ReadOnlyDatabase) -> None:
    text = db.describe(["invoice", "Genre"], sample_rows=2)
    lines = text.splitlines()
    assert lines[1].startswith("Invoice(") and lines[3] == "Genre(GenreId INTEGER PK, Name)"
    assert lines[2].startswith("  e.g. (1, 2, '2021-01-01 00:00:00', ")
    assert lines[4] == "  e.g. (1, 'Rock'); (2, 'Jazz')"
    full = db.describe()  # every table with 2 samples: the expensive variant
    assert len(full) < 3000 and max(len(v) for v in full.split("'")[1::2]) <= 20


def test_full_description_lists_types_and_constraints(db: ReadOnlyDatabase) -> None:
    text = db.describe(["Customer"], sample_rows=0, compact=False)
    assert text.startswith("TABLE Customer (59 rows)")
    assert "  Email NVARCHAR(60) NOT NULL" in text
    assert "  FOREIGN KEY (SupportRepId) REFERENCES Employee (EmployeeId)" in text


def test_unknown_table_in_describe_lists_real_ones(db: ReadOnlyDatabase) -> None:
    with pytest.raises(KeyError, match=r"Customers.*tables are: Album, Artist"):
        db.describe(["Customers"])


def test_validate_finds_unknown_column(db: ReadOnlyDatabase) -> None:
    assert db.validate("SELECT Nme FROM Artist") == ["unknown column 'Nme' in Artist; did you mean Name?"]
    assert db.validate("SELECT a.Name, COUNT(*) FROM Artist a JOIN Album b USING (ArtistId) GROUP BY 1") == []


# --- URLs and files -------------------------------------------------------------------------


def test_relative_and_absolute_sqlite_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    relative = ReadOnlyDatabase.from_url("sqlite:///data/chinook/chinook.sqlite", base_dir=REPO)
    absolute = ReadOnlyDatabase.from_url(f"sqlite:///{CHINOOK}")  # sqlite:////abs/path
    monkeypatch.chdir(REPO)
    from_cwd = ReadOnlyDatabase.from_url("sqlite:///data/chinook/chinook.sqlite")
    assert relative.path == absolute.path == from_cwd.path == CHINOOK.resolve()
    assert from_cwd.run("SELECT COUNT(*) FROM Artist").rows == [(275,)]


@pytest.mark.parametrize("url_form", ["sqlite:///{rel}", "sqlite:///{abs}"])
def test_missing_sqlite_file_is_a_clear_error_and_not_created(tmp_path: Path, url_form: str) -> None:
    missing = tmp_path / "nope" / "missing.sqlite"
    url = url_form.format(rel="nope/missing.sqlite", abs=missing)
    with pytest.raises(FileNotFoundError, match=r"SQLite database file not found: .*missing\.sqlite"):
        ReadOnlyDatabase.from_url(url, base_dir=tmp_path)
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a database file"),
        ("sqlite:///:memory:", "needs a database file"),
        ("mysql://u@localhost/db", "unsupported database"),
    ],
)
def test_unusable_urls_are_rejected(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReadOnlyDatabase.from_url(url)


def test_repr_hides_passwords() -> None:
    db = ReadOnlyDatabase.from_url("postgresql://reader:s3cret@127.0.0.1:1/chinook")
    assert "s3cret" not in repr(db) and db.dialect == "postgres"
    db.close()
