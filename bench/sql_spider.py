"""Execution accuracy of the SQL specialist on the Spider 1.0 dev subset, agent vs one raw call.

For each question both modes produce SQL over the question's own SQLite database:

* ``agent``: the SQL specialist exactly as the product runs it (``agents.sql.SQLAgent`` over a
  ``Services`` whose ``database_url`` is the Spider database): its prompt, schema selection,
  value grounding, guard, validation and the execution-guided choice (a second opinion from the
  ``CREATE TABLE`` view when the first query fails or looks wrong; a third call with the error fed
  back only when both failed).
* ``raw``: the same model called once with the full ``CREATE TABLE`` statements from
  ``sqlite_master`` and the question; the SQL is extracted from the reply and run once.

A prediction is correct when its result equals the gold query's: compared as a multiset of rows,
or as a list when the gold query orders its output (top-level ORDER BY). Values compare exactly
except floats, rounded to 6 decimals. The agent's query is re-run here without its 50-row display
cap; ``limit-cut`` counts wrong answers that would match without the query's own LIMIT (the agent's
prompt once asked for LIMIT 20 on lists; the display limit is now applied when rows are shown).

The questions are Spider's; they are never used as examples or to tune prompts.

    .venv/bin/python bench/sql_spider.py --limit 200 --mode both --seed 0 --out /tmp/spider.jsonl
    .venv/bin/python bench/sql_spider.py --mode both --out /tmp/spider-all.jsonl --resume  # all 972; resumable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlglot
from langchain_core.messages import HumanMessage, SystemMessage
from sqlglot.errors import SqlglotError

from agents.sql import SQLAgent
from bench.common import format_table, machine_load, stratified_sample
from switchboard.services import Services
from switchboard.settings import REPO_ROOT, Settings
from tools.models.gateway import call_model
from tools.models.registry import ModelHandle

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "sql" / "spider_dev_subset"
DEFAULT_MODEL = "local-qwen2.5-coder-1.5b"
QUERY_TIMEOUT_S = 10.0
RAW_MAX_TOKENS = 256
FLOAT_DECIMALS = 6

Mode = Literal["agent", "raw"]

RAW_SYSTEM = """You are an SQLite expert. Given the database schema, write one SQLite query that answers the question.
Reply with the SQL query only."""
RAW_USER = """{schema}

Question: {question}"""

_FENCE = re.compile(r"```(?:sql|sqlite)?\s*(.+?)```", re.S | re.I)
_QUERY_START = re.compile(r"\b(SELECT|WITH)\b", re.I)


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Example:
    index: int  # line number in dev_subset.jsonl, to find the question again
    db_id: str
    question: str
    gold: str


def load_examples(data_dir: Path) -> list[Example]:
    path = data_dir / "dev_subset.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"Spider dev subset not found: {path} (pass --data)")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = [json.loads(ln) for ln in lines]
    return [Example(i, r["db_id"], r["question"], r["query"]) for i, r in enumerate(rows)]


def database_path(data_dir: Path, db_id: str) -> Path:
    path = data_dir / "database" / db_id / f"{db_id}.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"Spider database missing: {path}")
    return path


# --------------------------------------------------------------------------------------------
# Executing and comparing results (the same executor for gold and predicted SQL, both modes)


class ExecutionFailed(RuntimeError):
    """A query did not run: SQLite's error, or the time limit."""


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection (``mode=ro``): predictions in raw mode never pass the guard."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def execute(path: Path, sql: str, timeout_s: float = QUERY_TIMEOUT_S) -> list[tuple[Any, ...]]:
    """All rows of ``sql``; raises :class:`ExecutionFailed` on an error or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with read_only(path) as conn:
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")  # a few Spider rows are latin-1
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        except (sqlite3.Error, sqlite3.Warning) as exc:
            raise ExecutionFailed(str(exc) or type(exc).__name__) from exc


def _normalised(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(round(v, FLOAT_DECIMALS) if isinstance(v, float) else v for v in row)


def orders_output(sql: str) -> bool:
    """True when the query's own top-level ORDER BY fixes the row order."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except SqlglotError:
        return bool(re.search(r"\border\s+by\b", sql, re.I))  # judge by the text: gold always runs
    return tree.args.get("order") is not None


