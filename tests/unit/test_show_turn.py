"""The chat shows a thread that waits for a reviewer as a review, never as a failed turn."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from switchboard import lifecycle
from switchboard.api import ReviewPending, TurnResult
from switchboard.ui import turn_view

PENDING = [{"id": "i1", "kind": "sensitive_sql", "question": "Run this query?"}]


class View:  # what show_turn uses of a TurnView
    who, thread_id = "someone", "t"

    def __init__(self) -> None:
        self.shown: list[Any] = []
        self.failures: list[str] = []

    async def on(self, event: Any) -> None:
        self.shown.append(event)

    async def fail(self, message: str) -> None:
        self.failures.append(message)

    async def waiting_for_review(self, pending: list[dict[str, Any]]) -> None:
        await turn_view.send_review(self.thread_id, pending, self.who)


def paused_turn() -> TurnResult:
    return TurnResult(answer="waiting", thread_id="t", subtasks=[], triage={}, results=[], ledger=[], latency_ms=0,
                      pending_review=PENDING)


@pytest.mark.parametrize("earlier_paused", [False, True])
async def test_a_thread_waiting_for_review_shows_the_review_once(monkeypatch, earlier_paused):
    sent: list[tuple[str, list[dict[str, Any]]]] = []

    async def send_review(thread_id: str, pending: list[dict[str, Any]], who: Any) -> None:
        sent.append((thread_id, pending))

    monkeypatch.setattr(turn_view, "send_review", send_review)

    async def events() -> AsyncGenerator[lifecycle.Event, None]:
        if earlier_paused:  # a cut-off turn was finished first and paused: the view shows its review
            yield lifecycle.Paused(paused_turn())
        raise ReviewPending("t", PENDING)

    view = View()
    await turn_view.show_turn(events(), view)  # type: ignore[arg-type]
    assert view.failures == []
    assert sent == ([] if earlier_paused else [("t", PENDING)])
    assert [type(e).__name__ for e in view.shown] == (["Paused"] if earlier_paused else [])


async def test_another_users_thread_is_the_doors_refusal_not_a_failed_turn():
    """``Switchboard.stream`` refuses a thread that is not the asker's before reading it; the chat
    shows that as "not found" (app.py), never as "this turn failed" with the thread's id."""
    from switchboard.access import ThreadNotFound

    async def events() -> AsyncGenerator[lifecycle.Event, None]:
        raise ThreadNotFound("t")
        yield  # pragma: no cover - an async generator

    view = View()
    with pytest.raises(ThreadNotFound):
        await turn_view.show_turn(events(), view)  # type: ignore[arg-type]
    assert view.failures == [] and view.shown == []
