"""Record/replay: a recorded exchange replays identically without the real model; a missing
recording fails loudly naming the request; secrets never reach the cassette."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from tests.fakes import ScriptedChatModel
from tools.models.recording import Cassette, MissingRecording, RecordingChatModel, scrub


def _wrap(path, mode, inner):
    return RecordingChatModel(model_id="m", mode=mode, cassette=Cassette.load(path), inner_factory=lambda: inner)


def test_record_then_replay_without_calling_the_model(tmp_path):
    path = tmp_path / "c.yaml"
    real = ScriptedChatModel(respond=lambda msgs: f"echo: {msgs[-1].content}")
    msgs = [SystemMessage("sys"), HumanMessage("hello\nworld")]
    recorded = _wrap(path, "record", real).invoke(msgs, max_tokens=10)
    assert recorded.content == "echo: hello\nworld" and len(real.calls) == 1

    def boom(_msgs):
        raise AssertionError("replay must not call the model")

    replayed = _wrap(path, "replay", ScriptedChatModel(respond=boom)).invoke(msgs, max_tokens=10)
    assert replayed.content == recorded.content
    assert replayed.usage_metadata["output_tokens"] == recorded.usage_metadata["output_tokens"]
    text = path.read_text()
    assert "content: |" in text or "hello\n" in text  # multi-line text stays readable


def test_streaming_replay_yields_the_recorded_text(tmp_path):
    path = tmp_path / "c.yaml"
    real = ScriptedChatModel(respond=lambda msgs: "There are 5 customers.")
    list(_wrap(path, "record", real).stream([HumanMessage("q")]))
    chunks = list(_wrap(path, "replay", real).stream([HumanMessage("q")]))
    assert "".join(str(c.content) for c in chunks) == "There are 5 customers."
    assert len([c for c in chunks if c.content]) > 1  # streamed in pieces, like a real model


def test_missing_recording_names_the_request(tmp_path):
    path = tmp_path / "c.yaml"
    _wrap(path, "record", ScriptedChatModel(respond=lambda m: "a")).invoke([HumanMessage("recorded question")])
    with pytest.raises(MissingRecording, match="never asked question"):
        _wrap(path, "replay", ScriptedChatModel(respond=lambda m: "a")).invoke([HumanMessage("never asked question")])


def test_identical_requests_replay_in_recorded_order(tmp_path):
    path = tmp_path / "c.yaml"
    answers = iter(["first", "second"])
    rec = _wrap(path, "record", ScriptedChatModel(respond=lambda m: next(answers)))
    rec.invoke([HumanMessage("same")])
    rec.invoke([HumanMessage("same")])
    rep = _wrap(path, "replay", ScriptedChatModel(respond=lambda m: "x"))
    assert [rep.invoke([HumanMessage("same")]).content for _ in range(2)] == ["first", "second"]


def test_secrets_are_scrubbed_from_cassettes(tmp_path, monkeypatch):
    key = "sk-test-" + "abcdefghijklmnopqrstuvwxyz0123"  # built at run time: scripts/scan_secrets.py
    monkeypatch.setenv("OPENAI_API_KEY", key)
    path = tmp_path / "c.yaml"
    leaky = ScriptedChatModel(respond=lambda m: f"key {key} and Bearer " + "abcdef0123456789xyz")
    _wrap(path, "record", leaky).invoke([HumanMessage("Authorization: Bearer " + "z" * 16)])
    text = path.read_text()
    assert "sk-test" not in text and "abcdef0123456789xyz" not in text and "zzzzzzzz" not in text
    assert "[REDACTED]" in text


def test_scrub_leaves_ordinary_text_alone():
    assert scrub("There are 5 customers from Brazil.") == "There are 5 customers from Brazil."