def same_result(gold: list[tuple[Any, ...]], predicted: list[tuple[Any, ...]], ordered: bool) -> bool:
    """Spider's execution match: equal lists when the gold is ordered, equal multisets otherwise."""
    g, p = [_normalised(r) for r in gold], [_normalised(r) for r in predicted]
    return g == p if ordered else Counter(g) == Counter(p)


def without_limit(sql: str) -> str | None:
    """The query without its top-level LIMIT, or None when it has none (or does not parse)."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except SqlglotError:
        return None
    if tree.args.get("limit") is None:
        return None
    tree.set("limit", None)
    return tree.sql(dialect="sqlite")


def extract_sql(text: str) -> str:
    """The query in a raw reply: a fenced block, else from the first SELECT/WITH to a ';'."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = _QUERY_START.search(body)
    if start is None:
        return body.strip()
    return body[start.start() :].split(";")[0].strip()


# --------------------------------------------------------------------------------------------
# The two modes


@dataclass
class Outcome:
    index: int
    db_id: str
    mode: Mode
    question: str
    gold: str
    sql: str  # the query that answered; "" when the agent gave up (scored wrong)
    last_attempt: str  # the agent's last query, even a failed one (diagnostics only)
    correct: bool
    ran: bool  # the predicted SQL executed (right or wrong)
    limit_cut: bool
    error: str
    seconds: float
    model_calls: int
    tokens_in: int
    tokens_out: int
    attempts: list[dict[str, str]]  # the agent's queries and why each failed (raw: one, unchecked)


def raw_schema(path: Path) -> str:
    """The database's own CREATE TABLE statements, as a one-shot text-to-SQL prompt gets them."""
    with read_only(path) as conn:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        ).fetchall()
    return ";\n\n".join(r[0].strip() for r in rows) + ";"


def handoff(example: Example) -> dict[str, Any]:
    """What the graph hands the SQL node for a one-question conversation."""
    subtask = {"id": f"q{example.index}", "agent": "sql", "task": example.question, "route": "spider",
               "confidence": 1.0, "reason": "benchmark", "depends_on": [], "extract_only": False}
    return {"subtask": subtask, "summary": "", "entities": {}, "evidence": [], "image_path": None,
            "policy": "balanced"}


