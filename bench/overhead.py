"""What the orchestration itself costs: the support graph on fake models that answer instantly
(or after a fixed delay), so every millisecond measured is Switchboard's, not a model's.

1. **Overhead per turn** -- zero-latency fake model, turns run one at a time over several
   conversations, a mix of one- and two-part requests; p50/p99/mean wall time of a turn with
   the product's SQLite checkpointer (``AsyncSqliteSaver``) and with ``InMemorySaver``, and
   where the time goes: triage (the local embedding classifier), the model gateway (budget
   check, cache key, ledger write, LangChain's streaming path; the fake itself takes ~0 ms),
   retrieval (Chroma), SQL execution (Chinook), checkpointer calls, and the rest (LangGraph's
   engine, the audit-trail write and the agents' own code). Turns of the two variants alternate,
   so machine load drifts hit both alike.
2. **LLM calls per k-part request** (k = 1..4) -- Switchboard next to a ``langgraph-supervisor``
   graph (``create_supervisor`` over one ``create_react_agent`` worker per specialist) running
   the same requests on the same scripted fake model class, counted the same way (calls that
   reach the fake). The supervisor's model is scripted as a competent LLM: one handoff per
   needed worker, in turn, then the final answer; the SQL and help-center workers use a tool
   (query / search) then answer, the vision and general workers answer directly.
3. **Throughput** -- 50 conversations at once (distinct threads, several turns each, SQLite
   checkpointer) on a fake model that takes 200 ms per call: turns/s achieved against the ideal,
   where every turn takes exactly its sequential LLM-call depth x 200 ms and conversations never
   wait for each other.

The response cache is off (``cache_ttl_s=0``) so every call reaches the fake; triage keeps its
LLM fallback on (the product default) and the count of triage LLM calls is reported (the
requests are ones the classifier routes confidently, so it should be 0).

    uv run python bench/overhead.py [--quick] [--json out.json] [--figures 1 2 3] [--profile [TURNS]]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import functools
import inspect
import io
import json
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script; ahead of site-packages, which has a stray `tests` (literalai)
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma: no telemetry calls from a benchmark

import yaml  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402

from bench.common import format_table, machine_load  # noqa: E402
from bench.eval_common import latency_summary, percentile  # noqa: E402
from bench.fake_models import BenchChatModel, by_system_prompt  # noqa: E402
from graphs import build_support_graph  # noqa: E402
from switchboard.api import Switchboard, TurnResult  # noqa: E402
from switchboard.persistence import open_checkpointer  # noqa: E402
from switchboard.services import Services  # noqa: E402
from switchboard.settings import REPO_ROOT, Settings  # noqa: E402

BENCH_MODEL = "bench-fake"
IMAGE = ROOT / "tests" / "fixtures" / "images" / "chinook_invoice_98.png"


# --- settings: one fake model that can do everything, no response cache -------------------------
def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a run: the product's routes, policies and Chinook database, a registry with
    a single vision-capable fake model (so no tier routing and no OCR), the response cache off.
    Everything is explicit so a developer's ``SWITCHBOARD_*`` environment cannot leak in."""
    product = yaml.safe_load((REPO_ROOT / "switchboard" / "config" / "models.yaml").read_text(encoding="utf-8"))
    registry = {
        "models": {
            BENCH_MODEL: {"provider": "fake", "model": BENCH_MODEL, "version": "1", "tier": "light",
                          "capabilities": ["vision", "tools", "json"], "enabled": True},
        },
        "policies": product["policies"],
    }
    models_file = data_dir / "bench-models.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    models_file.write_text(yaml.safe_dump(registry), encoding="utf-8")
    base: dict[str, Any] = dict(
        data_dir=data_dir, models_file=models_file, cache_ttl_s=0, checkpoint_url="", chroma_url="",
        database_url=f"sqlite:///{REPO_ROOT / 'data' / 'chinook' / 'chinook.sqlite'}",
        routes_file=REPO_ROOT / "switchboard" / "config" / "routes.yaml", record_mode="off",
        routing_policy="balanced", triage_use_llm=True, budget_conversation_usd=None, budget_day_usd=None,
        review_cost_usd=None, validate_agents=[], triage_voters=[], otel_exporter="off",
    )
    base.update(overrides)
    return Settings(**base)


# --- the requests --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    text: str
    parts: tuple[tuple[str, str], ...]  # (specialist, the part's text) as a competent reader splits it
    image: bool = False

    @property
    def k(self) -> int:
        return len(self.parts)

    @property
    def agents(self) -> list[str]:
        return [a for a, _ in self.parts]


def req(*parts: tuple[str, str], text: str | None = None, image: bool = False) -> Request:
    return Request(text or " ".join(p for _, p in parts), tuple(parts), image)


SQL_BRAZIL = ("sql", "How many customers are from Brazil?")
SQL_ARTIST = ("sql", "Which artist has the most albums?")
SQL_ROCK = ("sql", "How many tracks are in the Rock genre?")
SQL_EMPLOYEE = ("sql", "Which employee has the most customers?")
RAG_REFUND = ("rag", "What's your refund policy?")
RAG_PAYPAL = ("rag", "Can I pay with PayPal?")
RAG_PAYMENT = ("rag", "Which payment methods do you accept?")
RAG_DRM = ("rag", "Are the files DRM free?")
RAG_GIFT = ("rag", "Do gift cards expire?")
GEN_HELLO = ("general", "Hello!")
GEN_HI = ("general", "Hi there!")
GEN_JOKE = ("general", "Tell me a joke")
GEN_FRANCE = ("general", "What is the capital of France?")
VIS_TOTAL = ("vision", "What's the total on this receipt?")

