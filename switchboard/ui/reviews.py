"""Human review in the chat: a paused turn's request with its Approve / Reject (/ Edit SQL)
buttons, the buttons shown per thread (removed once one is clicked), and the saved message that
showed a request (to put its buttons back when a chat is resumed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import chainlit as cl

from switchboard.access import Principal
from switchboard.ui.markdown import review_markdown
from tools import review

REVIEW_ACTION = "review"
REVIEW_LABELS = {"approve": ("Approve", "check"), "reject": ("Reject", "x"), "edit": ("Edit SQL", "pencil")}
_review_actions: dict[str, list[cl.Action]] = {}  # thread id -> the buttons shown for its paused turn

NOT_A_REVIEWER = ("A reviewer other than you decides this request (separation of duties): over the HTTP API "
                  "(`POST /v1/threads/{id}/review`) or `switchboard resume`.")


async def send_review(thread_id: str, pending: list[dict[str, Any]], who: Principal, for_id: str | None = None) -> None:
    """Show what a paused turn waits for, with Approve / Reject (/ Edit SQL) buttons per review
    when ``who`` (the signed-in user) may decide it (single-user: their own conversation); with
    ``for_id``, put the buttons back on that (saved) review message instead."""
    if not who.may_decide(who.name):  # the UI shows only the user's own threads
        if for_id is None:
            await cl.Message(content=review_markdown(pending) + "\n\n" + NOT_A_REVIEWER,
                             metadata={"review": [r["id"] for r in pending]}).send()
        return
    actions = []
    for n, r in enumerate(pending, 1):
        for action in r.get("actions") or review.ACTIONS.get(str(r.get("kind")), ()):
            label, icon = REVIEW_LABELS[action]
            actions.append(cl.Action(name=REVIEW_ACTION, payload={"id": r["id"], "action": action}, icon=icon,
                                     label=f"{label} #{n}" if len(pending) > 1 else label))
    if for_id is not None:
        for action in actions:
            await action.send(for_id=for_id)
    else:
        await cl.Message(content=review_markdown(pending), actions=actions,
                         metadata={"review": [r["id"] for r in pending]}).send()
    _review_actions[thread_id] = actions


async def remove_review_buttons(thread_id: str, clicked: cl.Action) -> None:
    """A decision was applied: remove the buttons shown for the thread's paused turn (or, when
    this process did not show them, the one clicked)."""
    for shown_action in _review_actions.pop(thread_id, None) or [clicked]:
        await shown_action.remove()


def saved_review_message(thread: Mapping[str, Any], pending: list[dict[str, Any]]) -> str | None:
    """The id of the saved message that showed these reviews (buttons are not saved with it)."""
    wanted = {r["id"] for r in pending}
    for saved in reversed(thread.get("steps") or []):
        meta = saved.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta or "{}")
            except ValueError:
                continue
        if isinstance(meta, dict) and wanted <= set(meta.get("review") or []):
            return saved.get("id")
    return None
