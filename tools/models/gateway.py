"""Every model call passes through here: cache, budget, provider fallback, circuit breaker, ledger.

* **Cache** -- an identical request (model, messages, parameters) within the TTL is answered from
  SQLite and marked ``cached`` in the ledger (cost 0).
* **Budgets** -- per conversation and per UTC day, in money. A call that would exceed one is moved
  from the heavy to the light tier, or refused with a clear message; an alert is logged at 80%.
* **Fallback** -- a model's ``fallbacks`` (registry file) are tried in order when it times out,
  is rate limited (429), fails (5xx), answers malformed, or is not reachable. The client's own
  retries with backoff run first (``max_retries``).
* **Circuit breaker** -- after N consecutive failures a model is skipped for a cooldown.
* **Ledger** -- every call (model, version, tokens, cost, latency, cached, fallback notes) is
  persisted, which is what budgets are computed from.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from tools.models.ledger import Ledger, Limit, Refusal, Reservation, day_of
from tools.models.local_llm import LocalRuntimeUnavailable, check_fits
from tools.models.recording import message_dicts
from tools.models.registry import current_thread_id
from tools.models.values import AnswerSink, LedgerEntry, ModelSpec
from tools.observability import metrics, telemetry

if TYPE_CHECKING:
    from tools.models.registry import ModelHandle, ModelRegistry
    from tools.observability.audit import AuditTrail

log = logging.getLogger("switchboard.gateway")

class BudgetExceeded(RuntimeError):
    """A call would take a conversation or the day past its budget."""


class AllModelsFailed(RuntimeError):
    """The model and all its fallbacks failed or are cooling down."""


class ReviewDeclined(RuntimeError):
    """A reviewer declined a heavy-tier call and there is no light model to answer instead."""


# A reviewer's cost decision ("approve"/"reject") for the rest of the current node run: each
# node run is an asyncio task with its own context, so a resumed (re-run) node asks afresh.
_COST_DECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar("switchboard_cost_decision",
                                                                            default=None)


def failure_reason(exc: BaseException) -> str | None:
    """Why a provider call failed, if it is the kind another provider may not have; else None."""
    import httpx
    import openai

    if isinstance(exc, LocalRuntimeUnavailable):
        return "local runtime unavailable (its self-check failed)"
    if isinstance(exc, openai.RateLimitError):
        return "rate limited (429)"
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return f"server error ({exc.status_code})"
        if exc.status_code in (401, 403):
            return f"provider refused credentials ({exc.status_code})"
        return None
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return "malformed response"
    if isinstance(exc, ValueError) and "No generation chunks" in str(exc):  # langchain-core: a stream
        return "malformed response"                                          # with no parsable chunk
    if isinstance(exc, (ConnectionError, OSError)):
        return "connection failed"
    return None


@dataclass
class CircuitBreaker:
    failures_to_open: int
    cooldown_s: float
    _state: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (failures, opened_at)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_open(self, name: str) -> bool:
        with self._lock:
            count, opened = self._state.get(name, (0, 0.0))
            if count < self.failures_to_open:
                return False
            if time.monotonic() - opened >= self.cooldown_s:
                self._state[name] = (self.failures_to_open - 1, 0.0)  # half-open: one trial call
                return False
            return True

    def failure(self, name: str) -> None:
        with self._lock:
            count, _ = self._state.get(name, (0, 0.0))
            self._state[name] = (count + 1, time.monotonic())
            if count + 1 == self.failures_to_open:
                log.warning("circuit open for %s: %d consecutive failures; cooling down %.0fs",
                            name, count + 1, self.cooldown_s)

    def success(self, name: str) -> None:
        with self._lock:
            self._state.pop(name, None)


def cache_key(spec: ModelSpec, messages: list[BaseMessage], max_tokens: int, stop: list[str] | None) -> str:
    body = json.dumps([spec.name, spec.version, message_dicts(messages), max_tokens, stop or []],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def estimate_tokens(messages: list[BaseMessage]) -> int:
    """~4 characters a token: good enough to decide whether a call fits a budget."""
    return sum(len(str(m.content)) for m in messages) // 4 + 8


@dataclass(frozen=True)
class GatewayConfig:
    cache_ttl_s: int  # 0: no response cache
    local_ctx: int  # the local model's context window, to refuse a prompt that cannot fit
    breaker_failures: int
    breaker_cooldown_s: float
    budget_conversation_usd: float | None = None
    budget_day_usd: float | None = None
    review_cost_usd: float | None = None  # a heavy call past this conversation spend waits for a reviewer


class ModelGateway:
    """Built by the composition root with the registry (which model), the ledger (what calls
    cost) and the audit trail (shadow calls); bound to the registry so that
    :func:`call_model` finds it from a handle."""

    def __init__(self, registry: ModelRegistry, ledger: Ledger, audit: AuditTrail, config: GatewayConfig) -> None:
        self.registry = registry
        self.ledger = ledger
        self.audit = audit
        self.settings = config
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self._alerted: set[str] = set()
        self._shadows: set[asyncio.Task[None]] = set()

    # --- budgets ---------------------------------------------------------------------------
    def _limits(self, thread_id: str | None) -> list[Limit]:
        out = []
        if self.settings.budget_conversation_usd is not None and thread_id:
            out.append(Limit("conversation", thread_id, self.settings.budget_conversation_usd))
        if self.settings.budget_day_usd is not None:
            out.append(Limit("daily", day_of(time.time()), self.settings.budget_day_usd))
        return out

    async def _reserve(self, spec: ModelSpec, est: float, thread_id: str | None) -> Reservation | Refusal | None:
        """Hold ``est`` against every budget (atomically, across replicas: ``Ledger.reserve``);
        None when no budget applies or the call is free (no ledger query on this hot path)."""
        limits = self._limits(thread_id)
        if not limits or est <= 0:
            return None
        got = await asyncio.to_thread(self.ledger.reserve, est, limits)
        if isinstance(got, Reservation):
            for lim in limits:
                spent = got.spent_after[lim.scope]
                if spent >= 0.8 * lim.usd and f"{lim.scope}:{lim.key}" not in self._alerted:
                    self._alerted.add(f"{lim.scope}:{lim.key}")
                    log.warning("budget alert: %s spending $%.4f (with this call) is %.0f%% of $%.2f",
                                lim.scope, spent, 100 * spent / lim.usd, lim.usd)
        return got

    async def _within_budget(self, spec: ModelSpec, messages: list[BaseMessage], max_tokens: int,
                             thread_id: str | None, notes: list[str]) -> tuple[ModelSpec, Reservation | None]:
        """The model to call and its budget reservation: ``spec``, else the light tier when only
        that fits, else :class:`BudgetExceeded`."""
        tokens = estimate_tokens(messages)
        est = spec.cost(tokens, max_tokens)
        got = await self._reserve(spec, est, thread_id)
        if not isinstance(got, Refusal):
            return spec, got
        problem = (f"the {got.scope} budget of ${got.limit:.2f} would be exceeded "
                   f"(spent ${got.spent:.4f}, this call ≈ ${est:.4f})")
        if (light := self.registry.light_instead(spec)) is not None:
            got_light = await self._reserve(light, light.cost(tokens, max_tokens), thread_id)
            if not isinstance(got_light, Refusal):
                notes.append(f"budget: {spec.name} -> {light.name} ({problem})")
                log.warning("budget: moving %s to the light tier (%s): %s", spec.name, light.name, problem)
                return light, got_light
        log.warning("budget: refusing a call to %s: %s", spec.name, problem)
        raise BudgetExceeded(f"I can't run this request: {problem}.")

    # --- human review ----------------------------------------------------------------------
    def _cost_review(self, spec: ModelSpec, messages: list[BaseMessage], max_tokens: int,
                     thread_id: str | None, notes: list[str], *, agent: str, task: str,
                     subtask_id: str) -> ModelSpec:
        """Before a heavy-tier call that would take the conversation's spend past
        ``review_cost_usd``, pause the turn for a reviewer (``interrupt``, kind "cost"): approve
        -> this model, reject -> the light tier. Only inside a checkpointed graph run (direct
        calls, e.g. benchmarks, never pause). One decision covers the rest of the node's run."""
        limit = self.settings.review_cost_usd
        if limit is None or spec.tier != "heavy" or not thread_id:
            return spec
        from tools import review

        est = spec.cost(estimate_tokens(messages), max_tokens)
        spent = self.ledger.spent(thread_id=thread_id)
        mode = review.review_mode()
        if spent + est <= limit or mode == "off":
            return spec
        light = self.registry.light_instead(spec)
        decision = _COST_DECISION.get()
        if decision is None and mode == "refuse":  # a graph run that cannot pause: no reviewer, no approval
            decision = "reject"
        if decision is None:  # LangGraph re-runs a resumed node: this returns the reviewer's answer
            subtask = {"id": subtask_id, "agent": agent, "task": task}
            decision = review.ask(review.cost_payload(subtask, spec.name, est, spent, limit,
                                                      light.name if light else None)).action
            _COST_DECISION.set(decision)
        if decision == "approve":
            notes.append(f"review: a reviewer approved {spec.name} past the review limit of ${limit:.2f}")
            return spec
        who = "a reviewer" if mode == "interrupt" else "no reviewer can be asked in this run (no checkpointer), so it"
        if light is None:
            raise ReviewDeclined(f"{who} declined the call to {spec.name} and no light model can answer instead")
        notes.append(f"review: {who} declined {spec.name} past the review limit of ${limit:.2f}; "
                     f"{light.name} answered instead")
        return light

    async def _cached(self, key: str) -> tuple[str, int, int] | None:
        """The cached answer for ``key`` within the TTL (off the event loop), or None."""
        return await asyncio.to_thread(self.ledger.cached, key, self.settings.cache_ttl_s) if self.settings.cache_ttl_s > 0 else None

    # --- the call --------------------------------------------------------------------------
    async def call(self, handle: ModelHandle, messages: list[BaseMessage], *, agent: str, task: str,
                   max_tokens: int, stop: list[str] | None, subtask_id: str,
                   note: str = "", answer: AnswerSink | None = None) -> tuple[AIMessage, LedgerEntry]:
        """One model call. ``answer``: its text is the user's answer, and its tokens go there as they
        arrive (``agents/streaming.py``); other calls (a SQL query, triage, validation) stream only
        to LangGraph's ``messages`` mode, for the steps."""
        thread_id = current_thread_id()
        notes: list[str] = [note] if note else []
        # a cached answer is free: looked up before a budget or a cost review could refuse or pause it
        spec = handle.spec
        key = cache_key(spec, messages, max_tokens, stop)
        hit = await self._cached(key)
        reservation: Reservation | None = None
        if hit is None:
            spec = self._cost_review(handle.spec, messages, max_tokens, thread_id, notes, agent=agent, task=task,
                                     subtask_id=subtask_id)
            spec, reservation = await self._within_budget(spec, messages, max_tokens, thread_id, notes)
            if spec is not handle.spec:  # moved to another tier: that model's answer may be cached too
                key = cache_key(spec, messages, max_tokens, stop)
                hit = await self._cached(key)
        settled = False
        try:
            if hit is not None:
                return await self._answer_cached(hit, spec, agent, task, max_tokens, subtask_id, notes, thread_id, answer)
            msg, entry = await self._call_models(spec, messages, agent=agent, task=task, max_tokens=max_tokens,
                                                 stop=stop, subtask_id=subtask_id, notes=notes, answer=answer,
                                                 thread_id=thread_id)
            await asyncio.to_thread(self.ledger.record, entry, thread_id, reservation)
            settled = True
        finally:
            if reservation is not None and not settled:  # no call was made (or none succeeded): give it back
                self.ledger.release(reservation)
        metrics.record_model_call(entry)
        if self.settings.cache_ttl_s > 0 and not entry.note:
            await asyncio.to_thread(self.ledger.store, key, entry.model, str(msg.content), entry.tokens_in,
                                    entry.tokens_out, self.settings.cache_ttl_s)
        self._shadow(self.registry.specs[entry.model], messages, agent=agent, task=task, max_tokens=max_tokens,
                     stop=stop, subtask_id=subtask_id, champion=entry, thread_id=thread_id)
        return msg, entry

    async def _answer_cached(self, hit: tuple[str, int, int], spec: ModelSpec, agent: str, task: str,
                             max_tokens: int, subtask_id: str, notes: list[str], thread_id: str | None,
                             answer: AnswerSink | None) -> tuple[AIMessage, LedgerEntry]:
        """A cached answer: free, recorded as such, and sent to the answer stream at once."""
        content, t_in, t_out = hit
        entry = LedgerEntry(agent=agent, task=task, model=spec.name, model_version=spec.version,
                            tokens_in=t_in, tokens_out=t_out, cost_usd=0.0, latency_ms=0,
                            subtask_id=subtask_id, cached=True, note="; ".join(notes))
        await asyncio.to_thread(self.ledger.record, entry, thread_id)
        metrics.record_model_call(entry)
        with telemetry.model_call_span(spec, agent=agent, max_tokens=max_tokens, thread_id=thread_id,
                                       subtask_id=subtask_id, cached=True) as call:
            call.succeeded(entry)
        announce({"switchboard": "call", "subtask_id": subtask_id, "agent": agent, "model": spec.name,
                  "tier": spec.tier, "visible": answer is not None, "cached": True})
        if answer is not None:  # arrives at once
            await answer.cached(content)
        return AIMessage(content=content, response_metadata={"cached": True}), entry

    async def _call_models(self, spec: ModelSpec, messages: list[BaseMessage], *, agent: str, task: str,
                           max_tokens: int, stop: list[str] | None, subtask_id: str, notes: list[str],
                           answer: AnswerSink | None, thread_id: str | None) -> tuple[AIMessage, LedgerEntry]:
        """The model, else its fallbacks in order (a model cooling down is skipped): the first answer."""
        visible = answer is not None
        candidates = [spec.name, *spec.fallbacks]
        errors: list[str] = []
        runtime_error: Exception | None = None  # the local runtime's own message says how to fix it
        for name in candidates:  # grows when the local runtime is down (below)
            cand = self.registry.specs[name]
            if not self.registry.is_available(cand):
                continue
            if self.breaker.is_open(name):
                errors.append(f"{name}: cooling down after repeated failures")
                continue
            if cand.provider == "llamacpp":  # its context is Settings.local_ctx: refuse clearly, before loading it
                check_fits(estimate_tokens(messages), max_tokens, self.settings.local_ctx)
            started = time.monotonic()
            # a door streaming this part restarts it on a fallback: no half-answer of a failed model stays
            announce({"switchboard": "call", "subtask_id": subtask_id, "agent": agent, "model": name,
                      "tier": cand.tier, "visible": visible, "after": errors[-1] if errors else None})
            if answer is not None:
                await answer.start(name)
            # one span per provider attempt (a failed one says why; the next is the fallback)
            with telemetry.model_call_span(cand, agent=agent, max_tokens=max_tokens, thread_id=thread_id,
                                           subtask_id=subtask_id) as call:
                try:
                    full = await self._stream(self.registry.handle(name, role=agent), messages, max_tokens, stop,
                                              stream_config(subtask_id, agent, visible), answer)
                except Exception as exc:  # noqa: BLE001 - classified below; unknown kinds re-raise
                    reason = failure_reason(exc)
                    if reason is None:
                        raise
                    call.failed(reason)
                    if isinstance(exc, LocalRuntimeUnavailable):
                        runtime_error = exc  # remembered per process already: no breaker needed
                        # hosted models, if configured, still serve: same tier first
                        others = sorted((s for s in self.registry.available()
                                         if s.provider != "llamacpp" and s.name not in candidates),
                                        key=lambda s: s.tier != cand.tier)
                        candidates.extend(s.name for s in others)
                    else:
                        self.breaker.failure(name)
                    errors.append(f"{name}: {reason}")
                    log.warning("model %s failed (%s); %s", name, reason,
                                "trying fallback" if name != candidates[-1] else "no fallback left")
                    continue
                self.breaker.success(name)
                if errors:
                    notes.append("fallback after " + "; ".join(errors))
                msg, entry = self._account(cand, full, started, agent, task, subtask_id, notes)
                entry.fallback = bool(errors)
                call.succeeded(entry, full)
            return msg, entry
        if runtime_error is not None:
            raise runtime_error
        raise AllModelsFailed(
            f"no model could answer ({'; '.join(errors) or 'none available'}); please try again shortly"
        )

    # --- shadow mode -------------------------------------------------------------------------
    def _shadow(self, served: ModelSpec, messages: list[BaseMessage], *, agent: str, task: str,
                max_tokens: int, stop: list[str] | None, subtask_id: str, champion: LedgerEntry,
                thread_id: str | None) -> None:
        """If the served tier has a shadow challenger, let it answer a copy in the background.

        The task runs in an empty context (no graph config, no UI callbacks, no parent span), so
        nothing it does can reach the user; the turn never waits for it; its failures are logged
        and recorded, never raised. Its cost counts towards the daily budget, not the user's
        conversation budget."""
        challenger = self.registry.challenger_for(served.tier, "shadow")
        if challenger is None or challenger.name == served.name or champion.role != "serve":
            return
        coro = self._run_shadow(challenger, list(messages), agent, task, max_tokens, stop, subtask_id,
                                champion.call_id, thread_id)
        task_ = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._shadows.add(task_)
        task_.add_done_callback(self._shadows.discard)

    async def _run_shadow(self, spec: ModelSpec, messages: list[BaseMessage], agent: str, task: str,
                          max_tokens: int, stop: list[str] | None, subtask_id: str, shadow_of: str,
                          thread_id: str | None) -> None:
        started = time.monotonic()
        try:
            full = await self._stream(self.registry.handle(spec.name, role=agent), messages, max_tokens, stop)
            msg, entry = self._account(spec, full, started, agent, task, subtask_id, [f"shadow of {shadow_of}"])
            entry.role = "shadow"
            answer, error = str(msg.content), None
        except Exception as exc:  # noqa: BLE001 - a shadow never breaks anything; it is recorded
            entry = LedgerEntry(agent=agent, task=task, model=spec.name, model_version=spec.version, tokens_in=0,
                                tokens_out=0, cost_usd=0.0, latency_ms=round((time.monotonic() - started) * 1000),
                                subtask_id=subtask_id, note=f"shadow of {shadow_of}", role="shadow")
            answer, error = None, f"{type(exc).__name__}: {exc}"
            log.warning("shadow call to %s failed: %s", spec.name, error)
        try:
            await asyncio.to_thread(self.ledger.record, entry, None)
            row = {**entry.as_dict(), "error": error}
            await asyncio.to_thread(self.audit.record_call, row, thread_id=thread_id, role="shadow",
                                    shadow_of=shadow_of, answer=answer)
        except Exception:  # noqa: BLE001
            log.exception("could not record a shadow call to %s", spec.name)

    async def drain_shadows(self, timeout_s: float | None = None) -> None:
        """Wait for background shadow calls (shutdown, tests, benchmarks)."""
        if self._shadows:
            await asyncio.wait(set(self._shadows), timeout=timeout_s)

    @staticmethod
    async def _stream(handle: ModelHandle, messages: list[BaseMessage], max_tokens: int,
                      stop: list[str] | None, config: RunnableConfig | None = None,
                      answer: AnswerSink | None = None) -> Any:
        full = None
        async for chunk in handle.chat.astream(messages, config=config, stop=stop, max_tokens=max_tokens):
            full = chunk if full is None else full + chunk
            if answer is not None and isinstance(chunk.content, str) and chunk.content:
                await answer.token(chunk.content)
        if full is None or (not str(full.content) and not full.usage_metadata):
            raise json.JSONDecodeError("empty model response", "", 0)
        return full

    @staticmethod
    def _account(spec: ModelSpec, full: Any, started: float, agent: str, task: str, subtask_id: str,
                 notes: list[str]) -> tuple[AIMessage, LedgerEntry]:
        usage = full.usage_metadata or {}
        t_in, t_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        msg = AIMessage(content=str(full.content), usage_metadata=full.usage_metadata,
                        response_metadata=full.response_metadata)
        entry = LedgerEntry(
            agent=agent, task=task, model=spec.name, model_version=spec.version, tokens_in=t_in,
            tokens_out=t_out, cost_usd=round(spec.cost(t_in, t_out), 8),
            latency_ms=round((time.monotonic() - started) * 1000),
            replayed=bool((full.response_metadata or {}).get("replayed")), subtask_id=subtask_id,
            note="; ".join(notes),
        )
        log.info("model call agent=%s model=%s in=%d out=%d cost=%.6f ms=%d%s", agent, spec.name, t_in, t_out,
                 entry.cost_usd, entry.latency_ms, f" ({entry.note})" if entry.note else "")
        return msg, entry


