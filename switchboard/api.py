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
from pathlib import Path
from typing import Any, TypeVar, cast

from langchain_core.messages import AIMessage
from langgraph.types import Command

from graphs.state import Context, SupportState, turn_policy
from graphs.support import SPECIALISTS, build_support_graph, turn_input
from graphs.synthesis import compose, remember
from switchboard import lifecycle
from switchboard.access import Principal, ReviewForbidden, ThreadNotFound
from switchboard.lifecycle import RUNTIME_UNAVAILABLE, TurnResult, report_subtasks
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings
from switchboard.turn_locks import ConversationBusy  # noqa: F401 - re-exported: a turn refused because another runs
from tools import review
from tools.observability.audit import build_turn_record
from tools.review import ReviewError  # noqa: F401 - re-exported: what resume() raises for a bad decision
from tools.vision.images import stash_local_image, uploads_dir

# re-exported: what the ownership and review checks raise (switchboard/access.py)
__all__ = ["NoPendingReview", "ReviewError", "ReviewForbidden", "ReviewPending", "Switchboard", "ThreadNotFound",
           "TurnResult"]

log = logging.getLogger("switchboard.api")

class ReviewPending(RuntimeError):
    """The thread's last turn is paused for human review: resume it before asking again."""

    def __init__(self, thread_id: str, pending: list[dict[str, Any]]) -> None:
        super().__init__(f"conversation {thread_id!r} is waiting for review ({len(pending)} pending): "
                         "approve, edit or reject it first")
        self.thread_id, self.pending = thread_id, pending


class NoPendingReview(LookupError):
    """A resume for a thread that is not paused."""


