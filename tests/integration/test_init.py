"""``switchboard init`` end to end, on a tiny database and docs folder it has never seen: the files
it writes, the knowledge base and routes it builds, the self-check it prints -- and that nothing is
written when an input is unusable. Then the classifier follows the data: a changed database or an
ingest that changes the docs retrains it (a new cache fingerprint), an unchanged start does not."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from switchboard.cli import main
from switchboard.services import Services
from switchboard.settings import Settings
from tools.routing.generate import cache_path

DOCS = {
    "parking.md": "# Parking permits\n\n## Applying for a permit\n\nApply online; a resident permit costs 40 euros "
                  "a year and arrives within 5 working days.\n\n## Lost permits\n\nReport a lost permit at the "
                  "front desk; a replacement costs 10 euros.\n",
    "waste.md": "# Waste collection\n\n## Collection days\n\nGeneral waste is collected on Mondays, recycling on "
                "Thursdays.\n\n## Bulky items\n\nBook a bulky item pickup at least 3 days ahead.\n",
}


def tiny_business(root: Path) -> tuple[str, Path]:
    db = root / "town.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript("""
            CREATE TABLE District (DistrictId INTEGER PRIMARY KEY, Name TEXT NOT NULL);
            CREATE TABLE Permit (PermitId INTEGER PRIMARY KEY, DistrictId INTEGER REFERENCES District(DistrictId),
                                 Holder TEXT, Fee REAL, IssuedOn TEXT);
        """)
        con.executemany("INSERT INTO District VALUES (?, ?)", [(1, "Harbour"), (2, "Old Town"), (3, "Hillside")])
        con.executemany("INSERT INTO Permit VALUES (?, ?, ?, ?, ?)",
                        [(i, 1 + i % 3, f"Holder {i}", 40.0, f"2025-0{1 + i % 9}-01") for i in range(1, 31)])
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    return f"sqlite:///{db}", docs


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(path))
    for key in ("SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_HELPCENTER_DIR", "SWITCHBOARD_COLLECTION",
                "SWITCHBOARD_ROUTES_FILE", "SWITCHBOARD_PROFILE_FILE"):
        monkeypatch.delenv(key, raising=False)
    return path


async def test_init_sets_up_a_new_business_end_to_end(tmp_path, data_dir, capsys):
    url, docs = tiny_business(tmp_path)
    code = main(["init", "--database", url, "--docs", str(docs), "--name", "Town Hall Services",
                 "--kind", "a town's citizen services office", "--yes"])
    out = capsys.readouterr().out
    assert code == 0, out
    profile = yaml.safe_load((data_dir / "profile.yaml").read_text())
    assert profile["name"] == "Town Hall Services" and profile["noun"] == "office"
    assert "districts" in profile["database"] and "permits" in profile["database"]
    chosen = yaml.safe_load((data_dir / "settings.yaml").read_text())
    assert chosen["database_url"] == url and Path(chosen["helpcenter_dir"]) == docs.resolve()
    assert chosen["collection"] == "kb-town-hall-services" and (data_dir / "routes.yaml").exists()
    assert "2 file(s): 2 added" in out and "routing self-check" in out and "cross-validated accuracy" in out

    services = Services(Settings())  # the next start reads what init wrote, with nothing else set
    assert services.profile.name == "Town Hall Services" and services.settings.database_url == url
    assert {Path(i.file).name for i in services.kb.sources().values()} == set(DOCS)  # only its own docs
    counts = services.route_training.counts()
    assert counts["schema"] >= 10 and counts["knowledge"] >= 4
    triage = services.triage
    triage.use_llm = False
    for question, agent in (("How many permits were issued in the Harbour district?", "sql"),
                            ("Which district has the most permits?", "sql"),
                            ("How do I apply for a parking permit?", "rag"),
                            ("When is recycling collected?", "rag"),
                            ("Hello, how are you?", "general")):
        decision = await triage.decide(question, has_image=False)
        assert [s.agent for s in decision.subtasks] == [agent], (question, decision.as_log())


@pytest.mark.parametrize("broken", ["database", "docs"])
def test_init_writes_nothing_when_an_input_is_unusable(tmp_path, data_dir, capsys, broken):
    url, docs = tiny_business(tmp_path)
    if broken == "database":
        url = f"sqlite:///{tmp_path / 'missing' / 'nothing.sqlite'}"
    else:
        docs = tmp_path / "no-such-folder"
    code = main(["init", "--database", url, "--docs", str(docs), "--name", "Town Hall", "--yes"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    assert ("database" in err) if broken == "database" else ("does not exist" in err)
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_init_asks_for_what_is_missing_only_in_a_terminal(tmp_path, data_dir, capsys):
    url, docs = tiny_business(tmp_path)
    assert main(["init", "--database", url, "--docs", str(docs), "--yes"]) == 2  # --yes never asks
    assert "--name" in capsys.readouterr().err


def test_the_classifier_follows_the_data(tmp_path, data_dir):
    url, docs = tiny_business(tmp_path)
    assert main(["init", "--database", url, "--docs", str(docs), "--name", "Town Hall", "--yes"]) == 0
    def fingerprint() -> str:
        services = Services(Settings())
        services.triage  # noqa: B018 - builds (or loads) the classifier
        path = cache_path(services.route_training, services.settings.triage_cache_dir)
        assert path.exists()
        return path.name

    first = fingerprint()
    assert fingerprint() == first  # an unchanged start loads it
    (docs / "pets.md").write_text("# Pet registration\n\n## Registering a dog\n\nRegister a dog within 30 days.\n")
    main(["ingest", str(docs)])
    second = fingerprint()
    assert second != first  # the knowledge base changed: retrained
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
        con.execute("CREATE TABLE Complaint (ComplaintId INTEGER PRIMARY KEY, Topic TEXT)")
        con.execute("INSERT INTO Complaint VALUES (1, 'Noise')")
    assert fingerprint() not in (first, second)  # the schema changed: retrained


def test_init_asks_in_a_terminal_and_uses_the_answers(tmp_path, data_dir, monkeypatch, capsys):
    url, docs = tiny_business(tmp_path)
    answers = iter([url, str(docs), "Town Hall Services", "a town office", ""])  # "" keeps the default
    asked: list[str] = []

    def fake_input(prompt: str) -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["init"]) == 0, capsys.readouterr()
    assert len(asked) == 5 and "[a town office]" in asked[-1]  # the description defaults to the kind
    profile = yaml.safe_load((data_dir / "profile.yaml").read_text())
    assert (profile["name"], profile["kind"], profile["description"]) == ("Town Hall Services", "a town office",
                                                                           "a town office")


PG_URL = os.environ.get("SWITCHBOARD_TEST_PG_URL", "")


@pytest.mark.skipif(not PG_URL, reason='SWITCHBOARD_TEST_PG_URL is not set: run `eval "$(scripts/postgres.sh)"`')
async def test_init_on_postgresql(tmp_path, data_dir, capsys):
    """The same on PostgreSQL (the demo's Chinook there, as a business init has not seen under this name)."""
    _, docs = tiny_business(tmp_path)
    code = main(["init", "--database", PG_URL, "--docs", str(docs), "--name", "Record Shop", "--yes"])
    out = capsys.readouterr().out
    assert code == 0, out
    services = Services(Settings())
    assert services.settings.database_url == PG_URL and "albums" in services.profile.database
    assert services.route_training.counts()["schema"] >= 10
    triage = services.triage
    triage.use_llm = False
    decision = await triage.decide("Which artist has the most albums?", has_image=False)
    assert [s.agent for s in decision.subtasks] == ["sql"]
