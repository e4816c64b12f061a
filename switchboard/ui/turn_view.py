"""One turn in the chat: ``Switchboard.stream``'s events shown as Chainlit steps (triage, each
specialist) and a reply that grows as the parts' answers are generated, then the answer with its
footer -- or, when the turn paused for human review, the review request."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import chainlit as cl

from graphs.support import SPECIALISTS
from switchboard import lifecycle
from switchboard.access import Principal, ThreadNotFound
from switchboard.api import ReviewPending
from switchboard.lifecycle import TurnResult
from switchboard.ui.markdown import footer, specialist_markdown, triage_markdown
from switchboard.ui.reviews import send_review

log = logging.getLogger("switchboard.ui")
AGENT_TITLES = {cls.name: cls.title for cls in SPECIALISTS}
LABELS = {cls.name: cls.label for cls in SPECIALISTS}
WAITING_FOR_REVIEW = "This conversation is waiting for review: it continues once it is decided, then ask again."


class TurnView:
    """Shows one turn's events (``switchboard/lifecycle.py``) in the chat: a step for triage and
    for each specialist (its model's tokens as they come), and the reply, which grows with each
    part's answer tokens as they are generated and ends as the turn's answer with its footer."""

    RENDER_EVERY_S = 0.05  # a multi-part reply is re-laid-out at most this often while it streams

    def __init__(self, who: Principal, thread_id: str) -> None:
        self.who, self.thread_id = who, thread_id
        self.started = time.monotonic()
        # Chainlit wraps on_message in a "run" step under the user's message and parents the reply
        # to it; steps must share that parent, or the UI lists them after the reply.
        run = cl.context.current_step
        self.parent_id = run.id if run is not None else None
        self.steps: dict[str, cl.Step] = {}  # subtask id -> its step
        self.raw: dict[str, str] = {}  # subtask id -> its model text (a SQL query, too)
        self.texts: dict[str, str] = {}  # subtask id -> its answer text so far
        self.subtasks: list[dict[str, Any]] = []
        self.answer_id: str | None = None
        self.image_path: str | None = None
        self.reply: cl.Message | None = None
        self._rendered_at = 0.0
        self.step_text: dict[str, str] = {}  # subtask id -> its step's model text not sent yet
        self._held_since: float | None = None  # when the oldest of step_text was held back

    async def on(self, event: lifecycle.Event) -> None:
        await self._show(event)
        if self.step_text and (not isinstance(event, (lifecycle.StepToken, lifecycle.Token))
                               or time.monotonic() - (self._held_since or 0.0) >= self.RENDER_EVERY_S):
            await self._flush_steps()  # after the reply's token: the answer text goes out first

    async def _flush_steps(self) -> None:
        """Send the steps' model text held back (for ``RENDER_EVERY_S`` at most, or until the next
        event): the collapsed steps stream at a bounded rate, and a token that is also the reply's
        goes to the reply first, so the steps never delay the text the user reads."""
        pending, self.step_text, self._held_since = self.step_text, {}, None
        for subtask_id, text in pending.items():
            if (step := self.steps.get(subtask_id)) is not None:
                await step.stream_token(text)

    async def _show(self, event: lifecycle.Event) -> None:
        if isinstance(event, lifecycle.TriageDone):
            self.subtasks, self.answer_id = event.subtasks, event.answer_id or None
            step = cl.Step(name="Triage", type="tool", show_input=False, parent_id=self.parent_id)
            step.start = step.end = _now()  # sent once, finished: one message to the browser, not two
            step.output = triage_markdown(event.subtasks, event.log)
            await step.send()
        elif isinstance(event, lifecycle.PartStarted):
            title = AGENT_TITLES.get(event.agent, event.agent)
            if sum(1 for s in self.subtasks if s["agent"] == event.agent) > 1:
                title += f" · {event.subtask_id}"
            step = cl.Step(name=title, type="tool", show_input=False, parent_id=self.parent_id)
            step.start = _now()
            step.metadata = {"subtask": event.subtask_id, "agent": event.agent}
            self.steps[event.subtask_id], self.raw[event.subtask_id] = step, ""
            await step.send()
        elif isinstance(event, lifecycle.StepToken) and event.subtask_id in self.steps:
            self.raw[event.subtask_id] += event.text
            self.step_text[event.subtask_id] = self.step_text.get(event.subtask_id, "") + event.text
            self._held_since = self._held_since or time.monotonic()
            if time.monotonic() - self._held_since >= self.RENDER_EVERY_S:
                await self._flush_steps()
        elif isinstance(event, lifecycle.PartRestarted):
            self.texts[event.subtask_id] = ""
            if event.subtask_id in self.raw:
                self.raw[event.subtask_id] += "\n\n"  # another attempt: its text follows in the step
            await self._render(force=True)
        elif isinstance(event, lifecycle.Token):
            self.texts[event.subtask_id] = self.texts.get(event.subtask_id, "") + event.text
            if len(self.subtasks) == 1 and self.reply is not None:  # one part: the reply is its text
                await self.reply.stream_token(event.text)
            else:
                await self._render()
        elif isinstance(event, lifecycle.PartFinished):
            await self._part_finished(event)
            await self._render(force=True)
        elif isinstance(event, lifecycle.Notice):
            await cl.Message(content=event.text).send()
        elif isinstance(event, lifecycle.Paused):
            if self.reply is not None:
                await self.reply.remove()
            await send_review(self.thread_id, event.turn.pending_review, self.who)
        elif isinstance(event, lifecycle.Failed):
            await self.fail(event.message)
        elif isinstance(event, lifecycle.Answer):
            await self._answer(event.turn)

    async def _render(self, *, force: bool = False) -> None:
        """The reply as the parts stand, laid out like the final answer."""
        text = lifecycle.layout(self.subtasks, self.texts, LABELS)
        if not text:
            return
        if self.reply is None:
            self.reply = cl.Message(content=text, id=_message_id(self.answer_id))
            await self.reply.send()
            self._rendered_at = time.monotonic()
            return
        if force or time.monotonic() - self._rendered_at >= self.RENDER_EVERY_S:
            self.reply.content = text
            await self.reply.update()
            self._rendered_at = time.monotonic()

    async def _part_finished(self, event: lifecycle.PartFinished) -> None:
        step = self.steps.pop(event.subtask_id, None)
        if step is None:
            return
        r = event.result
        step.output = specialist_markdown(r, event.ledger, self.raw.get(event.subtask_id, ""))
        if r["agent"] == "vision" and self.image_path and (r.get("evidence") or {}).get("image"):
            step.elements = [cl.Image(path=self.image_path, name=Path(self.image_path).name, display="inline",
                                      size="medium")]
        await _finish(step, error=None if r.get("ok") else (r.get("error") or "failed"))

    async def _answer(self, turn: TurnResult) -> None:
        """The finished answer (exactly what ``ask`` returns) and its footer."""
        for step in self.steps.values():  # a part that did not report (a reused result): close its step
            await _finish(step)
        self.steps.clear()
        text = turn.answer + "\n\n*" + footer(turn.cost_usd, time.monotonic() - self.started, turn.ledger) + "*"
        if self.reply is None:
            self.reply = cl.Message(content=text, id=_message_id(turn.answer_id or self.answer_id))
            await self.reply.send()
        else:
            self.reply.content = text
            await self.reply.update()

    async def fail(self, message: str) -> None:
        """The turn could not be answered: close its steps and say why, instead of an answer."""
        for step in [*self.steps.values()]:
            if step.end is None:
                step.output = (step.output + "\n\n" if step.output else "") + f"Stopped: {message}"
                await _finish(step, error=message)
        self.steps.clear()
        if self.reply is not None:
            await self.reply.remove()
            self.reply = None
        await cl.ErrorMessage(content=message).send()

    async def waiting_for_review(self, pending: list[dict[str, Any]]) -> None:
        """The conversation waits for a reviewer, so this question was not asked: say so, with
        the review's buttons."""
        await cl.Message(content=WAITING_FOR_REVIEW).send()
        await send_review(self.thread_id, pending, self.who)

    async def stopped(self) -> None:
        """The user pressed stop: close the open steps; what was shown of the reply stays."""
        for step in [*self.steps.values()]:
            step.output = (step.output + "\n\n" if step.output else "") + "Stopped."
            await _finish(step)
        self.steps.clear()