# Figures 1 and 3: what a conversation asks, in turn (one- and two-part requests, one follow-up).
MIX: list[Request] = [
    req(SQL_BRAZIL),
    req(SQL_BRAZIL, RAG_REFUND),
    req(RAG_REFUND),
    req(("sql", "How many customers are from Germany"), ("rag", "what are your support hours?"),
        text="How many customers are from Germany, and what are your support hours?"),
    req(("sql", "and how many of them are from Germany?")),
    req(GEN_HI, RAG_PAYMENT),
    req(GEN_HELLO),
    req(SQL_ARTIST, GEN_JOKE),
    req(SQL_ARTIST),
    req(("sql", "Which country has the most customers"), ("rag", "how do I reset my password?"),
        text="Which country has the most customers, and how do I reset my password?"),
    req(RAG_PAYPAL),
]

# Figure 2: k-part requests.
BY_K: dict[int, list[Request]] = {
    1: [req(SQL_BRAZIL), req(RAG_REFUND), req(GEN_HELLO)],
    2: [req(SQL_BRAZIL, RAG_REFUND), MIX[3], req(SQL_ARTIST, GEN_JOKE)],
    3: [req(GEN_HELLO, SQL_BRAZIL, RAG_REFUND), req(SQL_ROCK, RAG_PAYPAL, GEN_JOKE),
        req(SQL_EMPLOYEE, RAG_DRM, GEN_FRANCE)],
    4: [req(VIS_TOTAL, SQL_BRAZIL, RAG_REFUND, GEN_JOKE, image=True),
        req(GEN_HI, SQL_BRAZIL, RAG_REFUND, GEN_JOKE),
        req(SQL_BRAZIL, SQL_ARTIST, RAG_REFUND, RAG_GIFT)],
}


# --- the scripted model: what each agent's (competent) model answers -----------------------------
_SQL = {  # the part, normalised -> (query, answer sentence with {result})
    "how many customers are from brazil": ("SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'",
                                           "{result} customers are from Brazil."),
    "how many customers are from germany": ("SELECT COUNT(*) FROM Customer WHERE Country = 'Germany'",
                                            "{result} customers are from Germany."),
    "and how many of them are from germany": ("SELECT COUNT(*) FROM Customer WHERE Country = 'Germany'",
                                              "{result} of them are from Germany."),
    "which artist has the most albums": (
        "SELECT ar.Name, COUNT(*) AS albums FROM Artist ar JOIN Album al ON al.ArtistId = ar.ArtistId "
        "GROUP BY ar.ArtistId, ar.Name ORDER BY albums DESC LIMIT 1", "{result} has the most albums ({result})."),
    "how many tracks are in the rock genre": (
        "SELECT COUNT(*) FROM Track t JOIN Genre g ON g.GenreId = t.GenreId WHERE g.Name = 'Rock'",
        "There are {result} Rock tracks."),
    "which employee has the most customers": (
        "SELECT e.FirstName, e.LastName, COUNT(*) AS customers FROM Employee e JOIN Customer c "
        "ON c.SupportRepId = e.EmployeeId GROUP BY e.EmployeeId, e.FirstName, e.LastName "
        "ORDER BY customers DESC LIMIT 1", "{result} {result} looks after the most customers ({result})."),
    "which country has the most customers": (
        "SELECT Country, COUNT(*) AS customers FROM Customer GROUP BY Country ORDER BY customers DESC LIMIT 1",
        "{result} has the most customers ({result})."),
}


def _norm(text: str) -> str:
    return text.strip().strip("?.! ").lower()


def _question(messages: list[BaseMessage]) -> str:
    m = re.search(r"Question:\s*(.+?)\s*$", str(messages[-1].content), re.S)
    return m.group(1) if m else str(messages[-1].content)


def sql_reply(messages: list[BaseMessage]) -> str:
    sql, answer = _SQL.get(_norm(_question(messages)), ("SELECT COUNT(*) FROM Customer", "We have {result} customers."))
    return f"SQL: {sql}\nANSWER: {answer}"


SWITCHBOARD_SCRIPT = by_system_prompt({
    "SQLite SELECT": sql_reply,
    "help-center passages": "Here is what the help center says about it [1].",
    "support assistant of Chinook": "Hello! How can I help?",
    "image a customer uploaded": "The total on this receipt is 13.86.",
    # only reached if the classifier is unsure of a part; the bench reports how often
    "route one customer-support": "general",
}, default="OK")
TRIAGE_PROMPT = "route one customer-support"


def switchboard_fake(latency_s: float = 0.0) -> BenchChatModel:
    return BenchChatModel(respond=SWITCHBOARD_SCRIPT, latency_s=latency_s)


