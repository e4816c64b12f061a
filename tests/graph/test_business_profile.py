"""The business profile is what every prompt says about the business: under another business's
profile, database and help center, no prompt of any specialist (triage's LLM, SQL, RAG, vision,
the generalist) names the demo store, and each names the business it answers for."""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image, ImageDraw

from agents.profile import BusinessProfile, ProfileError
from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tests.stacks import LOCAL
from tools.models.scripted import ScriptedChatModel, by_system_prompt

KENNEL = REPO_ROOT / "examples" / "kennel"
NAME = "Paws & Stay Kennels"


def triage_reply(messages) -> str:
    request = str(messages[-1].content).lower()
    return "sql" if "how many" in request else "rag" if "cancel" in request else "general"


@pytest.fixture
def kennel(make_settings, tmp_path) -> tuple[Switchboard, ScriptedChatModel]:
    settings = make_settings(profile_file=KENNEL / "profile.yaml", database_url=f"sqlite:///{KENNEL / 'kennel.sqlite'}",
                             helpcenter_dir=KENNEL / "docs", collection="kennel",
                             triage_threshold=0.999)  # every clause asks triage's LLM too
    services = Services(settings)
    fake = ScriptedChatModel(respond=by_system_prompt({
        "SQLite SELECT": "SQL: SELECT COUNT(*) FROM Dogs\nANSWER: We have {result} dogs.",
        "help-center passages": "Cancel 48 hours before check-in for a full refund [1].",
        "support assistant of": "Hello! How can I help?",
        "route one customer-support": triage_reply,
        "image a customer uploaded": "The receipt's total is 42.00.",
    }))
    services.registry.use_chat_model(LOCAL, fake)
    return Switchboard(build_support_graph(services, checkpointer=InMemorySaver()), services), fake


def receipt(tmp_path: Path) -> Path:
    image = Image.new("RGB", (640, 200), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 40), "GROOMING RECEIPT", fill="black", font_size=36)
    draw.text((20, 110), "TOTAL 42.00", fill="black", font_size=36)
    path = tmp_path / "receipt.png"
    image.save(path)
    return path


async def test_no_prompt_names_the_demo_store_under_another_business(kennel, tmp_path):
    board, fake = kennel
    turns = [await board.ask("How many dogs do we have?", thread_id="k1"),
             await board.ask("Can I cancel my booking?", thread_id="k2"),
             await board.ask("Hello there!", thread_id="k3"),
             await board.ask("What is the total on this receipt?", thread_id="k4", image=receipt(tmp_path))]
    assert "We have 15 dogs." in turns[0].answer  # the kennel's own database answered
    assert any("cancellations-and-refunds" in str(c) for c in turns[1].results[0]["evidence"]["citations"])
    systems = [str(call[0].content) for call in fake.calls]
    kinds = {kind for s in systems for kind, phrase in (
        ("triage", "route one customer-support"), ("sql", "SELECT query"), ("rag", "help-center passages"),
        ("vision", "image a customer uploaded"), ("general", "support assistant of")) if phrase in s}
    assert kinds == {"triage", "sql", "rag", "vision", "general"}  # every prompt was seen
    for call in fake.calls:
        text = "\n".join(str(m.content) for m in call)
        assert "Chinook" not in text and "music" not in text.lower(), text[:300]
    assert all(NAME in s for s in systems)  # every prompt names the business it answers for
    assert all("the database of Paws & Stay Kennels, a dog boarding kennel" in s
               for s in systems if "SELECT query" in s)


def test_the_demo_profile_is_the_default_and_a_written_one_replaces_it(make_settings):
    settings = make_settings()
    assert Services(settings).profile.name == "Chinook"
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "profile.yaml").write_text((KENNEL / "profile.yaml").read_text())
    assert Services(make_settings()).profile.name == NAME  # what `switchboard init` writes is used


@pytest.mark.parametrize(("text", "message"), [
    ("name: X\nkind: a shop\n", "'description' is empty"),
    ("name: X\nkind: a shop\ndescription: sells things\ncolour: red\n", "unknown profile field(s) ['colour']"),
    ("name: X\nkind: a shop\ndescription: |\n  two\n  lines\n", "one line"),
    (f"name: {'x' * 400}\nkind: a shop\ndescription: d\n", "at most 300 characters"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
])
def test_a_bad_profile_is_refused_with_what_to_fix(tmp_path, text, message):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        BusinessProfile.load(path)
    assert message in str(info.value)


def test_settings_init_wrote_sit_below_the_environment(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "settings.yaml").write_text(f"database_url: sqlite:///{KENNEL / 'kennel.sqlite'}\ncollection: kennel\n")
    assert Settings(data_dir=data).collection == "kennel"
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(data))
    assert Settings().database_url.endswith("kennel.sqlite")
    monkeypatch.setenv("SWITCHBOARD_COLLECTION", "other")
    assert Settings().collection == "other"  # the environment wins
    (data / "settings.yaml").write_text("openai_api_key: sk-nope\n")
    with pytest.raises(ValueError, match="may only set database_url"):
        Settings()