def _message_id(answer_id: str | None) -> str | None:
    """The reply's id is its answer's audit id, so a thumbs up/down lands in the audit trail."""
    return str(uuid.UUID(answer_id)) if answer_id else None


async def show_turn(events: AsyncIterator[lifecycle.Event], view: TurnView) -> None:
    """Show a turn's events; a cut-off turn finished first gets its own reply, then the new one.
    A failure is shown and logged, and the session goes on."""
    paused = False
    try:
        async for event in events:
            await view.on(event)
            paused = paused or isinstance(event, lifecycle.Paused)
            if isinstance(event, lifecycle.Answer) and event.earlier:
                view = TurnView(view.who, view.thread_id)
    except ReviewPending as exc:  # the thread waits for a reviewer: not a failure of this turn
        if not paused:  # (a cut-off turn finished first and paused: its review is shown already)
            await view.waiting_for_review(exc.pending)
    except ThreadNotFound:  # not this user's conversation: the door says so, as it refuses anything else
        raise
    except asyncio.CancelledError:
        # the stop button cancels this task wherever it waits: while it shows an event (a message
        # saved, sent), the turn's generator is suspended, and only closing it stops its model calls
        # now (and before ``Switchboard.stop`` closes the turn), not when it is garbage-collected
        if (aclose := getattr(events, "aclose", None)) is not None:
            await aclose()
        await view.stopped()
        raise
    except Exception as exc:  # noqa: BLE001 - the UI boundary: show what broke, keep the session
        log.exception("turn failed on thread %s", view.thread_id)
        await view.fail(f"Sorry, this turn failed ({type(exc).__name__}: {exc}).")


def _now() -> str:
    from chainlit.utils import utc_now

    return utc_now()


def _unwrap(value: Any) -> Any:
    """Values written with ``Overwrite`` arrive wrapped in it."""
    return getattr(value, "value", value)


async def _finish(step: cl.Step, error: Any = None) -> None:
    step.end = _now()
    if error:
        step.is_error = True
    await step.update()
