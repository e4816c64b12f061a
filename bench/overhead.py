"""What the orchestration itself costs: the support graph on fake models that answer instantly
(or after a fixed delay), so every millisecond measured is Switchboard's, not a model's.

1. **Overhead per turn** -- zero-latency fake model, turns run one at a time over several
   conversations, a mix of one- and two-part requests; p50/p99/mean wall time of a turn with
   the product's SQLite checkpointer (``switchboard.sqlite_saver``) and with ``InMemorySaver``, and
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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script; ahead of site-packages, which has a stray `tests` (literalai)
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma: no telemetry calls from a benchmark

from bench.common import finish_run, machine_load  # noqa: E402
from bench.overhead_parts import stack  # noqa: E402
from bench.overhead_parts.llm_calls import figure2, print_figure2  # noqa: E402
from bench.overhead_parts.per_turn import figure1, print_figure1  # noqa: E402
from bench.overhead_parts.profiling import profile_turns  # noqa: E402
from bench.overhead_parts.stack import bench_settings, warm_up  # noqa: E402
from bench.overhead_parts.throughput import figure3, print_figure3  # noqa: E402
from switchboard.services import Services  # noqa: E402
from tools.models.knowledge_embeddings import KNOWLEDGE_EMBEDDINGS  # noqa: E402


# --- main ----------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> dict[str, Any]:
    stack.KNOWLEDGE_EMBEDDINGS[0] = args.knowledge_embeddings
    data_dir = Path(tempfile.mkdtemp(prefix="sb-overhead-"))
    figures: dict[str, Any] = {"machine": machine_load(), "data_dir": str(data_dir),
                               "knowledge_embeddings": args.knowledge_embeddings}
    try:
        services = Services(bench_settings(data_dir))
        setup = await warm_up(services)
        print(f"setup (classifier, knowledge-base ingest, database): {setup:.1f} s; {machine_load()}; "
              f"knowledge embeddings: {args.knowledge_embeddings}")
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
    ap.add_argument("--knowledge-embeddings", choices=KNOWLEDGE_EMBEDDINGS, default="mpnet",
                    help="the knowledge base's embedding model (default: the product's, mpnet)")
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
    finish_run(asyncio.run(main(arguments)), started, arguments.json)
