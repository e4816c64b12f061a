"""Which subtasks get the conversation summary: only those that lean on earlier turns."""

from __future__ import annotations

import pytest

from agents import rag
from agents.base import context_block
from agents.followup import looks_like_follow_up, needs_context


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


@pytest.mark.parametrize("task", [
    "Which of these spent the most?", "And its price?", "so how many in 2023?", "same as the previous one",
])
def test_one_word_list_for_triage_rag_and_context(task):
    """A follow-up is a follow-up everywhere: the specialist gets the summary, triage keeps it with
    the previous turn's agent, and RAG folds the last turn into its search query."""
    assert looks_like_follow_up(task) and needs_context(task)
    handoff = {"summary": "User: What is your refund policy? | rag: 14 days.", "subtask": {"task": task}}
    assert rag.search_query(handoff, task) == f"User: What is your refund policy? | rag: 14 days. {task}"


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
