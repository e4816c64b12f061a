"""One turn as a stream of typed events: what every door shows, from one place.

:meth:`switchboard.api.Switchboard.stream` runs the graph with LangGraph's own streaming
(``astream`` in the ``tasks``, ``custom`` and ``messages`` modes) and turns what it
yields into these events, with :class:`TurnEvents`:

* :class:`TriageDone` -- the turn's parts and why each went where it went;
* :class:`PartStarted` -- a specialist took a part; :class:`ModelCalled` -- it called a model
  (which one, which tier);
* :class:`Token` -- answer text of a part, as its model writes it (``agents/streaming.py``);
  :class:`StepToken` -- any model text of a part (a SQL query, too), for a door that shows steps;
* :class:`PartRestarted` -- drop what was shown of this part: a fallback or a retry answers again;
* :class:`PartFinished` -- its result and ledger; the tokens sent for it now add up to its answer;
* :class:`Notice` -- something the user should read before the answer (a cut-off turn finished first);
* :class:`Paused` (for review), :class:`Answer`, :class:`Failed` -- how the turn ended.

A door that streams text only needs ``Token`` and ``PartRestarted`` per part, and the answer's
layout (:func:`layout`): the text it shows then equals the answer ``ask()`` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from graphs.synthesis import heading
from tools.models.local_llm import LocalRuntimeUnavailable
from tools.observability.records import ledger_cost

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
        return ledger_cost(self.ledger)

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
                cost_usd=ledger_cost(calls),
                latency_ms=(r.get("evidence") or {}).get("elapsed_ms", 0),
                ok=bool(r.get("ok")),
                route_reason=s["reason"],
            )
        )
    return out


@dataclass(frozen=True)
class TriageDone:
    subtasks: list[dict[str, Any]]  # id, agent, task, reason, depends_on ... (agents/contract.py Subtask)
    log: dict[str, Any]
    answer_id: str = ""  # the audit trail's key for this turn's answer (feedback goes there)


@dataclass(frozen=True)
class PartStarted:
    subtask_id: str
    agent: str
    task: str


@dataclass(frozen=True)
class ModelCalled:
    subtask_id: str
    agent: str
    model: str
    tier: str
    answer: bool  # its text is the part's answer (else: a SQL query, a check)
    cached: bool = False  # answered from the response cache: no model ran


@dataclass(frozen=True)
class Token:
    subtask_id: str
    agent: str
    text: str


@dataclass(frozen=True)
class StepToken:
    subtask_id: str
    agent: str
    text: str


@dataclass(frozen=True)
class PartRestarted:
    subtask_id: str
    agent: str


@dataclass(frozen=True)
class PartFinished:
    subtask_id: str
    agent: str
    result: dict[str, Any]  # AgentResult
    ledger: list[dict[str, Any]]


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class Paused:
    """The turn waits for a reviewer (``turn.pending_review``); ``Switchboard.resume`` goes on."""

    turn: TurnResult


@dataclass(frozen=True)
class Answer:
    turn: TurnResult  # answer, answer_id, cost_usd, latency_ms, subtasks, ledger ...
    earlier: bool = False  # a cut-off turn of this thread, finished before the new question


@dataclass(frozen=True)
class Failed:
    message: str  # for the user: the cause and, where there is one, the fix
    code: str = "internal_error"
    turn: TurnResult | None = None


Event = (TriageDone | PartStarted | ModelCalled | Token | StepToken | PartRestarted | PartFinished | Notice
         | Paused | Answer | Failed)
STREAM_MODES = ["tasks", "custom", "messages"]


@dataclass
class _Part:
    agent: str
    text: str = ""  # the answer text sent so far
    attempt: str | None = None
    run: str | None = None  # the model run streaming step tokens
    echoes: set[str] = field(default_factory=set)  # runs of a wrapped model repeating them (record mode)


@dataclass
class TurnEvents:
    """Turns ``astream(..., stream_mode=STREAM_MODES)`` chunks of one run into events."""

    specialists: frozenset[str]
    skip: frozenset[str] = frozenset()  # task ids whose results a resumed run reuses (no new part)
    parts: dict[str, _Part] = field(default_factory=dict)

    def feed(self, mode: str, chunk: Any) -> list[Event]:
        if mode == "tasks":
            return self._task(chunk)
        if mode == "custom" and isinstance(chunk, dict) and "switchboard" in chunk:
            return self._custom(chunk)
        if mode == "messages":
            return self._message(*chunk)
        return []

    def _part(self, subtask_id: str, agent: str) -> _Part:
        return self.parts.setdefault(subtask_id, _Part(agent))

    def _task(self, task: dict[str, Any]) -> list[Event]:
        name = task.get("name")
        if task.get("id") in self.skip:
            return []
        finished = "result" in task or "error" in task
        if name == "triage" and finished:
            result = task.get("result") or {}
            meta = _unwrap(result.get("turn_meta")) or {}
            return [TriageDone(result.get("subtasks") or [], _unwrap(result.get("triage_log")) or {},
                               str(meta.get("answer_id") or ""))]
        if name not in self.specialists:
            return []
        if not finished:
            sub = (task.get("input") or {}).get("subtask") or {}
            part = self._part(sub.get("id", ""), str(name))
            part.run = None
            return [PartStarted(sub.get("id", ""), str(name), sub.get("task", ""))]
        if task.get("interrupts"):  # paused for review: the node runs again once decided
            return []
        update = task.get("result") or {}
        out: list[Event] = []
        for result in _unwrap(update.get("results")) or []:
            out += self.finish_part(result, _unwrap(update.get("ledger")) or [])
        return out

    def finish_part(self, result: dict[str, Any], ledger: list[dict[str, Any]]) -> list[Event]:
        """The part's finished answer: the rest of it as a token, or a restart and all of it when
        what was sent is not its beginning (an error message, a rewrite)."""
        part = self._part(result["subtask_id"], result["agent"])
        out: list[Event] = []
        final = result.get("answer") or ""
        if not final.startswith(part.text):
            out.append(PartRestarted(result["subtask_id"], result["agent"]))
            part.text = ""
        if rest := final[len(part.text):]:
            out.append(Token(result["subtask_id"], result["agent"], rest))
            part.text = final
        out.append(PartFinished(result["subtask_id"], result["agent"], result, ledger))
        return out

    def _custom(self, event: dict[str, Any]) -> list[Event]:
        kind, subtask, agent = event.get("switchboard"), str(event.get("subtask_id", "")), str(event.get("agent", ""))
        if kind == "call":
            self._part(subtask, agent).run = None  # a new call (a fallback): its run streams next
            return [ModelCalled(subtask, agent, str(event.get("model")), str(event.get("tier")),
                                bool(event.get("visible")), bool(event.get("cached")))]
        if kind != "token":
            return []
        part = self._part(subtask, agent)
        out: list[Event] = []
        if part.attempt != event.get("attempt"):  # another model answers this part now
            part.attempt = event.get("attempt")
            if part.text:
                out.append(PartRestarted(subtask, agent))
                part.text = ""
        part.text += str(event.get("text", ""))
        out.append(Token(subtask, agent, str(event.get("text", ""))))
        return out

    def _message(self, chunk: Any, meta: dict[str, Any]) -> list[Event]:
        subtask = meta.get("switchboard_subtask")
        agent = meta.get("langgraph_node")
        text = chunk.content if isinstance(getattr(chunk, "content", None), str) else ""
        if not subtask or agent not in self.specialists:
            return []
        part = self._part(str(subtask), str(agent))
        run = getattr(chunk, "id", None)
        if run is not None:  # a model wrapped in another streams each token twice, under two run ids
            if run in part.echoes:
                return []
            if part.run is None:
                part.run = run
            elif run != part.run:
                part.echoes.add(run)
                return []
        if getattr(chunk, "usage_metadata", None) or getattr(chunk, "chunk_position", None) == "last":
            part.run = None  # this call is done; a retry streams under a new id
        return [StepToken(str(subtask), str(agent), text)] if text else []


def _unwrap(value: Any) -> Any:
    """Values written with ``Overwrite`` arrive wrapped in it."""
    return getattr(value, "value", value)


def layout(subtasks: list[dict[str, Any]], texts: dict[str, str], labels: dict[str, str]) -> str:
    """The answer as the parts stand: one part is its text; several are laid out as
    ``graphs/synthesis.py`` ``compose`` lays them out, in the order they were asked."""
    if len(subtasks) == 1:
        return texts.get(subtasks[0]["id"], "")
    tasks = [s["task"] for s in subtasks]
    return "\n\n".join(f"**{heading(s['task'], tasks, s['agent'], labels)}**\n{texts[s['id']]}"
                       for s in subtasks if s["id"] in texts)


@dataclass
class TextStream:
    """The answer as plain text that only grows (an SSE stream, a terminal). One part streams as its
    tokens come; several stream each part once it and the parts asked before it are done, laid out
    as the final answer, so the streamed text equals the answer ``ask()`` returns."""

    labels: dict[str, str]
    subtasks: list[dict[str, Any]] | None = None
    texts: dict[str, str] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    sent: str = ""

    def feed(self, event: Event) -> str:
        """The text to send now (may be empty)."""
        if isinstance(event, TriageDone):
            self.subtasks = event.subtasks
        elif isinstance(event, PartRestarted):
            self.texts[event.subtask_id] = ""
        elif isinstance(event, Token):
            self.texts[event.subtask_id] = self.texts.get(event.subtask_id, "") + event.text
        elif isinstance(event, PartFinished):
            self.finished.add(event.subtask_id)
        else:
            return ""
        subtasks = self.subtasks or []
        if len(subtasks) == 1:
            return self._send(self.texts.get(subtasks[0]["id"], ""), restart=isinstance(event, PartRestarted))
        ready = []
        for s in subtasks:  # the parts asked first, as far as they are all done
            if s["id"] not in self.finished:
                break
            ready.append(s)
        return self._send(layout(subtasks, {s["id"]: self.texts.get(s["id"], "") for s in ready}, self.labels)
                          if ready else "")

    def _send(self, text: str, restart: bool = False) -> str:
        if text.startswith(self.sent):
            delta, self.sent = text[len(self.sent):], text
            return delta
        if restart and self.sent:  # a fallback answers again: what was sent cannot be taken back, so say so
            self.sent = ""
            return "\n\n(The model failed mid-answer; another one answers:)\n\n"
        return ""

    def rest(self, answer: str) -> str:
        """What is left to send of the finished answer."""
        if answer.startswith(self.sent):
            return answer[len(self.sent):]
        return ("\n\n" if self.sent else "") + answer
