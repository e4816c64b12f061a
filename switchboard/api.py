"""The Python door: embed Switchboard in a bot in a few lines.

    from switchboard.api import Switchboard

    async with Switchboard.open() as sb:
        turn = await sb.ask("How many customers are from Brazil?", thread_id="chat-42")
        print(turn.answer)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from langchain_core.messages import AIMessage
from langgraph.types import Command

from graphs.state import Context, SupportState, turn_policy
from graphs.support import build_support_graph, turn_input
from graphs.synthesis import compose, remember
from switchboard.access import Access, Principal, ReviewForbidden, ThreadNotFound
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings
from tools import review
from tools.models.local_llm import LocalRuntimeUnavailable
from tools.observability.audit import build_turn_record
from tools.review import ReviewError  # noqa: F401 - re-exported: what resume() raises for a bad decision
from tools.vision.images import stash_local_image, uploads_dir

# re-exported: what the ownership and review checks raise (switchboard/access.py)
__all__ = ["NoPendingReview", "ReviewError", "ReviewForbidden", "ReviewPending", "Switchboard", "ThreadNotFound",
           "TurnResult"]

log = logging.getLogger("switchboard.api")

RUNTIME_UNAVAILABLE = LocalRuntimeUnavailable.code


def runtime_failure(results: list[dict[str, Any]]) -> str | None:
    """The message to answer as an error when every part of a turn failed and a model runtime was
    unavailable (its message names the cause and the fix); None when any part answered."""
    if not results or any(r.get("ok") for r in results):
        return None
    for r in results:
        if (r.get("evidence") or {}).get("error_code") == RUNTIME_UNAVAILABLE:
            return str(r.get("answer") or "")
    return None


class ReviewPending(RuntimeError):
    """The thread's last turn is paused for human review: resume it before asking again."""

    def __init__(self, thread_id: str, pending: list[dict[str, Any]]) -> None:
        super().__init__(f"conversation {thread_id!r} is waiting for review ({len(pending)} pending): "
                         "approve, edit or reject it first")
        self.thread_id, self.pending = thread_id, pending


class NoPendingReview(LookupError):
    """A resume for a thread that is not paused."""


@dataclass
class SubtaskReport:
    id: str
    agent: str
    task: str
    model: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: int
    ok: bool
    route_reason: str


@dataclass
class TurnResult:
    answer: str
    thread_id: str
    subtasks: list[SubtaskReport]
    triage: dict[str, Any]
    results: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    latency_ms: int
    summary: str = ""
    entities: dict[str, str] = field(default_factory=dict)
    answer_id: str = ""  # the audit trail's key for this answer: pass it to Switchboard.feedback()
    # a paused turn: the interrupts awaiting a reviewer, {"id", "kind", "question", ...} (tools/review.py);
    # `answer` then says what is awaited, and Switchboard.resume() continues the turn
    pending_review: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return bool(self.pending_review)

    @property
    def error(self) -> str | None:
        """Why the turn could not be answered at all: every part failed because a model runtime is
        unavailable (the local runtime's self-check failed, say). The message names the cause and
        the fix; the doors answer it as an error (CLI exit 1, HTTP 503, the chat UI's error)."""
        return runtime_failure(self.results)

    @property
    def cost_usd(self) -> float:
        return round(sum(e["cost_usd"] for e in self.ledger), 8)

    def as_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "thread_id": self.thread_id,
            "subtasks": [
                {k: v for k, v in asdict(s).items() if k in
                 ("agent", "task", "model", "tokens_in", "tokens_out", "cost_usd", "latency_ms")}
                for s in self.subtasks
            ],
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "llm_calls": len(self.ledger),
            "pending_review": self.pending_review,
            "error": self.error,
        }


def report_subtasks(state: dict[str, Any]) -> list[SubtaskReport]:
    ledger = state.get("ledger") or []
    results = {r["subtask_id"]: r for r in state.get("results") or []}
    out = []
    for s in state.get("subtasks") or []:
        calls = [e for e in ledger if e.get("subtask_id") == s["id"]]
        r = results.get(s["id"], {})
        out.append(
            SubtaskReport(
                id=s["id"],
                agent=s["agent"],
                task=s["task"],
                model=calls[-1]["model"] if calls else None,
                tokens_in=sum(e["tokens_in"] for e in calls),
                tokens_out=sum(e["tokens_out"] for e in calls),
                cost_usd=round(sum(e["cost_usd"] for e in calls), 8),
                latency_ms=(r.get("evidence") or {}).get("elapsed_ms", 0),
                ok=bool(r.get("ok")),
                route_reason=s["reason"],
            )
        )
    return out


