"""Whole conversations against recorded exchanges with the real local model.

The cassettes in ``cassettes/`` were recorded from Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) running
in-process through llama.cpp (``SWITCHBOARD_RECORD_MODE=record uv run pytest tests/transcripts``).
In replay (the default) the same requests are answered from them; any request that differs —
a changed prompt, schema or summary — fails the test and names the request.
"""

from __future__ import annotations

from switchboard.api import Switchboard
from tests.asserts import has_number


async def ask(settings, question, thread="t", image=None):
    async with Switchboard.open(settings) as sb:
        return await sb.ask(question, thread_id=thread, image=image)


async def test_customers_from_brazil(cassette_settings):
    turn = await ask(cassette_settings, "How many customers are from Brazil?")
    assert [s.agent for s in turn.subtasks] == ["sql"]
    assert has_number(turn.answer, 5) and "Brazil" in turn.answer
    sql = turn.results[0]["evidence"]["sql"]
    assert "Brazil" in sql and "Customer" in sql
    assert len(turn.ledger) == 1  # no LLM for routing, none for synthesis


async def test_refund_policy_is_answered_from_the_help_center_with_a_citation(cassette_settings):
    turn = await ask(cassette_settings, "What's your refund policy?")
    assert [s.agent for s in turn.subtasks] == ["rag"]
    assert "14 days" in turn.answer
    assert "Sources: [1] Refund policy (https://help.chinook.example/articles/refunds)" in turn.answer
    assert len(turn.ledger) == 1


async def test_two_part_question_gets_both_parts_in_one_reply(cassette_settings):
    turn = await ask(cassette_settings, "How many customers are from Germany, and what are your support hours?")
    assert [s.agent for s in turn.subtasks] == ["sql", "rag"]
    assert has_number(turn.answer, 4)  # Chinook has 4 customers in Germany
    assert "09:00" in turn.answer and "18:00" in turn.answer
    assert turn.answer.index("Germany") < turn.answer.index("09:00")


async def test_pronoun_is_resolved_from_context_after_a_restart(cassette_settings):
    first = await ask(cassette_settings, "How many customers do we have?", thread="conv")
    assert has_number(first.answer, 59)
    # a second Switchboard.open over the same checkpoint file = the process restarted
    second = await ask(cassette_settings, "And how many of them are from Brazil?", thread="conv")
    assert [s.agent for s in second.subtasks] == ["sql"]
    assert has_number(second.answer, 5)
    assert "Brazil" in second.results[0]["evidence"]["sql"]
    assert "How many customers do we have?" in second.summary


async def test_image_and_sql_combined_request(cassette_settings):
    """Vision reads the invoice (offline OCR, no model call), SQL looks it up with what vision read."""
    from pathlib import Path

    image = Path(__file__).parents[1] / "fixtures" / "images" / "chinook_invoice_98.png"
    async with Switchboard.open(cassette_settings) as sb:
        paused = await sb.ask("Check this invoice against our records", thread_id="t", image=image)
        # SELECT * FROM Invoice reads the billing address: personal data found by the database's
        # profile (not in the configured list), so a reviewer approves the lookup first
        [pending] = paused.pending_review
        assert {"Invoice.BillingAddress", "Invoice.BillingPostalCode"} <= set(pending["columns"])
        turn = await sb.resume("t", "approve")
    assert [(s.agent, s.id) for s in turn.subtasks] == [("vision", "t1"), ("sql", "t2")]
    vision, sql = sorted(turn.results, key=lambda r: r["subtask_id"])
    assert vision["evidence"]["fields"]["total"] == "3.98"
    assert vision["evidence"]["fields"]["date"] == "2022-03-11"
    assert "InvoiceId = 98" in sql["evidence"]["sql"]
    assert sql["evidence"]["rows"][0][0] == 98 and sql["evidence"]["rows"][0][-1] == 3.98
    assert "Read from the image" in turn.answer and "In our records" in turn.answer
    # one model call in all: routing (image attached, clause most about it) and reading the
    # image (OCR, extract only) need none
    assert [e["agent"] for e in turn.ledger] == ["sql"]
    assert [s["route"] for s in turn.triage["subtasks"]] == ["records_check", "records_check"]


async def test_question_about_an_uploaded_receipt(cassette_settings):
    """Offline vision: OCR + layout rules read the fields, the local model answers from them."""
    from pathlib import Path

    image = Path(__file__).parents[1] / "fixtures" / "images" / "chinook_invoice_98.png"
    turn = await ask(cassette_settings, "What is the total on this receipt?", image=image)
    assert [s.agent for s in turn.subtasks] == ["vision"]
    assert "3.98" in turn.answer
    fields = turn.results[0]["evidence"]["fields"]
    assert (fields["merchant"], fields["currency"], fields["unreadable"]) == ("Chinook Music Store", "USD", [])
    assert turn.entities["receipt total"] == "3.98"