class Runner:
    """Runs questions in either mode; one model instance serves every database."""

    def __init__(self, data_dir: Path, model: str, work_dir: Path) -> None:
        self.data_dir = data_dir
        self.model = model
        self.work_dir = work_dir
        self.registry = Services(Settings(data_dir=work_dir)).registry
        if model not in self.registry.specs:
            raise SystemExit(f"unknown model {model!r}; registry models: {', '.join(self.registry.specs)}")
        if not self.registry.specs[model].available():
            raise SystemExit(f"model {model!r} is not available: enable it or set its API key")
        # Separate roles keep separate llama.cpp KV caches, so each mode's prompt prefix stays warm.
        self.sql_chat = self.registry.handle(model, role="sql").chat
        self.raw_handle: ModelHandle = self.registry.handle(model, role="raw")
        self._agents: dict[str, SQLAgent] = {}
        self._schemas: dict[str, str] = {}

    def agent(self, db_id: str) -> SQLAgent:
        if db_id not in self._agents:
            url = f"sqlite:///{database_path(self.data_dir, db_id)}"
            services = Services(Settings(data_dir=self.work_dir, database_url=url))
            services.registry.use_chat_model(self.model, self.sql_chat, roles=("sql",))
            self._agents[db_id] = SQLAgent(services, model=self.model)
        return self._agents[db_id]

    def close(self) -> None:
        for agent in self._agents.values():
            agent.services.db.close()

    async def run(self, example: Example, mode: Mode) -> Outcome:
        started = time.perf_counter()
        if mode == "agent":
            sql, attempts, calls, t_in, t_out, error = await self._agent(example)
        else:
            sql, attempts, calls, t_in, t_out, error = await self._raw(example)
        seconds = time.perf_counter() - started  # model + guard + validation, not the scoring below
        correct, ran, limit_cut, exec_error = self._score(example, sql)
        last = attempts[-1]["sql"] if attempts else ""
        return Outcome(example.index, example.db_id, mode, example.question, example.gold, sql, last, correct, ran,
                       limit_cut, error or exec_error, round(seconds, 2), calls, t_in, t_out, attempts)

    async def _agent(self, example: Example) -> tuple[str, list[dict[str, str]], int, int, int, str]:
        update = await self.agent(example.db_id)(handoff(example))  # type: ignore[arg-type]
        result, ledger = update["results"][0], update["ledger"]
        sql = str(result["evidence"].get("sql", ""))
        attempts = [dict(a) for a in result["evidence"].get("attempts") or []]
        error = "" if result["ok"] else str(result["error"])
        t_in, t_out = sum(e["tokens_in"] for e in ledger), sum(e["tokens_out"] for e in ledger)
        return sql, attempts, len(ledger), t_in, t_out, error

    async def _raw(self, example: Example) -> tuple[str, list[dict[str, str]], int, int, int, str]:
        if example.db_id not in self._schemas:
            self._schemas[example.db_id] = raw_schema(database_path(self.data_dir, example.db_id))
        messages = [
            SystemMessage(RAW_SYSTEM),
            HumanMessage(RAW_USER.format(schema=self._schemas[example.db_id], question=example.question)),
        ]
        reply, entry = await call_model(self.raw_handle, messages, agent="raw", task=example.question,
                                        max_tokens=RAW_MAX_TOKENS)
        sql = extract_sql(str(reply.content))
        return sql, [{"sql": sql, "error": ""}], 1, entry.tokens_in, entry.tokens_out, ""

    def _score(self, example: Example, sql: str) -> tuple[bool, bool, bool, str]:
        """(correct, ran, limit_cut, error) of a predicted query against the gold result."""
        if not sql:
            return False, False, False, "no SQL"
        path = database_path(self.data_dir, example.db_id)
        gold = execute(path, example.gold)  # all gold queries run (checked by the data's authors)
        ordered = orders_output(example.gold)
        try:
            predicted = execute(path, sql)
        except ExecutionFailed as exc:
            return False, False, False, f"execution: {exc}"
        if same_result(gold, predicted, ordered):
            return True, True, False, ""
        unlimited = without_limit(sql) if without_limit(example.gold) is None else None
        if unlimited is not None:
            try:
                return False, True, same_result(gold, execute(path, unlimited), ordered), ""
            except ExecutionFailed:
                return False, True, False, ""
        return False, True, False, ""


# --------------------------------------------------------------------------------------------
# Reporting


def _accuracy(outcomes: Sequence[Outcome]) -> str:
    if not outcomes:
        return "-"
    hits = sum(o.correct for o in outcomes)
    return f"{hits / len(outcomes):.1%} ({hits}/{len(outcomes)})"


def summary_table(outcomes: Sequence[Outcome], modes: Sequence[Mode]) -> str:
    rows = []
    for mode in modes:
        mine = [o for o in outcomes if o.mode == mode]
        if not mine:
            continue
        rows.append([
            mode,
            len(mine),
            _accuracy(mine),
            sum(not o.ran for o in mine),
            sum(o.limit_cut for o in mine),
            f"{statistics.mean(o.seconds for o in mine):.2f}",
            f"{statistics.median(o.seconds for o in mine):.2f}",
            f"{statistics.mean(o.model_calls for o in mine):.2f}",
            f"{statistics.mean(o.tokens_in for o in mine):.0f}",
        ])
    headers = ["mode", "questions", "execution accuracy", "no result", "limit-cut", "mean s/q", "median s/q",
               "calls/q", "prompt tok/q"]
    return format_table(headers, rows)


