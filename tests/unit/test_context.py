"""Which subtasks get the conversation summary: only those that lean on earlier turns."""

from __future__ import annotations

import pytest

from agents.base import context_block, needs_context


@pytest.mark.parametrize("task", [
    "And how many of them are from Brazil?", "what about 2024?", "Which of those spent the most?",
    "Is it refundable?", "same for Germany", "and in 2023?",
])
def test_follow_ups_need_context(task):
    assert needs_context(task)


@pytest.mark.parametrize("task", [
    "How many customers are from Brazil?", "What's your refund policy?", "What are your support hours?",
    "Which artist has the most albums?",
])
def test_standalone_questions_do_not(task):
    assert not needs_context(task)


def _handoff(task, evidence=()):
    return {"subtask": {"id": "t1", "task": task}, "summary": "User: How many customers do we have? | sql: 59.",
            "entities": {"customer": "Luís Gonçalves"}, "evidence": list(evidence), "image_path": None,
            "policy": "balanced"}


def test_context_block_carries_summary_and_entities_only_for_follow_ups():
    block = context_block(_handoff("and how many of them are from Brazil?"))
    assert "Conversation so far:\nUser: How many customers do we have?" in block
    assert "customer = Luís Gonçalves" in block
    assert context_block(_handoff("What are your support hours?")) == ""


def test_evidence_from_dependencies_is_always_passed_on():
    ev = {"agent": "vision", "ok": True, "answer": "total: 3.98 USD"}
    block = context_block(_handoff("Check this invoice against our records", [ev]))
    assert "Found by the vision agent: total: 3.98 USD" in block and "Conversation so far" not in block