class Switchboard:
    """Every method acts for a principal (``switchboard/access.py``): by default this process's
    local one (``Settings.principal``); a door that authenticates people passes theirs. A thread
    owned by someone else raises :class:`ThreadNotFound`, like one that does not exist."""

    def __init__(self, graph: Any, services: Services, principal: Principal | None = None) -> None:
        self.graph = graph
        self.services = services
        self.principal = principal or Principal.local(services.settings)
        self.access = services.access
        services.run_setup_hook()

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Switchboard]:
        settings = settings or Settings()
        services = Services(settings)
        try:
            async with open_checkpointer(settings) as saver:
                yield cls(build_support_graph(services, checkpointer=saver), services)
        finally:
            await services.turn_locks.aclose()  # the PostgreSQL locks' connection, if one was opened

    async def ask(
        self,
        question: str,
        *,
        thread_id: str | None = None,
        image: str | Path | None = None,
        policy: str | None = None,
        principal: Principal | None = None,
    ) -> TurnResult:
        """Answer one turn: :meth:`stream`, collected. A turn that pauses for human review comes
        back with ``pending_review`` set (continue it with :meth:`resume`); asking again on a paused
        thread raises :class:`ReviewPending`. A turn that a crash left part-way is finished first
        (its answer goes into the conversation and the audit trail), so no question is silently
        dropped. A ``thread_id`` owned by another principal raises :class:`ThreadNotFound`."""
        return await collect(self.stream(question, thread_id=thread_id, image=image, policy=policy,
                                          principal=principal, progress=False))

    async def stream(
        self,
        question: str,
        *,
        thread_id: str | None = None,
        image: str | Path | None = None,
        policy: str | None = None,
        principal: Principal | None = None,
        progress: bool = True,
    ) -> AsyncIterator[lifecycle.Event]:
        """Answer one turn as events (``switchboard/lifecycle.py``): the triage decision, each part
        as it starts, its answer tokens as its model writes them, each part as it finishes, and how
        the turn ended (``Answer``, ``Paused`` or ``Failed``, each with the ``TurnResult``).
        ``progress=False`` yields only notices and how each turn ended (what :meth:`ask` needs):
        LangGraph then streams nothing, which saves about a millisecond of CPU a turn.
        Stopping the iteration (``aclose``, a cancelled task) cancels the turn's model calls; the
        checkpoint keeps what finished, and :meth:`stop` closes the turn when its asker stopped it."""
        fresh = thread_id is None
        thread_id = thread_id or uuid.uuid4().hex
        await self.access.check_turn(self.graph, thread_id, principal or self.principal)
        async with self.services.turn_locks.hold(thread_id):  # one turn at a time, on every replica
            async for event in self._stream_locked(question, thread_id, fresh, image, policy, progress):
                yield event

    async def _stream_locked(self, question: str, thread_id: str, fresh: bool, image: str | Path | None,
                             policy: str | None, progress: bool) -> AsyncIterator[lifecycle.Event]:
        if not fresh:  # a new id has no state: nothing paused, nothing cut off
            snapshot = await self._head(thread_id)
            if pending := review.pending_reviews(snapshot):
                raise ReviewPending(thread_id, pending)
            if _cut_off(snapshot):
                log.warning("thread %s has an unfinished turn (crash?): finishing it before the new one", thread_id)
                async for event in RecoveryGuard(self.graph, self.services).finish_events(
                        snapshot, thread_id, lambda: self._run(None, thread_id, turn_policy(
                            snapshot.values, self.services.settings.routing_policy), earlier=True,
                            progress=progress)):
                    yield event
                if pending := review.pending_reviews(await self.graph.aget_state(_config(thread_id))):
                    raise ReviewPending(thread_id, pending)  # the finished turn paused: decide it first
        if image:  # the graph opens only uploads: a local caller's file is copied in (tools/vision/images.py)
            image = await asyncio.to_thread(stash_local_image, image, uploads_dir(self.services.settings.data_dir))
        async for event in self._run(turn_input(question, str(image) if image else None), thread_id,
                                     policy or self.services.settings.routing_policy, progress=progress):
            yield event

    async def _run(self, graph_input: Any, thread_id: str, policy: str, *, earlier: bool = False,
                   skip: frozenset[str] = frozenset(), progress: bool = True) -> AsyncIterator[lifecycle.Event]:
        """Run the graph on ``graph_input`` (a question, a reviewer's ``Command``, or ``None`` to go
        on from a checkpoint) and yield its events; the last is how the turn ended. Without
        ``progress``, only that last one: LangGraph streams no mode, so no token is passed on."""
        started = time.monotonic()
        config = _config(thread_id)
        events = lifecycle.TurnEvents(frozenset(s.name for s in SPECIALISTS), skip=skip)
        stream = self.graph.astream(graph_input, config=config, context=Context(policy=policy),
                                    stream_mode=lifecycle.STREAM_MODES if progress else [])
        try:
            async for mode, chunk in stream:
                for event in events.feed(mode, chunk):
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            await stream.aclose()  # cancels the model calls still running; the checkpoint keeps what finished
            raise
        turn = await self._turn_result(await self.graph.aget_state(config), thread_id, started)
        if turn.paused:
            yield lifecycle.Paused(turn)
        elif turn.error:
            yield lifecycle.Failed(turn.error, RUNTIME_UNAVAILABLE, turn)
        else:
            yield lifecycle.Answer(turn, earlier=earlier)

    async def stop(self, thread_id: str, *, principal: Principal | None = None) -> str | None:
        """Close a turn its asker stopped (the chat's stop button, an HTTP client that went away)
        once its stream was cancelled: it ends with what its finished parts found, so the next
        message starts afresh instead of finishing it. (A turn cut off by a crash or a shutdown is
        left as it is: the next message finishes it.) Returns the closing answer, if there was one."""
        await self.access.check_turn(self.graph, thread_id, principal or self.principal)
        async with self.services.turn_locks.hold(thread_id):
            snapshot = await self._head(thread_id)
            if not _cut_off(snapshot):
                return None
            return await RecoveryGuard(self.graph, self.services).close_failed(snapshot, thread_id,
                                                                              "you stopped it")

    async def _continue(self, snapshot: Any, thread_id: str, graph_input: Any) -> TurnResult:
        """Run a stopped turn on from its checkpoint -- a reviewer's ``Command``, or ``None`` after
        a crash -- under the routing policy it started with."""
        policy = turn_policy(snapshot.values, self.services.settings.routing_policy)
        return await collect(self._run(graph_input, thread_id, policy, skip=_reused_tasks(snapshot), progress=False))

    # --- human review (tools/review.py): a turn paused by interrupt() -------------------------
    async def pending_reviews(self, thread_id: str, *, principal: Principal | None = None) -> list[dict[str, Any]]:
        """What the thread's paused turn waits for: ``[{"id": interrupt id, "kind", "question", ...}]``
        (``sensitive_sql``: ``sql``, ``columns``; ``cost``: ``model``, ``estimate_usd``, ``spent_usd``,
        ``limit_usd``); empty when nothing is paused. Its owner, admins and reviewers may look."""
        await self.access.check_see_reviews(self.graph, thread_id, principal or self.principal)
        return review.pending_reviews(await self.graph.aget_state(_config(thread_id)))

    async def resume(self, thread_id: str, decision: dict[str, Any] | str = "approve", *,
                     interrupt_id: str | None = None, principal: Principal | None = None) -> TurnResult:
        """Continue a paused turn with a reviewer's decision (``Command(resume={id: value})``):
        :meth:`resume_stream`, collected.

        ``decision`` is ``"approve"``/``"reject"``, ``{"action": "approve"|"reject"|"edit", "sql": ...}``
        (an approval runs the query the reviewer was shown; an edit runs ``sql``), or a map
        ``{interrupt id: decision}``. It applies to ``interrupt_id``'s review, else to every pending
        one (an edit needs exactly one). The turn may pause again (another review) or finish.
        Raises :class:`NoPendingReview` if nothing waits, :class:`ReviewError` for a bad decision,
        :class:`ThreadNotFound` / :class:`ReviewForbidden` when ``principal`` may not decide it
        (separation of duties, ``switchboard/access.py``). Each decision goes to the audit trail."""
        return await collect(self.resume_stream(thread_id, decision, interrupt_id=interrupt_id, principal=principal,
                                                progress=False))

    async def resume_stream(self, thread_id: str, decision: dict[str, Any] | str = "approve", *,
                            interrupt_id: str | None = None, principal: Principal | None = None,
                            progress: bool = True) -> AsyncIterator[lifecycle.Event]:
        """:meth:`resume` as events, like :meth:`stream` (``progress`` as there)."""
        who = principal or self.principal
        owner = await self.access.check_review(self.graph, thread_id, who)
        async with self.services.turn_locks.hold(thread_id):  # two reviewers at once: one decides
            snapshot = await self.graph.aget_state(_config(thread_id))
            pending = review.pending_reviews(snapshot)
            if not pending:
                raise NoPendingReview(f"conversation {thread_id!r} has no turn waiting for review")
            values = review.resume_map(pending, decision, interrupt_id)
            await record_decisions(self.services.audit, thread_id, pending, values, who, owner)
            async for event in self._run(Command(resume=values), thread_id,
                                         turn_policy(snapshot.values, self.services.settings.routing_policy),
                                         skip=_reused_tasks(snapshot), progress=progress):
                yield event

    async def _head(self, thread_id: str) -> Any:
        """The thread's last checkpoint, with a stranded turn (:func:`_stranded`) given back its
        last step, so the cut-off-turn path finishes it like any other. Call under the turn lock."""
        snapshot = await self.graph.aget_state(_config(thread_id))
        if not _stranded(snapshot):
            return snapshot
        log.warning("thread %s: a turn started under an earlier graph has nothing scheduled; finishing it", thread_id)
        # as if a specialist had just finished: its edge schedules synthesize, which sends whatever
        # subtask is not done yet, or composes the answer, the summary and the audit record
        await self.graph.aupdate_state(_config(thread_id), {}, as_node=SPECIALISTS[0].name)
        return await self.graph.aget_state(_config(thread_id))

    async def _turn_result(self, snapshot: Any, thread_id: str, started: float) -> TurnResult:
        """The turn as its last checkpoint has it: answered, or paused for review."""
        pending = review.pending_reviews(snapshot)
        state = dict(snapshot.values or {})
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
        snapshot = await self.graph.aget_state(_config(thread_id))
        return _cut_off(snapshot) or _stranded(snapshot)

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
        async with self.services.turn_locks.hold(thread_id):
            snapshot = await self._head(thread_id)
            if not _cut_off(snapshot):
                raise LookupError(f"thread {thread_id!r} has no unfinished turn to recover")
            finished = await self.finish_cut_off(snapshot, thread_id)  # it may pause for review, too
            if finished is None:  # closed as failed: report the closing answer
                return await self._turn_result(await self.graph.aget_state(_config(thread_id)), thread_id,
                                               time.monotonic())
            return finished


