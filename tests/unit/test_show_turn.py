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