class Switchboard:
    """Every method acts for a principal (``switchboard/access.py``): by default this process's
    local one (``Settings.principal``); a door that authenticates people passes theirs. A thread
    owned by someone else raises :class:`ThreadNotFound`, like one that does not exist."""

    def __init__(self, graph: Any, services: Services, principal: Principal | None = None) -> None:
        self.graph = graph
        self.services = services
        self.principal = principal or Principal.local(services.settings)
        self.access = Access(services.audit)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Switchboard]:
        settings = settings or Settings()
        services = Services(settings)
        async with open_checkpointer(settings) as saver:
            yield cls(build_support_graph(services, checkpointer=saver), services)

    async def ask(
        self,
        question: str,
        *,
        thread_id: str | None = None,
        image: str | Path | None = None,
        policy: str | None = None,
        principal: Principal | None = None,
    ) -> TurnResult:
        """Answer one turn. A turn that pauses for human review comes back with ``pending_review``
        set (continue it with :meth:`resume`); asking again on a paused thread raises
        :class:`ReviewPending`. A turn that a crash left part-way is finished first (its answer
        goes into the conversation and the audit trail), so no question is silently dropped.
        A ``thread_id`` owned by another principal raises :class:`ThreadNotFound`."""
        fresh = thread_id is None
        thread_id = thread_id or uuid.uuid4().hex
        await self.access.check_turn(self.graph, thread_id, principal or self.principal)
        if not fresh:  # a new id has no state: nothing paused, nothing cut off
            snapshot = await self.graph.aget_state(_config(thread_id))
            if pending := review.pending_reviews(snapshot):
                raise ReviewPending(thread_id, pending)
            if _cut_off(snapshot):
                log.warning("thread %s has an unfinished turn (crash?): finishing it before the new one", thread_id)
                await self.finish_cut_off(snapshot, thread_id)
        if image:  # the graph opens only uploads: a local caller's file is copied in (tools/vision/images.py)
            image = await asyncio.to_thread(stash_local_image, image, uploads_dir(self.services.settings.data_dir))
        started = time.monotonic()
        state = await self.graph.ainvoke(
            turn_input(question, str(image) if image else None),
            config=_config(thread_id),
            context=Context(policy=policy or self.services.settings.routing_policy),
        )
        return await self._turn_result(state, thread_id, started)

    async def _continue(self, snapshot: Any, thread_id: str, graph_input: Any) -> TurnResult:
        """Run a stopped turn on from its checkpoint -- a reviewer's ``Command``, or ``None`` after
        a crash -- under the routing policy it started with."""
        policy = turn_policy(snapshot.values, self.services.settings.routing_policy)
        started = time.monotonic()
        state = await self.graph.ainvoke(graph_input, config=_config(thread_id), context=Context(policy=policy))
        return await self._turn_result(state, thread_id, started)

    # --- human review (tools/review.py): a turn paused by interrupt() -------------------------
    async def pending_reviews(self, thread_id: str, *, principal: Principal | None = None) -> list[dict[str, Any]]:
        """What the thread's paused turn waits for: ``[{"id": interrupt id, "kind", "question", ...}]``
        (``sensitive_sql``: ``sql``, ``columns``; ``cost``: ``model``, ``estimate_usd``, ``spent_usd``,
        ``limit_usd``); empty when nothing is paused. Its owner, admins and reviewers may look."""
        await self.access.check_see_reviews(self.graph, thread_id, principal or self.principal)
        return review.pending_reviews(await self.graph.aget_state(_config(thread_id)))

    async def resume(self, thread_id: str, decision: dict[str, Any] | str = "approve", *,
                     interrupt_id: str | None = None, principal: Principal | None = None) -> TurnResult:
        """Continue a paused turn with a reviewer's decision (``Command(resume={id: value})``).

        ``decision`` is ``"approve"``/``"reject"``, ``{"action": "approve"|"reject"|"edit", "sql": ...}``
        (an approval runs the query the reviewer was shown; an edit runs ``sql``), or a map
        ``{interrupt id: decision}``. It applies to ``interrupt_id``'s review, else to every pending
        one (an edit needs exactly one). The turn may pause again (another review) or finish.
        Raises :class:`NoPendingReview` if nothing waits, :class:`ReviewError` for a bad decision,
        :class:`ThreadNotFound` / :class:`ReviewForbidden` when ``principal`` may not decide it
        (separation of duties, ``switchboard/access.py``). Each decision goes to the audit trail."""
        who = principal or self.principal
        owner = await self.access.check_review(self.graph, thread_id, who)
        snapshot = await self.graph.aget_state(_config(thread_id))
        pending = review.pending_reviews(snapshot)
        if not pending:
            raise NoPendingReview(f"conversation {thread_id!r} has no turn waiting for review")
        values = review.resume_map(pending, decision, interrupt_id)
        await record_decisions(self.services.audit, thread_id, pending, values, who, owner)
        return await self._continue(snapshot, thread_id, Command(resume=values))

    async def _turn_result(self, state: dict[str, Any], thread_id: str, started: float) -> TurnResult:
        pending: list[dict[str, Any]] = []
        if "__interrupt__" in state:  # paused: the values are the last checkpoint's, not an answer
            snapshot = await self.graph.aget_state(_config(thread_id))
            pending = review.pending_reviews(snapshot)
            state = dict(snapshot.values)
        return TurnResult(
            answer=review.paused_answer(pending) if pending else state.get("answer", ""),
            thread_id=thread_id,
            subtasks=report_subtasks(state),
            triage=state.get("triage_log") or {},
            results=state.get("results") or [],
            ledger=state.get("ledger") or [],
            latency_ms=round((time.monotonic() - started) * 1000),
            summary=state.get("summary", ""),
            entities=state.get("entities") or {},
            answer_id="" if pending else (state.get("turn_meta") or {}).get("answer_id", ""),
            pending_review=pending,
        )

    def feedback(self, answer_id: str, score: int, comment: str | None = None) -> None:
        """Record a user's thumbs up (+1) or down (-1) on an answer, for `switchboard compare`."""
        self.services.audit.record_feedback(answer_id, score, comment)

    # --- crash recovery: a turn whose process died part-way (not a human-review pause) ---------
    async def unfinished(self, thread_id: str, *, principal: Principal | None = None) -> bool:
        """Did this thread's last turn stop part-way (process killed, crash)?

        True when its last checkpoint still has nodes to run and none of them waits on a human
        (``interrupt()``): a paused turn is resumed with a decision, not recovered."""
        await self.access.check_read(self.graph, thread_id, principal or self.principal)
        return _cut_off(await self.graph.aget_state(_config(thread_id)))

    async def finish_cut_off(self, snapshot: Any, thread_id: str) -> TurnResult | None:
        """Finish a cut-off turn, or close it as failed so the conversation moves on.

        A turn that already failed to finish ``MAX_RECOVERY_ATTEMPTS`` times (each attempt is
        counted before it runs, so an attempt that kills the process counts too), or whose
        attempt raises, is closed as failed: its answer says so and keeps what its finished
        specialists found. Returns the finished turn, or None when it was closed."""
        finished, _ = await RecoveryGuard(self.graph, self.services).finish(
            snapshot, thread_id, lambda: self._continue(snapshot, thread_id, None))
        return finished

    async def recover(self, thread_id: str, *, principal: Principal | None = None) -> TurnResult:
        """Finish a turn that stopped part-way, from its last checkpoint (LangGraph input ``None``).

        Only unfinished work runs again: a specialist whose result was checkpointed before the
        crash (a pending write of the interrupted step) is not called again, and the turn's audit
        record is written once. Raises LookupError if the thread has no unfinished turn (or is not
        this principal's: :class:`ThreadNotFound`)."""
        await self.access.check_turn(self.graph, thread_id, principal or self.principal)
        snapshot = await self.graph.aget_state(_config(thread_id))
        if not _cut_off(snapshot):
            raise LookupError(f"thread {thread_id!r} has no unfinished turn to recover")
        finished = await self.finish_cut_off(snapshot, thread_id)  # it may pause for review, too
        if finished is None:  # closed as failed: report the closing answer
            return await self._turn_result(dict((await self.graph.aget_state(_config(thread_id))).values),
                                           thread_id, time.monotonic())
        return finished


