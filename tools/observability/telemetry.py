"""OpenTelemetry tracing: a span per turn, per graph node and per model call.

A two-part turn is one trace::

    switchboard.turn                  (gen_ai.conversation.id = the thread)
    ├── triage
    ├── sql
    │   └── chat <model>              (GenAI attributes: model, operation, token usage, cost, cached)
    ├── rag
    │   └── chat <model>
    └── synthesize

**Off by default, and then free**: spans go to OpenTelemetry's global tracer provider, which is
a no-op unless the host process installed one (then Switchboard's spans join its traces).
``SWITCHBOARD_OTEL_EXPORTER=console`` prints finished spans to stderr; ``otlp`` sends them over
OTLP/HTTP to ``SWITCHBOARD_OTEL_ENDPOINT`` or, when that is empty, to the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (headers from
``OTEL_EXPORTER_OTLP_HEADERS``). :func:`configure` runs once per process (the graph builder calls
it); tests swap in their own provider with :func:`use_tracer_provider`.

**The turn span** is opened by the graph itself, so every door (CLI, Python API, HTTP server,
Chainlit, LangGraph server) gets it: the first node of a run starts it, ``synthesize`` ends it
with the answer, and a node that raises ends it as failed. LangGraph runs each node in its own task, so the nodes of
one run find their turn by the run's ``RunControl`` (one per ``invoke``/``stream`` call) and the
namespace of the subgraph they run in. The turn also feeds the turn metrics (count, errors,
latency) in :mod:`tools.observability.metrics`.

**No text by default**: spans carry names, ids, models, counts and costs, never prompts, answers
or the user's question.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from tools.observability import metrics

if TYPE_CHECKING:
    from tools.observability.records import ModelCall as CallRecord
    from tools.observability.records import ModelInfo

log = logging.getLogger("switchboard.telemetry")

SCOPE = "switchboard"
TURN_SPAN = "switchboard.turn"
MAX_OPEN_TURNS = 1024  # runs abandoned between nodes (a consumer that stopped streaming) are dropped past this

# gen_ai.provider.name: the well-known values of the GenAI conventions where one exists
_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "llamacpp": "llama.cpp",
              "openai_compatible": "openai_compatible", "fake": "fake"}
_IN_PROCESS = {"llamacpp", "fake"}  # a model in this process: INTERNAL span kind, as the conventions allow

_lock = threading.Lock()
_provider: TracerProvider | None = None  # None: OpenTelemetry's global provider (no-op unless installed)
_tracer: Tracer | None = None
_configured: tuple[str, str, str] | None = None


# --- setup -----------------------------------------------------------------------------------


def tracer() -> Tracer:
    global _tracer
    if _tracer is None:
        _tracer = (_provider or trace.get_tracer_provider()).get_tracer(SCOPE)
    return _tracer


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Send Switchboard's spans to ``provider`` (tests: a fresh SDK provider with an in-memory
    exporter); ``None`` goes back to the global provider. Unlike OpenTelemetry's global provider,
    this may be swapped any number of times."""
    global _provider, _tracer
    with _lock:
        _provider, _tracer = provider, None


def configure(exporter: str, endpoint: str = "", service_name: str = "switchboard") -> None:
    """Install ``exporter`` ("off", "console" or "otlp"), once per process (later calls are no-ops).

    ``off`` installs nothing. ``console``/``otlp`` build an SDK provider with ``service_name``;
    it also becomes the global provider when none is installed yet, so other instrumentation in
    the process exports through the same pipeline."""
    global _configured
    wanted = (exporter, endpoint, service_name)
    if wanted[0] == "off":
        return
    with _lock:
        if _configured is not None:
            if _configured != wanted:
                log.warning("tracing is already configured as %s; ignoring %s", _configured, wanted)
            return
        _configured = wanted
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = SDKTracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":  # stderr: stdout is the CLI's answer (`ask --json`)
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = otlp_traces_endpoint(endpoint)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        log.info("tracing: OTLP/HTTP to %s", url or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                 or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "the OTLP default (localhost:4318)")
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    use_tracer_provider(provider)


def otlp_traces_endpoint(base: str) -> str | None:
    """``SWITCHBOARD_OTEL_ENDPOINT`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (``http://collector:4318``): the traces path is added unless it is already there. Empty:
    ``None``, so the exporter reads the standard OTEL_* variables itself."""
    base = base.strip()
    if not base:
        return None
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


# --- turns -----------------------------------------------------------------------------------


@dataclass
class _Turn:
    span: Span
    context: otel_context.Context
    anchor: Any  # the run's RunControl: held so its id() is not reused while the turn is open
    started: float = field(default_factory=time.monotonic)
    ended: bool = False


_turns: OrderedDict[tuple[int, str], _Turn] = OrderedDict()
_current_turn: ContextVar[_Turn | None] = ContextVar("switchboard_turn", default=None)