# --- timing probes -------------------------------------------------------------------------------
class Probe:
    """Wall time during which a chosen method is running, per bucket, between two ``take()`` calls.

    Time is the union of the calls' intervals, so calls that overlap (a two-part turn's branches,
    LangGraph's background checkpoint writes) are not counted twice; a method can feed several
    buckets (one of its own and a group). Methods are wrapped on the instance (``functools.wraps``
    keeps the signature LangGraph inspects). Only meaningful while turns run one at a time;
    ``active`` turns it off."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._running: dict[str, int] = defaultdict(int)
        self._since: dict[str, float] = {}
        self.active = False

    def _enter(self, buckets: tuple[str, ...]) -> None:
        now = time.perf_counter()
        for b in buckets:
            self.counts[b] += 1
            if self._running[b] == 0:
                self._since[b] = now
            self._running[b] += 1

    def _exit(self, buckets: tuple[str, ...]) -> None:
        now = time.perf_counter()
        for b in buckets:
            self._running[b] -= 1
            if self._running[b] == 0:
                self.totals[b] += now - self._since.pop(b)

    def wrap(self, obj: Any, name: str, *buckets: str) -> None:
        fn = getattr(obj, name)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                if not self.active:
                    return await fn(*args, **kwargs)
                self._enter(buckets)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self._exit(buckets)
            setattr(obj, name, timed_async)
        else:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                if not self.active:
                    return fn(*args, **kwargs)
                self._enter(buckets)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._exit(buckets)
            setattr(obj, name, timed)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        """Closed intervals' time per bucket and the number of calls, then start afresh (a call
        still running -- a background checkpoint write -- counts toward the next turn)."""
        out = dict(self.totals), dict(self.counts)
        self.totals.clear()
        self.counts.clear()
        return out


def instrument(services: Services, probe: Probe) -> None:
    gateway = services.registry.gateway
    probe.wrap(services.triage, "decide", "triage")
    probe.wrap(gateway, "call", "gateway", "work")
    for name in ("record", "spent", "cached", "store"):
        probe.wrap(gateway.ledger, name, "ledger")
    probe.wrap(services.kb, "search", "retrieval", "work")
    probe.wrap(services.db, "run", "sql_db", "work")
    audit = getattr(services, "audit", None)  # the turn's audit record, written by `remember`
    if audit is not None and hasattr(audit, "record_turn"):
        probe.wrap(audit, "record_turn", "audit")


def instrument_saver(saver: Any, probe: Probe, bucket: str) -> None:
    for name in ("aget_tuple", "aput", "aput_writes"):
        probe.wrap(saver, name, bucket)


# --- helpers -------------------------------------------------------------------------------------
async def ask(sb: Switchboard, request: Request, thread_id: str) -> tuple[TurnResult, float]:
    started = time.perf_counter()
    turn = await sb.ask(request.text, thread_id=thread_id, image=IMAGE if request.image else None)
    return turn, time.perf_counter() - started


def llm_depth(turn: TurnResult) -> int:
    """The turn's sequential LLM-call depth: triage's calls, then the longest chain of subtasks
    (a subtask waits for the ones it depends on), each costing its own number of calls."""
    calls: dict[str, int] = defaultdict(int)
    triage_calls = 0
    for e in turn.ledger:
        if e["agent"] == "triage":
            triage_calls += 1
        else:
            calls[e["subtask_id"]] += 1
    subtasks = {s["id"]: s for s in turn.triage.get("subtasks") or []}

    @functools.cache
    def depth(sid: str) -> int:
        deps = subtasks[sid]["depends_on"] if sid in subtasks else []
        return calls.get(sid, 0) + max((depth(d) for d in deps if d in subtasks), default=0)

    return triage_calls + max((depth(s) for s in subtasks), default=0)


def split_ok(turn: TurnResult, request: Request) -> bool:
    return [s.agent for s in turn.subtasks] == request.agents


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def summary(seconds: Sequence[float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in latency_summary(seconds).items()}


async def warm_up(services: Services) -> float:
    """Load what is loaded once per process (classifier, knowledge base ingest, database schema)."""
    started = time.perf_counter()
    _ = services.triage, services.kb, services.db
    await services.triage.decide("warm up", has_image=False)
    return time.perf_counter() - started


# --- figure 1: overhead per turn -----------------------------------------------------------------
BUCKETS = [  # (bucket, label); the indented ones are parts of the row above them
    ("triage", "triage (classifier; an LLM only if unsure)"),
    ("rest", "rest of the turn (wall - triage)"),
    ("gateway", "  model gateway calls (the fake answers in ~0 ms)"),
    ("ledger", "    of which ledger SQLite (budget sums, call insert)"),
    ("retrieval", "  retrieval (query embedding + Chroma)"),
    ("sql_db", "  SQL execution (Chinook)"),
    ("other", "  the rest: LangGraph, checkpointer, agents' code, ask()"),
    ("audit", "    of which audit-trail write (worker thread)"),
    ("checkpointer", "checkpointer calls in flight (overlap the above)"),
]


async def figure1(services: Services, data_dir: Path, turns: int, conversations: int) -> dict[str, Any]:
    from langgraph.checkpoint.memory import InMemorySaver

    fake = switchboard_fake()
    services.registry.use_chat_model(BENCH_MODEL, fake)
    probe = Probe()
    instrument(services, probe)
    variants: dict[str, Switchboard] = {}
    async with AsyncExitStack() as stack:
        sqlite_settings = bench_settings(data_dir, checkpoint_url=f"sqlite:///{data_dir / 'fig1-checkpoints.sqlite'}")
        saver = await stack.enter_async_context(open_checkpointer(sqlite_settings))
        memory = InMemorySaver()
        instrument_saver(saver, probe, "checkpointer")
        instrument_saver(memory, probe, "checkpointer")
        variants["AsyncSqliteSaver"] = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        variants["InMemorySaver"] = Switchboard(build_support_graph(services=services, checkpointer=memory), services)

        for name, sb in variants.items():  # first turns pay for imports and lazy setup: not measured
            for i, r in enumerate(MIX * 2):
                await ask(sb, r, f"warm-{name}-{i % 3}")

        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        problems: list[str] = []
        order = list(variants)
        probe.active = True
        for i in range(turns):
            conv = i % conversations
            request = MIX[(i // conversations + conv) % len(MIX)]  # each conversation walks MIX from its own offset
            for name in order if i % 2 == 0 else order[::-1]:  # alternate which variant goes first
                probe.take()
                fake.reset()
                turn, wall = await ask(variants[name], request, f"fig1-{name}-{conv}")
                parts, counts = probe.take()
                if not split_ok(turn, request):
                    problems.append(f"{request.text!r}: triage gave {[s.agent for s in turn.subtasks]}")
                if len(fake.calls) != request.k:
                    problems.append(f"{request.text!r}: {len(fake.calls)} LLM calls for {request.k} parts")
                if not all(r["ok"] for r in turn.results):
                    problems.append(f"{request.text!r}: a specialist failed: {[r['error'] for r in turn.results]}")
                rows[name].append({
                    "k": request.k, "wall": wall, "llm_calls": len(fake.calls),
                    "triage_llm_calls": turn.triage.get("llm_calls", 0), **parts,
                    **{f"n_{b}": c for b, c in counts.items()},
                })
        probe.active = False

    out: dict[str, Any] = {"turns": turns, "conversations": conversations, "variants": {}}
    for name, rs in rows.items():
        for r in rs:
            r["rest"] = r["wall"] - r.get("triage", 0.0)
            r["other"] = r["rest"] - r.get("work", 0.0)
        out["variants"][name] = {
            "wall": summary([r["wall"] for r in rs]),
            "by_k": {k: summary([r["wall"] for r in rs if r["k"] == k]) for k in sorted({r["k"] for r in rs})},
            "triage_vs_rest": {b: summary([r.get(b, 0.0) for r in rs]) for b in ("triage", "rest")},
            # components inside one-part turns, where no two branches interleave
            "breakdown_1part": {b: summary([r.get(b, 0.0) for r in rs if r["k"] == 1]) for b, _ in BUCKETS},
            "calls_per_1part_turn": {b: round(statistics.mean(r.get(f"n_{b}", 0) for r in rs if r["k"] == 1), 2)
                                     for b, _ in BUCKETS},
            "llm_calls": sum(r["llm_calls"] for r in rs),
            "triage_llm_calls": sum(r["triage_llm_calls"] for r in rs),
        }
    out["problems"] = sorted(set(problems))
    out["gateway_alone"] = await gateway_alone(services, fake, n=max(50, turns // 2))
    return out


async def gateway_alone(services: Services, fake: BenchChatModel, n: int) -> dict[str, Any]:
    """One model call's cost with nothing else running: the SQL agent's real prompt through
    ``call_model`` (gateway), and the same messages straight through LangChain's ``astream``."""
    from langchain_core.messages import SystemMessage

    from agents.sql import SQLAgent
    from tools.models import call_model

    agent, question = SQLAgent(services), "How many customers are from Brazil?"
    msgs = [SystemMessage(agent.profile.system_prompt(agent.schema_text(question))),
            HumanMessage(f"Question: {question}")]
    handle = services.registry.handle(BENCH_MODEL, role="sql")
    via_gateway, via_langchain = [], []
    for _ in range(n):
        started = time.perf_counter()
        await call_model(handle, msgs, agent="sql", task=question, max_tokens=160)
        via_gateway.append(time.perf_counter() - started)
        started = time.perf_counter()
        async for _chunk in fake.astream(msgs, max_tokens=160):
            pass
        via_langchain.append(time.perf_counter() - started)
    return {"calls": n, "prompt_chars": sum(len(str(m.content)) for m in msgs),
            "gateway": summary(via_gateway), "langchain_astream": summary(via_langchain)}


