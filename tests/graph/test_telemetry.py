"""OpenTelemetry spans of a turn: the tree, the GenAI attributes of model calls, failures.

Spans go to an in-memory exporter on a fresh SDK provider swapped in with
``telemetry.use_tracer_provider`` (OpenTelemetry's global provider is left alone). Models are
scripted fakes, as in test_support_graph.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import REPO_ROOT
from tests.fake_openai import FakeOpenAI, Fault
from tests.stacks import LOCAL, models_file, scripted_services
from tools.models.gateway import call_model
from tools.models.recording import MissingRecording
from tools.observability import metrics, telemetry

TWO_PARTS = "How many customers do we have, and what is your refund policy?"
NODES = {"triage", "sql", "rag", "vision", "general", "synthesize"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


def board(settings, **rules) -> Switchboard:
    services, fake = scripted_services(settings, **rules)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    sb.fake = fake
    return sb


def children(all_spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in all_spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def tree(all_spans: list[ReadableSpan]) -> str:
    """The spans as an indented outline, children in start order (printed when a test fails)."""
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        lines.append("  " * depth + span.name)
        for child in sorted(children(all_spans, span), key=lambda s: (s.start_time, s.name)):
            walk(child, depth + 1)

    ids = {s.context.span_id for s in all_spans}
    for root in sorted((s for s in all_spans if s.parent is None or s.parent.span_id not in ids),
                       key=lambda s: s.start_time):
        walk(root, 0)
    return "\n".join(lines)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_two_part_turn_is_one_trace_turn_nodes_and_model_calls(make_settings, spans):
    sb = board(make_settings())
    turn = await sb.ask(TWO_PARTS, thread_id="otel-1")
    finished = list(spans.get_finished_spans())
    outline = tree(finished)

    roots = [s for s in finished if s.parent is None]
    assert [r.name for r in roots] == ["switchboard.turn"], outline
    root = roots[0]
    assert root.attributes["gen_ai.conversation.id"] == "otel-1"
    assert list(root.attributes["switchboard.agents"]) == ["sql", "rag"]
    assert root.status.status_code != StatusCode.ERROR
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}

    nodes = sorted(children(finished, root), key=lambda s: s.start_time)
    assert [n.name for n in nodes][0] == "triage" and [n.name for n in nodes][-1] == "synthesize"
    assert sorted(n.name for n in nodes) == sorted(["triage", "sql", "rag", "synthesize"]), outline
    assert all(n.attributes["langgraph.node"] == n.name for n in nodes)
    by_name = {n.name: n for n in nodes}
    assert by_name["triage"].end_time <= min(by_name["sql"].start_time, by_name["rag"].start_time)
    assert by_name["synthesize"].end_time <= root.end_time

    chats = [s for s in finished if s.name.startswith("chat ")]
    assert len(chats) == len(turn.ledger) == 2                     # one span per model call
    for agent in ("sql", "rag"):
        node = by_name[agent]
        assert node.attributes["switchboard.agent"] == agent and node.attributes["switchboard.ok"] is True
        (chat,) = children(finished, node)                         # the model call sits under its node
        a = chat.attributes
        assert chat.name == f"chat {a['gen_ai.request.model']}"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "llama.cpp"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"]
        assert a["gen_ai.request.max_tokens"] > 0
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["switchboard.model"] == LOCAL and a["switchboard.agent"] == agent
        assert a["switchboard.cached"] is False and a["gen_ai.conversation.id"] == "otel-1"
        assert chat.kind == SpanKind.INTERNAL                      # the local model runs in-process
        entry = next(e for e in turn.ledger if e["agent"] == agent)
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (entry["tokens_in"], entry["tokens_out"])
    for name in ("triage", "synthesize"):
        assert children(finished, by_name[name]) == []              # no model call for these on the local default

    # no text of the conversation is recorded
    text = json.dumps([dict(s.attributes) for s in finished], default=str).lower()
    assert "refund" not in text and "customers" not in text and "59" not in text


async def test_a_cached_call_is_a_span_marked_cached(make_settings, spans):
    sb = board(make_settings())
    await sb.ask("How many customers do we have?", thread_id="otel-c1")
    spans.clear()
    await sb.ask("How many customers do we have?", thread_id="otel-c2")
    (chat,) = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    assert chat.attributes["switchboard.cached"] is True and chat.attributes["switchboard.cost_usd"] == 0
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert len(sb.fake.calls) == 1


async def test_concurrent_turns_get_separate_traces(make_settings, spans):
    sb = board(make_settings(cache_ttl_s=0))
    await asyncio.gather(sb.ask(TWO_PARTS, thread_id="otel-p1"), sb.ask(TWO_PARTS, thread_id="otel-p2"))
    finished = list(spans.get_finished_spans())
    turns = [s for s in finished if s.name == "switchboard.turn"]
    assert sorted(t.attributes["gen_ai.conversation.id"] for t in turns) == ["otel-p1", "otel-p2"]
    assert len({t.context.trace_id for t in turns}) == 2
    for t in turns:
        assert sorted(c.name for c in children(finished, t)) == sorted(
            ["triage", "sql", "rag", "synthesize"]), tree(finished)


async def test_a_subtask_that_waits_on_another_runs_after_it_in_the_same_turn(make_settings, spans):
    """``synthesize`` first sends the subtask whose dependency is now done, then answers: two
    runs of it, one turn span, and the turn ends only with the answer."""
    from agents.contract import Subtask
    from agents.triage import TriageDecision

    sb = board(make_settings(cache_ttl_s=0))
    first = Subtask(id="t1", agent="general", task="Hi there", route="chitchat", confidence=1.0, reason="test",
                    extract_only=True)
    second = Subtask(id="t2", agent="sql", task="How many customers do we have?", route="data", confidence=1.0,
                     reason="test", depends_on=["t1"])

    async def decide(question, **_):  # noqa: ANN001, ANN202 - Triage.decide's signature
        return TriageDecision(subtasks=[first, second], llm_calls=0, ledger=[], clauses=[question])

    sb.services.triage.decide = decide
    turn = await sb.ask("Hi there. How many customers do we have?", thread_id="otel-dep")
    assert [r["subtask_id"] for r in turn.results] == ["t1", "t2"]
    assert "59" in turn.answer
    finished = list(spans.get_finished_spans())
    (root,) = [s for s in finished if s.name == "switchboard.turn"]
    nodes = [n.name for n in sorted(children(finished, root), key=lambda s: s.start_time)]
    assert nodes == ["triage", "general", "synthesize", "sql", "synthesize"], tree(finished)
    assert root.end_time >= max(s.end_time for s in children(finished, root))


async def test_a_turn_that_raises_ends_its_span_as_an_error_and_counts_it(make_settings, spans):
    def unrecorded(messages):
        raise MissingRecording("no cassette holds this request")

    sb = board(make_settings(), sql=unrecorded)
    turns, errors = sample("switchboard_turns_total"), sample("switchboard_turn_errors_total")
    with pytest.raises(MissingRecording):
        await sb.ask("How many customers do we have?", thread_id="otel-err")
    finished = list(spans.get_finished_spans())
    (turn,) = [s for s in finished if s.name == "switchboard.turn"]
    assert turn.status.status_code == StatusCode.ERROR and turn.attributes["error.type"] == "MissingRecording"
    (sql,) = [s for s in finished if s.name == "sql"]
    assert sql.status.status_code == StatusCode.ERROR and sql.parent.span_id == turn.context.span_id
    assert sample("switchboard_turns_total") == turns + 1
    assert sample("switchboard_turn_errors_total") == errors + 1


async def test_a_failed_part_marks_its_node_span_and_counts_an_agent_error(make_settings, spans):
    def broken(messages):
        raise ConnectionError("model server went away")

    sb = board(make_settings(), sql=broken)
    sql_errors, rag_errors = (sample("switchboard_agent_errors_total", agent=a) for a in ("sql", "rag"))
    turn = await sb.ask(TWO_PARTS, thread_id="otel-part")
    assert "could not answer this part" in turn.answer
    assert sample("switchboard_agent_errors_total", agent="sql") == sql_errors + 1
    assert sample("switchboard_agent_errors_total", agent="rag") == rag_errors
    finished = list(spans.get_finished_spans())
    (sql,) = [s for s in finished if s.name == "sql"]
    assert sql.attributes["switchboard.ok"] is False and sql.status.status_code == StatusCode.ERROR
    (chat,) = children(finished, sql)
    assert chat.status.status_code == StatusCode.ERROR and chat.attributes["error.type"] == "connection failed"
    (turn_span,) = [s for s in finished if s.name == "switchboard.turn"]
    assert turn_span.status.status_code != StatusCode.ERROR       # the turn itself was answered


async def test_a_fallback_is_two_call_spans_and_the_second_says_why(make_settings, tmp_path, spans):
    faults = [Fault(status=503)]
    with FakeOpenAI(respond=lambda body: faults.pop(0) if faults else "from primary") as p, \
            FakeOpenAI(respond=lambda body: "from backup") as b:
        reg = Services(make_settings(models_file=models_file(tmp_path, p.url, b.url),
                                    model_max_retries=0, cache_ttl_s=0)).registry
        _, entry = await call_model(reg.handle("primary", role="general"), [HumanMessage("hi")],
                                    agent="general", task="hi", max_tokens=16)
    first, second = sorted(spans.get_finished_spans(), key=lambda s: s.start_time)
    assert (first.name, second.name) == ("chat big-model", "chat small-model")
    assert first.status.status_code == StatusCode.ERROR and first.attributes["error.type"] == "server error (503)"
    assert first.kind == SpanKind.CLIENT and first.attributes["gen_ai.provider.name"] == "openai_compatible"
    assert second.attributes["switchboard.note"] == entry.note and "primary: server error (503)" in entry.note
    assert second.attributes["gen_ai.usage.input_tokens"] == entry.tokens_in > 0


def test_tracing_is_off_by_default_and_node_wrappers_keep_the_wiring(make_settings):
    graph = build_support_graph(Services(make_settings()))
    assert make_settings().otel_exporter == "off"
    assert set(graph.builder.nodes) == NODES
    assert graph.builder.nodes["sql"].input_schema.__name__ == "Handoff"  # still read from the wrapped __call__


def test_otlp_endpoint_is_a_base_url_like_the_standard_variable():
    assert telemetry.otlp_traces_endpoint("") is None
    assert telemetry.otlp_traces_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    assert telemetry.otlp_traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert telemetry.otlp_traces_endpoint("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_console_exporter_prints_spans_to_stderr_not_stdout(tmp_path):
    """In a fresh process: configure() sets the global provider once, which a test process must not."""
    script = (
        "from switchboard.services import Services\n"
        "from switchboard.settings import Settings\n"
        "from tools.observability import telemetry\n"
        f"s = Settings(data_dir={str(tmp_path)!r}, otel_exporter='console', otel_service_name='sb-test')\n"
        "Services(s); Services(s)  # the composition root configures tracing, once per process\n"
        "with telemetry.tracer().start_as_current_span('probe'): pass\n"
        "print('answer')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "answer\n"
    assert proc.stderr.count('"name": "probe"') == 1 and '"service.name": "sb-test"' in proc.stderr


async def test_an_exception_event_is_redacted(make_settings, spans):
    def leaky(messages):
        raise MissingRecording("no cassette for a request from jane.doe@example.com")

    sb = board(make_settings(), sql=leaky)
    with pytest.raises(MissingRecording):
        await sb.ask("How many customers do we have?", thread_id="otel-redact")
    (sql,) = [s for s in spans.get_finished_spans() if s.name == "sql"]
    (event,) = [e for e in sql.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "tools.models.recording.MissingRecording"
    assert "jane.doe@example.com" not in event.attributes["exception.message"]
    assert "[email]" in event.attributes["exception.message"]
    assert "jane.doe" not in event.attributes["exception.stacktrace"]
    assert "jane.doe" not in (sql.status.description or "")