def _run_key() -> tuple[tuple[int, str], Any] | None:
    """Which graph run (and which invocation of this graph, when it runs as a subgraph) the
    calling node belongs to; ``None`` outside a graph run."""
    from langgraph.runtime import get_runtime

    try:
        runtime = get_runtime()
    except RuntimeError:
        return None
    control = getattr(runtime, "control", None)
    if control is None:
        return None
    ns = getattr(getattr(runtime, "execution_info", None), "checkpoint_ns", "") or ""
    return (id(control), ns.rpartition("|")[0]), control


def _thread_id() -> str | None:
    from langgraph.config import get_config

    try:
        return (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:
        return None


def _open_turn() -> _Turn | None:
    found = _run_key()
    if found is None:
        return None
    key, anchor = found
    with _lock:
        turn = _turns.get(key)
        if turn is not None:
            return turn
        attributes: dict[str, Any] = {}
        if thread := _thread_id():
            attributes = {"gen_ai.conversation.id": str(thread), "switchboard.thread_id": str(thread)}
        span = tracer().start_span(TURN_SPAN, attributes=attributes)
        turn = _Turn(span, trace.set_span_in_context(span), anchor)
        _turns[key] = turn
        stale = [k for k in list(_turns)[: max(0, len(_turns) - MAX_OPEN_TURNS)]]
        dropped = [_turns.pop(k) for k in stale]
    for old in dropped:  # never finished: no metrics, whatever its latency would have been
        old.span.set_status(Status(StatusCode.ERROR, "abandoned"))
        _finish(old, error=None, count=False)
    return turn


def _finish(turn: _Turn, *, error: BaseException | None, cancelled: bool = False, count: bool = True) -> None:
    with _lock:
        if turn.ended:
            return
        turn.ended = True
        for key, value in list(_turns.items()):
            if value is turn:
                del _turns[key]
    if cancelled:
        turn.span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif error is not None:  # the exception itself is an event on the node span that raised it
        turn.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        turn.span.set_attribute("error.type", type(error).__qualname__)
    turn.span.end()
    if count:
        metrics.record_turn(time.monotonic() - turn.started, error=error is not None and not cancelled)


# --- graph nodes -----------------------------------------------------------------------------


def traced(name: str, fn: Callable[..., Any], *,
           ends_turn: bool | Callable[[Any], bool] = False) -> Callable[..., Any]:
    """``fn`` as a graph node whose every run is a span ``name`` under the turn span.

    The wrapper keeps what LangGraph reads from a node: sync or async, and the signature and
    type hints (the first parameter's type is the node's input schema; ``runtime``/``config``
    parameters are injected by name). A callable object is wrapped through its ``__call__``.
    ``ends_turn`` marks the last node of a turn: ``True``, or a test of the node's output (the
    support graph's ``synthesize`` ends the turn unless it sends more work first)."""
    # (the ignore: mypy reports ``Callable.__call__`` as "not callable", a mypy quirk)
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial) else fn.__call__  # type: ignore[operator]

    @contextmanager
    def node_run(args: tuple[Any, ...], out: list[Any]) -> Iterator[None]:
        turn, token = _open_turn(), None
        try:
            token = _current_turn.set(turn)
            with _node_span(name, turn, args):
                yield
        except BaseException as exc:
            _fail(turn, exc)
            raise
        finally:
            if token is not None:
                _current_turn.reset(token)
        if turn is not None and (ends_turn(out[0]) if callable(ends_turn) else ends_turn):
            _finish(turn, error=None)

    if inspect.iscoroutinefunction(target):
        @functools.wraps(target)
        async def node(*args, **kwargs):
            out = []
            with node_run(args, out):
                out.append(await target(*args, **kwargs))
                return out[0]
    else:
        @functools.wraps(target)
        def node(*args, **kwargs):
            out = []
            with node_run(args, out):
                out.append(target(*args, **kwargs))
                return out[0]

    return node