ANSWER_TAG = "switchboard:answer"  # on a model call whose text is the user's answer


def stream_config(subtask_id: str, agent: str, visible: bool) -> RunnableConfig:
    """Tags and metadata for one call's stream: LangGraph's ``messages`` mode passes them with each
    token, so a consumer (``switchboard/lifecycle.py``, a ``langgraph-sdk`` client) knows which part
    a token belongs to and whether it is answer text."""
    return {"tags": [ANSWER_TAG] if visible else [],
            "metadata": {"switchboard_subtask": subtask_id, "switchboard_agent": agent, "switchboard_answer": visible}}


def announce(event: dict[str, Any]) -> None:
    """Tell a streaming consumer (LangGraph's ``custom`` mode) that a model call starts (which
    part, which model and tier). A no-op outside a graph run or when nobody streams."""
    try:
        from langgraph.config import get_stream_writer

        get_stream_writer()(event)
    except RuntimeError:  # not inside a graph run (benchmarks, direct calls)
        pass


async def call_model(
    handle: ModelHandle,
    messages: list[BaseMessage],
    *,
    agent: str,
    task: str,
    max_tokens: int = 256,
    stop: list[str] | None = None,
    subtask_id: str = "",
    note: str = "",
    escalated: bool = False,
    answer: AnswerSink | None = None,
) -> tuple[AIMessage, LedgerEntry]:
    """Call a model (streaming, so UIs see tokens) through the gateway: cache, budget, fallback,
    circuit breaker, and a ledger entry with tokens, cost and latency. ``answer``: the part's answer stream (its text is the user's answer). ``note`` (an escalation's
    reason, say) is kept with the call in the ledger."""
    gateway = handle.registry.gateway
    if gateway is None:
        raise RuntimeError("this model registry has no gateway: build it with switchboard.services.Services")
    msg, entry = await gateway.call(
        handle, messages, agent=agent, task=task, max_tokens=max_tokens, stop=stop, subtask_id=subtask_id,
        note=note, answer=answer,
    )
    entry.escalated = escalated
    return msg, entry