def print_figure1(f: dict[str, Any]) -> None:
    v = f["variants"]
    print(f"\n== 1. Orchestration overhead per turn: zero-latency fake model, {f['turns']} turns per checkpointer "
          f"over {f['conversations']} conversations (one- and two-part requests, run one at a time)")
    rows = []
    for name, s in v.items():
        w = s["wall"]
        rows.append([name, int(w["n"]), f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}", f"{w['mean_ms']:.1f}",
                     f"{w['max_ms']:.1f}", *(f"{s['by_k'][k]['p50_ms']:.1f}" for k in sorted(s["by_k"])),
                     s["llm_calls"], s["triage_llm_calls"]])
    ks = sorted(next(iter(v.values()))["by_k"])
    print(format_table(["checkpointer", "turns", "p50 ms", "p99 ms", "mean ms", "max ms",
                        *(f"p50 {k}-part" for k in ks), "LLM calls", "triage LLM calls"], rows))
    sq, mem = v.get("AsyncSqliteSaver"), v.get("InMemorySaver")
    if sq and mem:
        print(f"SQLite checkpointer's marginal cost per turn: p50 {sq['wall']['p50_ms'] - mem['wall']['p50_ms']:+.1f} ms, "
              f"mean {sq['wall']['mean_ms'] - mem['wall']['mean_ms']:+.1f} ms")
    print("\nTriage vs the rest of the turn, all turns (ms; the turn is Switchboard.ask(): its pending-review"
          "\ncheck, the graph run and the result):")
    rows = []
    for name, s in v.items():
        t, r = s["triage_vs_rest"]["triage"], s["triage_vs_rest"]["rest"]
        rows.append([name, f"{t['p50_ms']:.1f}", f"{t['p99_ms']:.1f}", f"{t['mean_ms']:.1f}",
                     f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_ms']:.1f}"])
    print(format_table(["checkpointer", "triage p50", "triage p99", "triage mean", "rest p50", "rest p99", "rest mean"],
                       rows))
    n1 = int(next(iter(v.values()))["breakdown_1part"]["triage"]["n"])
    print(f"\nWhere the time goes inside a one-part turn ({n1} per checkpointer; one branch, so components do not"
          "\ninterleave; ms per turn while the component ran; LangGraph's checkpoint writes run in the background"
          "\nwhile later nodes execute, so their in-flight time overlaps the rest -- the SQLite saver's real cost"
          "\nis the marginal cost above):")
    rows = []
    for b, label in BUCKETS:
        cells = [label]
        for name in v:
            s = v[name]["breakdown_1part"][b]
            n = v[name]["calls_per_1part_turn"].get(b, 0)
            cells += [f"{n:.1f}" if n else "", f"{s['mean_ms']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"]
        rows.append(cells)
    headers = ["component"]
    for name in v:
        short = "sqlite" if "Sqlite" in name else "memory"
        headers += [f"{short} calls", f"{short} mean", f"{short} p50", f"{short} p99"]
    print(format_table(headers, rows))
    g = f["gateway_alone"]
    print(f"One model call measured alone, outside the graph ({g['calls']} calls, the SQL agent's "
          f"{g['prompt_chars']}-character prompt,\nthe fake answers at once): through the gateway p50 "
          f"{g['gateway']['p50_ms']:.2f} ms, p99 {g['gateway']['p99_ms']:.2f} ms; of that, LangChain's astream of the "
          f"fake alone p50 {g['langchain_astream']['p50_ms']:.2f} ms.")
    for p in f["problems"]:
        print(f"  ! {p}")


# --- figure 2: LLM calls per k-part request, Switchboard vs langgraph-supervisor -----------------
WORKERS = {  # worker -> (system prompt phrase, tool it uses or None)
    "sql": "You are the sql worker",
    "rag": "You are the help-center worker",
    "vision": "You are the vision worker",
    "general": "You are the general worker",
}
WORKER_TOOL = {"sql": "run_sql", "rag": "search_help_center"}
SUPERVISOR_PROMPT = ("You are a supervisor managing four workers: sql (store database), rag (help center), "
                     "vision (attached images) and general (anything else). Hand each part of the request to "
                     "the worker that can answer it, one at a time; when all parts are answered, reply to the user.")


def _request_of(messages: list[BaseMessage], catalogue: dict[str, Request]) -> Request:
    for m in messages:
        if isinstance(m, HumanMessage):
            content = m.content
            text = content if isinstance(content, str) else " ".join(
                c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
            return catalogue[text]
    raise ValueError("no user message")


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def supervisor_script(catalogue: dict[str, Request]) -> Callable[[list[BaseMessage]], AIMessage | str]:
    """A competent supervisor LLM and its workers, scripted from the request's known parts.

    (Not measured: ``parallel_tool_calls=True`` with several handoffs in one call. With
    langgraph-supervisor 0.0.31 only the last handoff's worker runs and the supervisor never sees
    the others come back, so it loops; langgraph-supervisor-py issue #230.)"""

    def supervisor(messages: list[BaseMessage]) -> AIMessage | str:
        request = _request_of(messages, catalogue)
        needed = list(dict.fromkeys(request.agents))  # each needed worker once, in order of first need
        handed = [tc["name"].removeprefix("transfer_to_") for m in messages if isinstance(m, AIMessage)
                  for tc in m.tool_calls if tc["name"].startswith("transfer_to_")]
        todo = [w for w in needed if w not in handed]
        if todo:  # the next worker (one handoff per call: parallel_tool_calls=False, the default)
            return AIMessage(content="", tool_calls=[
                {"name": f"transfer_to_{todo[0]}", "args": {}, "id": _call_id(), "type": "tool_call"}])
        answers = [str(m.content) for m in messages if isinstance(m, AIMessage) and m.name in WORKERS
                   and not m.tool_calls and m.content]
        return "\n\n".join(answers) or "Done."

    def worker(name: str) -> Callable[[list[BaseMessage]], AIMessage | str]:
        def respond(messages: list[BaseMessage]) -> AIMessage | str:
            request = _request_of(messages, catalogue)
            mine = [p for a, p in request.parts if a == name]
            tool = WORKER_TOOL.get(name)
            last_handoff = max((i for i, m in enumerate(messages) if isinstance(m, AIMessage)
                                and any(tc["name"] == f"transfer_to_{name}" for tc in m.tool_calls)), default=0)
            used = any(isinstance(m, ToolMessage) and m.name == tool for m in messages[last_handoff:])
            if tool and not used:  # one tool call per part, all in one message
                return AIMessage(content="", tool_calls=[
                    {"name": tool, "args": {"query": p}, "id": _call_id(), "type": "tool_call"} for p in mine])
            return f"[{name}] " + " ".join(f"Answer to: {p}" for p in mine)
        return respond

    rules: dict[str, Any] = {"You are a supervisor": supervisor}
    rules.update({phrase: worker(w) for w, phrase in WORKERS.items()})
    return by_system_prompt(rules)


def build_supervisor(fake: BenchChatModel) -> Any:
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent
    from langgraph_supervisor import create_supervisor

    @tool
    def run_sql(query: str) -> str:
        """Run one read-only SQL query on the store database."""
        return "[(5,)]"

    @tool
    def search_help_center(query: str) -> str:
        """Search the help center for passages about the query."""
        return "[1] Refunds: you can ask for a refund within 14 days of purchase."

    tools = {"run_sql": run_sql, "search_help_center": search_help_center}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_react_agent moved to langchain.agents
        workers = [
            create_react_agent(fake, tools=[tools[WORKER_TOOL[w]]] if w in WORKER_TOOL else [], name=w,
                               prompt=f"{phrase}. Answer the part of the user's request that is yours.")
            for w, phrase in WORKERS.items()
        ]
        return create_supervisor(workers, model=fake, prompt=SUPERVISOR_PROMPT).compile()


def classify_supervisor_calls(fake: BenchChatModel) -> dict[str, int]:
    out = {"routing": 0, "final": 0, "worker_tool": 0, "worker_answer": 0}
    for messages, reply in zip(fake.calls, fake.replies, strict=True):
        system = str(messages[0].content) if messages else ""
        if system.startswith("You are a supervisor"):
            out["routing" if reply.tool_calls else "final"] += 1
        else:
            out["worker_tool" if reply.tool_calls else "worker_answer"] += 1
    return out


def image_message(text: str) -> HumanMessage:
    data = base64.b64encode(IMAGE.read_bytes()).decode()
    return HumanMessage(content=[{"type": "text", "text": text},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}])


async def figure2(services: Services) -> dict[str, Any]:
    from langgraph.checkpoint.memory import InMemorySaver

    fake = switchboard_fake()
    services.registry.use_chat_model(BENCH_MODEL, fake)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    catalogue = {r.text: r for rs in BY_K.values() for r in rs}
    sup_fake = BenchChatModel(respond=supervisor_script(catalogue))
    supervisor = build_supervisor(sup_fake)
    rows = []
    for k, requests in BY_K.items():
        for n, request in enumerate(requests):
            fake.reset()
            turn, _ = await ask(sb, request, f"fig2-{k}-{n}")
            sb_calls = len(fake.calls)
            triage_calls = sum(TRIAGE_PROMPT in str(m[0].content) for m in fake.calls)
            row: dict[str, Any] = {
                "k": k, "request": request.text, "image": request.image, "intended": request.agents,
                "triage_agents": [s.agent for s in turn.subtasks], "split_ok": split_ok(turn, request),
                "switchboard": {"llm_calls": sb_calls, "triage_llm_calls": triage_calls,
                                "specialist_calls": sb_calls - triage_calls, "ledger_entries": len(turn.ledger),
                                "depth": llm_depth(turn), "all_ok": all(r["ok"] for r in turn.results)},
            }
            sup_fake.reset()
            message = image_message(request.text) if request.image else HumanMessage(request.text)
            state = await supervisor.ainvoke({"messages": [message]})
            calls = classify_supervisor_calls(sup_fake)
            row["supervisor"] = {
                "llm_calls": len(sup_fake.calls), **calls,
                "depth": len(sup_fake.calls),  # one thing at a time: every call waits for the previous one
                "workers_answered": [m.name for m in state["messages"] if isinstance(m, AIMessage)
                                     and m.name in WORKERS and not m.tool_calls],
                "answer_has_every_part": all(p in str(state["messages"][-1].content) for _, p in request.parts),
            }
            rows.append(row)
    return {"requests": rows}


def print_figure2(f: dict[str, Any]) -> None:
    print("\n== 2. LLM calls per k-part request: Switchboard vs langgraph-supervisor (create_supervisor + one "
          "create_react_agent\nworker per specialist), the same scripted fake model class, every call that reaches it counted")
    table = []
    for r in f["requests"]:
        s, v = r["switchboard"], r["supervisor"]
        split = "yes" if r["split_ok"] else f"NO: {'+'.join(r['triage_agents'])}"
        text = r["request"] if len(r["request"]) <= 72 else r["request"][:71] + "…"
        table.append([text + (" [+image]" if r["image"] else ""), r["k"], "+".join(r["intended"]), split,
                      s["llm_calls"], f"{s['triage_llm_calls']}+{s['specialist_calls']}", s["depth"],
                      v["llm_calls"], f"{v['routing']}+{v['worker_tool'] + v['worker_answer']}+{v['final']}",
                      v["depth"]])
    print(format_table(["request", "k", "parts", "triage split as intended", "SB calls", "triage+spec.",
                        "SB depth", "sup calls", "route+work+final", "sup depth"], table))
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in f["requests"]:
        by_k[r["k"]].append(r)
    rows = []
    for k, rs in sorted(by_k.items()):
        def mean(system: str, field: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.mean(r[system][field] for r in rs)
        sb, sup = mean("switchboard", "llm_calls"), mean("supervisor", "llm_calls")
        rows.append([k, len(rs), f"{sb:.2f}", f"{sup:.2f}", f"{sup / sb:.1f}x", f"{mean('switchboard', 'depth'):.2f}",
                     f"{mean('supervisor', 'depth'):.2f}"])
    print()
    print(format_table(["k", "requests", "Switchboard calls", "supervisor calls", "ratio", "SB depth",
                        "sup depth"], rows))
    print("""
What the calls are for:
  Switchboard: triage is a local classifier, with an LLM call only for a part it is unsure of
    (the 'triage' count); then one call per part to its specialist (the SQL call writes the query
    and the answer sentence at once; retrieval runs before the RAG call, no tool round-trip);
    synthesis joins the answers without a call. Parts run in parallel: depth (calls in sequence)
    is 1, unless a part waits on another -- in an image turn every SQL part waits for what vision
    read, related or not (depth 2).
  supervisor: 'route' = one supervisor call per handoff, deciding the next worker; 'work' = the
    workers' calls: sql and rag call their tool, then answer (2 calls; two parts for one worker go
    out as two tool calls in one message), vision and general answer directly (1 call); 'final'
    = one more supervisor call that writes the reply once every worker is back. Nothing runs in
    parallel, so depth = calls. Two parts for one worker cost the supervisor one handoff, and
    Switchboard two specialist calls (last k=4 rows).
  Not measured: the supervisor's parallel handoffs (parallel_tool_calls=True). With
    langgraph-supervisor 0.0.31 only one of the handed-off workers runs and the supervisor loops
    (langgraph-supervisor-py issue #230).""")
    for r in f["requests"]:
        problems = []
        if not r["split_ok"]:
            problems.append(f"triage gave {r['triage_agents']}, intended {r['intended']}")
        if not r["switchboard"]["all_ok"]:
            problems.append("a Switchboard specialist failed")
        if r["switchboard"]["ledger_entries"] != r["switchboard"]["llm_calls"]:
            problems.append(f"ledger has {r['switchboard']['ledger_entries']} calls, the fake saw {r['switchboard']['llm_calls']}")
        if sorted(r["supervisor"]["workers_answered"]) != sorted(set(r["intended"])):
            problems.append(f"supervisor workers answered: {r['supervisor']['workers_answered']}")
        if not r["supervisor"]["answer_has_every_part"]:
            problems.append("the supervisor's final answer misses a part")
        for p in problems:
            print(f"  ! {r['request']!r}: {p}")


# --- figure 3: throughput under concurrency ------------------------------------------------------
async def figure3(services: Services, data_dir: Path, levels: Sequence[int], turns_per_conversation: int,
                  latency_s: float, repeats: int) -> dict[str, Any]:
    results = []
    for level in levels:
        fake = switchboard_fake(latency_s)
        services.registry.use_chat_model(BENCH_MODEL, fake)
        settings = bench_settings(data_dir, checkpoint_url=f"sqlite:///{data_dir / f'fig3-{level}.sqlite'}")
        runs = []
        async with open_checkpointer(settings) as saver:
            sb = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
            fake.latency_s = 0.0
            for i, r in enumerate(MIX[:3]):  # warm this graph and checkpointer up
                await ask(sb, r, f"fig3-warm-{level}-{i}")
            fake.latency_s = latency_s
            for rep in range(repeats):
                runs.append(await _throughput_run(sb, fake, level, rep, turns_per_conversation, latency_s))
        median = sorted(runs, key=lambda r: r["turns_per_s"])[len(runs) // 2]
        results.append({**median, "runs_turns_per_s": [r["turns_per_s"] for r in runs]})
    return {"latency_ms": latency_s * 1000, "turns_per_conversation": turns_per_conversation, "repeats": repeats,
            "levels": results}


async def _throughput_run(sb: Switchboard, fake: BenchChatModel, level: int, rep: int, turns_per_conversation: int,
                          latency_s: float) -> dict[str, Any]:
    fake.reset()
    per_conv: list[list[tuple[TurnResult, float]]] = [[] for _ in range(level)]

    async def conversation(c: int) -> None:
        for t in range(turns_per_conversation):
            per_conv[c].append(await ask(sb, MIX[(c + t) % len(MIX)], f"fig3-{level}-{rep}-{c}"))

    cpu0, loop0, started = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(conversation(c) for c in range(level)))
    wall = time.perf_counter() - started
    cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
    turns = [t for conv in per_conv for t in conv]
    n = len(turns)
    ideal_makespan = max(sum(llm_depth(t) for t, _ in conv) * latency_s for conv in per_conv)
    lat = [w for _, w in turns]
    ideal_lat = [llm_depth(t) * latency_s for t, _ in turns]
    return {
        "conversations": level, "turns": n, "wall_s": round(wall, 3),
        "turns_per_s": round(n / wall, 2), "ideal_turns_per_s": round(n / ideal_makespan, 2),
        "fraction_of_ideal": round(ideal_makespan / wall, 3),
        "turn_latency": summary(lat), "ideal_turn_latency_ms": round(statistics.mean(ideal_lat) * 1000, 1),
        "added_latency_p50_ms": round(percentile([a - b for a, b in zip(lat, ideal_lat, strict=True)], 50) * 1000, 1),
        "llm_calls": len(fake.calls), "triage_llm_calls": sum(t.triage.get("llm_calls", 0) for t, _ in turns),
        "max_llm_calls_in_flight": fake.max_in_flight, "model_entry_points": dict(fake.paths),
        "process_cpu_ms_per_turn": round(cpu / n * 1000, 1), "loop_cpu_ms_per_turn": round(loop_cpu / n * 1000, 1),
        "loop_bound_turns_per_s": round(n / loop_cpu, 1) if loop_cpu else None,
        "failed_parts": sum(not r["ok"] for t, _ in turns for r in t.results),
        "mis_split": sum(not split_ok(t, MIX[(c + i) % len(MIX)]) for c, conv in enumerate(per_conv)
                         for i, (t, _) in enumerate(conv)),
    }


def print_figure3(f: dict[str, Any]) -> None:
    print(f"\n== 3. Throughput: conversations at once (distinct threads, {f['turns_per_conversation']} turns each, "
          f"SQLite checkpointer), fake model with {f['latency_ms']:.0f} ms per call; median of {f['repeats']} run(s)")
    rows = []
    for r in f["levels"]:
        spread = f"{min(r['runs_turns_per_s']):.1f}-{max(r['runs_turns_per_s']):.1f}"
        rows.append([r["conversations"], r["turns"], f"{r['wall_s']:.2f}", f"{r['turns_per_s']:.1f}", spread,
                     f"{r['ideal_turns_per_s']:.1f}", f"{r['fraction_of_ideal']:.2f}",
                     f"{r['turn_latency']['p50_ms']:.0f}", f"{r['turn_latency']['p99_ms']:.0f}",
                     f"{r['ideal_turn_latency_ms']:.0f}", r["llm_calls"], r["triage_llm_calls"],
                     r["max_llm_calls_in_flight"], f"{r['loop_cpu_ms_per_turn']:.1f}",
                     f"{r['process_cpu_ms_per_turn']:.1f}", r["failed_parts"] + r["mis_split"]])
    print(format_table(["conversations", "turns", "wall s", "turns/s", "runs' range", "ideal turns/s",
                        "fraction of ideal", "turn p50 ms", "turn p99 ms", "ideal turn ms", "LLM calls",
                        "triage LLM calls", "max calls in flight", "loop CPU ms/turn", "process CPU ms/turn",
                        "problems"], rows))
    paths = ", ".join(f"{k} x{v}" for k, v in f["levels"][-1]["model_entry_points"].items())
    print(f"The gateway reached the fake model through: {paths} (each call sleeps {f['latency_ms']:.0f} ms there).")
    print("ideal = every turn takes exactly its sequential LLM-call depth x latency (here every turn has depth 1) and\n"
          "conversations never wait for each other; fraction = ideal wall time / measured wall time.\n"
          "loop CPU = CPU time of the thread running the event loop, where all orchestration runs (classifier,\n"
          "retrieval, SQL guard, ledger writes, LangGraph); 1000 / loop CPU ms per turn bounds turns/s however\n"
          "many conversations wait on the model. process CPU adds the worker threads (SQLite savers, ONNX).")


# --- profile -------------------------------------------------------------------------------------
async def profile_turns(services: Services, data_dir: Path, turns: int) -> str:
    fake = switchboard_fake()
    services.registry.use_chat_model(BENCH_MODEL, fake)
    settings = bench_settings(data_dir, checkpoint_url=f"sqlite:///{data_dir / 'profile.sqlite'}")
    async with open_checkpointer(settings) as saver:
        sb = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        for i, r in enumerate(MIX):
            await ask(sb, r, f"prof-warm-{i % 3}")
        prof = cProfile.Profile()
        prof.enable()
        for i in range(turns):
            await ask(sb, MIX[i % len(MIX)], f"prof-{i % 5}")
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(30)
    project = "|".join(f"{ROOT}/{d}/" for d in ("agents", "graphs", "tools", "knowledge", "switchboard"))
    stats.sort_stats("cumulative").print_stats(project, 30)
    stats.sort_stats("tottime").print_stats(25)
    return buf.getvalue()


# --- main ----------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="sb-overhead-"))
    figures: dict[str, Any] = {"machine": machine_load(), "data_dir": str(data_dir)}
    try:
        services = Services(bench_settings(data_dir))
        setup = await warm_up(services)
        print(f"setup (classifier, knowledge-base ingest, database): {setup:.1f} s; {machine_load()}")
        if 1 in args.figures:
            figures["overhead"] = await figure1(services, data_dir, args.turns, args.conversations)
            print_figure1(figures["overhead"])
        if 2 in args.figures:
            figures["llm_calls"] = await figure2(services)
            print_figure2(figures["llm_calls"])
        if 3 in args.figures:
            figures["throughput"] = await figure3(services, data_dir, args.concurrency, args.turns_per_conversation,
                                                  args.latency_ms / 1000, args.repeats)
            print_figure3(figures["throughput"])
        if args.profile:
            print("\n== cProfile of sequential turns (zero-latency fake, SQLite checkpointer)")
            print(await profile_turns(services, data_dir, args.profile))
        figures["machine_after"] = machine_load()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller run (fewer turns, fewer turns per conversation)")
    ap.add_argument("--turns", type=int, help="figure 1: measured turns per checkpointer (default 200; quick 60)")
    ap.add_argument("--conversations", type=int, default=10, help="figure 1: conversations the turns are spread over")
    ap.add_argument("--concurrency", type=int, nargs="+", help="figure 3: conversations at once (default 1 10 50)")
    ap.add_argument("--turns-per-conversation", type=int, help="figure 3: turns per conversation (default 4; quick 2)")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="figure 3: fake model latency per call")
    ap.add_argument("--repeats", type=int, help="figure 3: runs per level, the median is shown (default 3; quick 1)")
    ap.add_argument("--figures", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--profile", type=int, nargs="?", const=100, default=0, metavar="TURNS",
                    help="also print a cProfile of TURNS sequential turns (default 100)")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    args = ap.parse_args(argv)
    args.turns = args.turns or (60 if args.quick else 200)
    args.turns_per_conversation = args.turns_per_conversation or (2 if args.quick else 4)
    args.concurrency = args.concurrency or ([1, 50] if args.quick else [1, 10, 50])
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    started = time.monotonic()
    result = asyncio.run(main(arguments))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\nbench time {result['elapsed_s']:.0f} s")
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"figures written to {arguments.json}")