@contextmanager
def _node_span(name: str, turn: _Turn | None, args: tuple[Any, ...]) -> Iterator[Span]:
    attributes: dict[str, Any] = {"langgraph.node": name}
    first = args[0] if args else None
    if isinstance(first, Mapping) and isinstance(subtask := first.get("subtask"), Mapping):  # a specialist's handoff
        attributes["switchboard.subtask_id"] = str(subtask.get("id", ""))
        attributes["switchboard.agent"] = str(subtask.get("agent", name))
    with tracer().start_as_current_span(name, context=turn.context if turn else None, attributes=attributes,
                                        record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            if not _bubbles_up(exc):
                record_error(span, exc)
            raise


def _bubbles_up(exc: BaseException) -> bool:
    """An interrupt, or a command for a parent graph: LangGraph's control flow, not a failure."""
    from langgraph.errors import GraphBubbleUp

    return isinstance(exc, GraphBubbleUp)


def record_error(span: Span, exc: BaseException) -> None:
    """An exception on a span: its type as status and ``error.type``, and an ``exception`` event
    whose message and stack trace went through :func:`tools.observability.redaction.redact` (an exception
    message may quote what the user wrote)."""
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute("error.type", type(exc).__qualname__)
    if not span.is_recording():
        return
    from tools.observability.redaction import redact

    kind = type(exc)
    span.add_event("exception", {
        "exception.type": kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        "exception.message": redact(str(exc)),
        "exception.stacktrace": redact("".join(traceback.format_exception(exc))),
    })


def _fail(turn: _Turn | None, exc: BaseException) -> None:
    if turn is None:
        return
    if _bubbles_up(exc):
        turn.span.set_attribute("switchboard.interrupted", True)
        _finish(turn, error=None)
        return
    _finish(turn, error=exc, cancelled=isinstance(exc, asyncio.CancelledError))


def record_triage(subtasks: list[Any], llm_calls: int) -> None:
    """Where triage sent each part: routing counters, and the agents on the triage and turn spans."""
    agents = [s.agent for s in subtasks]
    for s in subtasks:
        metrics.record_route(s.agent, llm_asked=bool(s.llm_asked))
    attributes: dict[str, Any] = {"switchboard.agents": agents, "switchboard.subtasks": len(agents),
                  "switchboard.triage_llm_calls": llm_calls}
    trace.get_current_span().set_attributes(attributes)
    if (turn := _current_turn.get()) is not None:
        turn.span.set_attribute("switchboard.agents", agents)


def record_agent_outcome(agent: str, seconds: float, *, ok: bool) -> None:
    """A specialist finished a subtask: latency/failure metrics, and ``switchboard.ok`` on its
    node span (a failed part is an error there; the answer's text stays out of the trace)."""
    metrics.record_agent(agent, seconds, ok=ok)
    span = trace.get_current_span()
    span.set_attribute("switchboard.ok", ok)
    if not ok:
        span.set_status(Status(StatusCode.ERROR, "the specialist could not answer this part"))


# --- model calls -----------------------------------------------------------------------------


class ModelCall:
    """The span of one model call (one provider attempt, or a cache hit)."""

    def __init__(self, span: Span, spec: ModelInfo) -> None:
        self.span, self.spec = span, spec

    def failed(self, reason: str) -> None:
        """A failure the gateway handles (fallback, breaker): the span says why, the call goes on."""
        self.span.set_status(Status(StatusCode.ERROR, reason))
        self.span.set_attribute("error.type", reason)

    def succeeded(self, entry: CallRecord, response: Any = None) -> None:
        metadata = getattr(response, "response_metadata", None) or {}
        self.span.set_attributes({
            "gen_ai.response.model": str(metadata.get("model_name") or metadata.get("model") or self.spec.model),
            "gen_ai.usage.input_tokens": int(entry.tokens_in),
            "gen_ai.usage.output_tokens": int(entry.tokens_out),
            "switchboard.model": entry.model,
            "switchboard.cached": bool(entry.cached),
            "switchboard.replayed": bool(entry.replayed),
            "switchboard.cost_usd": float(entry.cost_usd),
        })
        if entry.note:  # fallback / budget notes: model names and reasons, no user text
            self.span.set_attribute("switchboard.note", entry.note)
        if entry.model_version:
            self.span.set_attribute("switchboard.model_version", entry.model_version)
        if response_id := metadata.get("id"):
            self.span.set_attribute("gen_ai.response.id", str(response_id))


@contextmanager
def model_call_span(spec: ModelInfo, *, agent: str, max_tokens: int, thread_id: str | None = None,
                    subtask_id: str = "", cached: bool = False) -> Iterator[ModelCall]:
    """A ``chat <model>`` span (GenAI conventions) around one call, child of the current node span.
    An exception that escapes it is recorded on the span."""
    provider = _PROVIDERS.get(spec.provider, spec.provider)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the attribute's name before semantic conventions 1.37
        "gen_ai.request.model": spec.model,
        "gen_ai.request.max_tokens": int(max_tokens),
        "switchboard.model": spec.name,
        "switchboard.agent": agent,
        "switchboard.cached": cached,
    }
    if thread_id:
        attributes["gen_ai.conversation.id"] = thread_id
    if subtask_id:
        attributes["switchboard.subtask_id"] = subtask_id
    kind = SpanKind.INTERNAL if spec.provider in _IN_PROCESS or cached else SpanKind.CLIENT
    with tracer().start_as_current_span(f"chat {spec.model}", kind=kind, attributes=attributes,
                                        record_exception=False, set_status_on_exception=False) as span:
        try:
            yield ModelCall(span, spec)
        except BaseException as exc:
            record_error(span, exc)
            raise
