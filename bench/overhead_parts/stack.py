"""What every figure runs on: settings for one fake model that can do everything (no response
cache), the requests the figures ask, the scripted model answering as each agent's (competent)
model would, and the helpers that run a turn and read it."""

from __future__ import annotations

import functools
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import BaseMessage

from bench.eval_common import latency_summary
from bench.fake_models import BenchChatModel, by_system_prompt
from switchboard.api import Switchboard, TurnResult
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings

ROOT = Path(__file__).resolve().parents[2]
BENCH_MODEL = "bench-fake"
IMAGE = ROOT / "tests" / "fixtures" / "images" / "chinook_invoice_98.png"


# --- settings: one fake model that can do everything, no response cache -------------------------
KNOWLEDGE_EMBEDDINGS = ["mpnet"]
"""The knowledge base's embedding model for every figure (``--knowledge-embeddings``): the
product's default, or MiniLM to compare with figures measured before MPNet was the default."""


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
        knowledge_embeddings=KNOWLEDGE_EMBEDDINGS[0],
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


def greeted(greeting: str, *parts: tuple[str, str]) -> Request:
    """A greeting, then real requests: triage answers the requests and makes no part of the
    greeting (agents/triage.py, _one_general_part)."""
    return req(*parts, text=" ".join([greeting, *(p for _, p in parts)]))


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
    greeted("Hi there!", RAG_PAYMENT),
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
    3: [greeted("Hello!", SQL_BRAZIL, RAG_REFUND, GEN_JOKE), req(SQL_ROCK, RAG_PAYPAL, GEN_JOKE),
        req(SQL_EMPLOYEE, RAG_DRM, GEN_FRANCE)],
    4: [req(VIS_TOTAL, SQL_BRAZIL, RAG_REFUND, GEN_JOKE, image=True),
        greeted("Hi there!", SQL_BRAZIL, RAG_REFUND, RAG_DRM, GEN_JOKE),
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