MAX_RECOVERY_ATTEMPTS = 2
T = TypeVar("T")


class RetryFailed(RuntimeError):
    """A door's retry of a cut-off turn failed and the door has already shown why."""


class RecoveryGuard:
    """Bounds how often a cut-off turn is retried, and closes it as failed when it must give up.

    Attempts are counted per (thread, checkpoint) in the audit database before each attempt, so
    one that kills the process (a native crash, an OOM kill) still counts, and any door or
    replica sees the count. A retry that gets further leaves a new checkpoint and starts afresh."""

    def __init__(self, graph: Any, services: Services) -> None:
        self.graph, self.services = graph, services

    async def may_try(self, snapshot: Any, thread_id: str) -> bool:
        checkpoint = (snapshot.config.get("configurable") or {}).get("checkpoint_id", "")
        attempts = await asyncio.to_thread(self.services.audit.count_recovery_attempt, thread_id, checkpoint)
        return attempts <= MAX_RECOVERY_ATTEMPTS

    async def finish(self, snapshot: Any, thread_id: str, run: Callable[[], Awaitable[T]]) -> tuple[T | None, str | None]:
        """Finish the cut-off turn with ``run()`` (each door runs it its own way), unless it already
        failed to finish ``MAX_RECOVERY_ATTEMPTS`` times; a run that raises closes it as failed.
        Returns ``(run's result, None)``, or ``(None, the closing answer)`` when it was closed."""
        if not await self.may_try(snapshot, thread_id):
            return None, await self.close_failed(snapshot, thread_id, "it stopped part-way again when it was retried")
        try:
            return await run(), None
        except Exception as exc:  # noqa: BLE001 - closed as failed and logged: never the same crash twice
            log.exception("thread %s: the unfinished turn failed again; closing it as failed", thread_id)
            why = "it failed again when it was retried"
            if not isinstance(exc, RetryFailed):  # a door that already showed the failure names no exception
                why += f" ({type(exc).__name__})"
            return None, await self.close_failed(await self.graph.aget_state(_config(thread_id)), thread_id, why)

    async def close_failed(self, snapshot: Any, thread_id: str, why: str) -> str:
        """End the cut-off turn with an answer that says it failed and keeps what finished parts
        found (including results of the interrupted step); write its audit record. Returns it."""
        values = dict(snapshot.values or {})
        done = {r["subtask_id"] for r in values.get("results") or []}
        pending = [r for task in snapshot.tasks if isinstance(task.result, dict)
                   for r in task.result.get("results") or [] if r["subtask_id"] not in done]
        results = [*(values.get("results") or []), *pending]
        question = " ".join(str(values.get("question") or "").split())[:120]
        text = f"Your previous message (\u201c{question}\u201d) could not be answered: {why}."
        if any(r.get("ok") for r in results):
            text += "\n\nWhat was found before it stopped:\n\n" + compose(values.get("subtasks") or [],
                                                                             [r for r in results if r.get("ok")])
        meta = values.get("turn_meta") or {}
        state = {**values, "results": results, "answer": text}
        update: dict[str, Any] = {"answer": text, "results": pending,
                                  "messages": [AIMessage(content=text, id=meta.get("answer_id"))],
                                  **remember(cast(SupportState, state),  # the checkpointed values
                                             max_chars=self.services.settings.summary_max_chars)}
        await self.graph.aupdate_state(_config(thread_id), update, as_node="remember")
        if meta:
            record = build_turn_record(state, thread_id, meta.get("turn_index", 0))
            try:
                await asyncio.to_thread(self.services.audit.record_turn, record)
            except Exception:  # noqa: BLE001 - the conversation must move on without the audit database
                log.exception("audit: could not record the closed turn on %s", thread_id)
        log.warning("thread %s: closed a cut-off turn as failed (%s)", thread_id, why)
        return text


async def record_decisions(audit: Any, thread_id: str, pending: list[dict[str, Any]],
                           values: dict[str, dict[str, Any]], who: Principal, owner: str | None) -> None:
    """Write each review decision, with who made it, to the audit trail (before it runs)."""
    kinds = {r["id"]: r.get("kind") for r in pending}
    for interrupt_id, value in values.items():
        await asyncio.to_thread(audit.record_review_decision, thread_id=thread_id, interrupt_id=interrupt_id,
                                action=str(value.get("action")), reviewer=who.name, owner=owner, door=who.door,
                                kind=kinds.get(interrupt_id), sql=value.get("sql"))


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def _cut_off(snapshot: Any) -> bool:
    """The last checkpoint still has nodes to run and none waits on a human: a crash cut it off."""
    return bool(snapshot.next) and not snapshot.interrupts