def per_database_table(outcomes: Sequence[Outcome], modes: Sequence[Mode]) -> str:
    by_db: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        by_db[o.db_id][o.mode].append(o)
    rows = [
        [db, max(len(v) for v in by_db[db].values()), *(_accuracy(by_db[db][m]) for m in modes)]
        for db in sorted(by_db)
    ]
    return format_table(["database", "questions", *modes], rows)


# --------------------------------------------------------------------------------------------
# Main


async def main(args: argparse.Namespace) -> None:
    examples = load_examples(args.data)
    if args.limit:
        examples = stratified_sample(examples, key=lambda e: e.db_id, n=args.limit, seed=args.seed)
    examples.sort(key=lambda e: (e.db_id, e.index))  # one database at a time: its prompt prefix stays cached
    modes: list[Mode] = ["agent", "raw"] if args.mode == "both" else [args.mode]
    print(f"Spider dev subset: {len(examples)} questions over {len({e.db_id for e in examples})} databases; "
          f"model {args.model}; modes {', '.join(modes)}; seed {args.seed}; {machine_load()}", flush=True)
    outcomes = resumed(args.out, examples) if args.resume else []
    done = {(o.index, o.mode) for o in outcomes}
    if done:
        print(f"resuming: {len(done)} answers already in {args.out}", flush=True)
    out = args.out.open("a" if args.resume else "w", encoding="utf-8") if args.out else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sb-spider-") as work:
        runner = Runner(args.data, args.model, Path(work))
        try:
            for n, example in enumerate(examples, 1):
                for mode in modes:
                    if (example.index, mode) in done:
                        continue
                    outcome = await runner.run(example, mode)
                    outcomes.append(outcome)
                    if out is not None:
                        out.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
                        out.flush()
                    mark = "ok " if outcome.correct else ("cut" if outcome.limit_cut else "no ")
                    print(f"[{n}/{len(examples)}] {mode:<5} {mark} {outcome.seconds:5.1f}s {example.db_id}: "
                          f"{example.question[:60]!r} -> {(outcome.sql or outcome.last_attempt)[:100]!r}"
                          + (f" ({outcome.error[:80]})" if outcome.error else ""), flush=True)
        finally:
            runner.close()
            if out is not None:
                out.close()
    print(f"\nfinished in {(time.monotonic() - started) / 60:.1f} min; {machine_load()}")
    print("\nPer database:\n" + per_database_table(outcomes, modes))
    print("\n" + summary_table(outcomes, modes))


def resumed(path: Path | None, examples: Sequence[Example]) -> list[Outcome]:
    """The outcomes an interrupted run already wrote to ``path`` for these questions (a full run is hours)."""
    if path is None:
        raise SystemExit("--resume needs --out, the file the interrupted run wrote")
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            kept.append(Outcome(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut off when the run was killed; that question runs again
    # keep every whole line (also answers to questions outside this run's sample): a cut-off last
    # line would otherwise be glued to the next write
    path.write_text("".join(json.dumps(asdict(o), ensure_ascii=False) + "\n" for o in kept), encoding="utf-8")
    wanted = {e.index for e in examples}
    return [o for o in kept if o.index in wanted]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a model name from switchboard/config/models.yaml")
    ap.add_argument("--limit", type=int, default=0, help="a seeded sample of N questions, stratified by database")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["agent", "raw", "both"], default="both")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the spider_dev_subset folder")
    ap.add_argument("--out", type=Path, help="write one JSON line per question and mode here")
    ap.add_argument("--resume", action="store_true", help="keep the answers already in --out and run the rest")
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