MAX_RECOVERY_ATTEMPTS = 2
EARLIER_NOTICE = "First, the answer to your previous question, which was interrupted:"
T = TypeVar("T")


async def collect(events: AsyncIterator[lifecycle.Event]) -> TurnResult:
    """The result of a streamed turn: how it ended (not a cut-off turn finished before it)."""
    turn: TurnResult | None = None
    async for event in events:
        if isinstance(event, lifecycle.Answer) and not event.earlier or isinstance(
                event, (lifecycle.Paused, lifecycle.Failed)):
            turn = event.turn
    if turn is None:
        raise RuntimeError("the turn ended without an answer")
    return turn


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
        """Finish the cut-off turn with ``run()``, unless it already failed to finish
        ``MAX_RECOVERY_ATTEMPTS`` times; a run that raises closes it as failed.
        Returns ``(run's result, None)``, or ``(None, the closing answer)`` when it was closed."""
        if not await self.may_try(snapshot, thread_id):
            return None, await self._give_up(snapshot, thread_id)
        try:
            return await run(), None
        except Exception as exc:  # noqa: BLE001 - closed as failed and logged: never the same crash twice
            return None, await self._failed_again(exc, thread_id)

    async def finish_events(self, snapshot: Any, thread_id: str,
                            run: Callable[[], AsyncIterator[lifecycle.Event]]) -> AsyncIterator[lifecycle.Event]:
        """:meth:`finish` for a door that streams: a notice, then the cut-off turn's own events
        (its ``Answer`` has ``earlier`` set), or a notice with the closing answer."""
        if not await self.may_try(snapshot, thread_id):
            yield lifecycle.Notice(await self._give_up(snapshot, thread_id))
            return
        yield lifecycle.Notice(EARLIER_NOTICE)
        try:
            async for event in run():
                yield event
        except Exception as exc:  # noqa: BLE001 - closed as failed and logged: never the same crash twice
            yield lifecycle.Notice(await self._failed_again(exc, thread_id))

    async def _give_up(self, snapshot: Any, thread_id: str) -> str:
        return await self.close_failed(snapshot, thread_id, "it stopped part-way again when it was retried")

    async def _failed_again(self, exc: Exception, thread_id: str) -> str:
        log.exception("thread %s: the unfinished turn failed again; closing it as failed", thread_id, exc_info=exc)
        why = "it failed again when it was retried"
        if not isinstance(exc, RetryFailed):  # a caller that already showed the failure names no exception
            why += f" ({type(exc).__name__})"
        return await self.close_failed(await self.graph.aget_state(_config(thread_id)), thread_id, why)

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
        await self.graph.aupdate_state(_config(thread_id), update, as_node="synthesize")
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


def _reused_tasks(snapshot: Any) -> frozenset[str]:
    """Tasks of a stopped turn that finished: going on, LangGraph reuses their results."""
    return frozenset(t.id for t in snapshot.tasks if t.result is not None and not t.interrupts)


def _stranded(snapshot: Any) -> bool:
    """A turn that triage started and that never got its answer, with nothing left scheduled: a
    checkpoint an earlier version of the graph left when a crash cut it off before a step that no
    longer exists (``join`` and ``remember`` before ``synthesize`` took them over). The state says
    so whatever the nodes are called: triage numbers the turn, the answer step counts it done."""
    values = snapshot.values or {}
    meta = values.get("turn_meta") or {}
    return (not snapshot.next and not snapshot.tasks and not snapshot.interrupts and "turn_index" in meta
            and meta["turn_index"] == len(values.get("turns") or []) + values.get("omitted_turns", 0))


def _cut_off(snapshot: Any) -> bool:
    """The last checkpoint's step did not close and nothing waits on a human: a crash cut it off.
    A step whose nodes all finished (their writes saved) before the crash shows no ``next`` (the
    head's state applies those writes) but still its ``tasks``: the nodes after it never ran."""
    return bool(snapshot.next or snapshot.tasks) and not snapshot.interrupts
