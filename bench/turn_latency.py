"""Per-turn latency of the demo questions on the configured models (default: the local model).

Runs each demo question on a fresh thread: cold (first call of each agent: the model is loaded
and its prompt prefix read), then warm (the llama.cpp KV cache holds each agent's fixed prefix;
response cache off), then once more with the response cache on (an identical request is
answered from it). Prints, per turn: wall time, LLM calls, prompt and output tokens, model time.

    uv run python bench/turn_latency.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from switchboard.api import Switchboard
from switchboard.settings import Settings

QUESTIONS = [
    "How many customers are from Brazil?",
    "What's your refund policy?",
    "How many customers are from Germany, and what are your support hours?",
    "Hello!",
]


async def main(repeat: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    started = time.monotonic()
    async with Switchboard.open(Settings(data_dir=data, cache_ttl_s=0)) as sb:
        _ = sb.services.kb  # demo ingest is setup, not turn latency
        _ = sb.services.triage
        print(f"setup (classifier, knowledge base): {time.monotonic() - started:.1f} s")
        print(f"{'run':<5} {'question':<72} {'wall s':>7} {'calls':>5} {'tok in':>6} {'tok out':>7} {'model s':>7}")
        walls: dict[str, list[float]] = {}
        for run in range(repeat):
            for n, q in enumerate(QUESTIONS):
                turn = await sb.ask(q, thread_id=f"bench-{run}-{n}")
                model_s = sum(e["latency_ms"] for e in turn.ledger) / 1000
                t_in = sum(e["tokens_in"] for e in turn.ledger)
                t_out = sum(e["tokens_out"] for e in turn.ledger)
                walls.setdefault(q, []).append(turn.latency_ms / 1000)
                label = "cold" if run == 0 else f"warm{run}"
                print(f"{label:<5} {q[:72]:<72} {turn.latency_ms / 1000:>7.1f} {len(turn.ledger):>5} "
                      f"{t_in:>6} {t_out:>7} {model_s:>7.1f}")
        if repeat > 1:
            warm = [w for ws in walls.values() for w in ws[1:]]
            print(f"\nwarm turns: median {statistics.median(warm):.1f} s, max {max(warm):.1f} s")
    async with Switchboard.open(Settings(data_dir=data)) as sb:
        for q in QUESTIONS:  # first fills the response cache, second is served from it
            await sb.ask(q, thread_id="fill")
            turn = await sb.ask(q, thread_id="cached")
            print(f"{'cache':<5} {q[:72]:<72} {turn.latency_ms / 1000:>7.1f} "
                  f"{sum(not e['cached'] for e in turn.ledger):>5} model calls, "
                  f"{sum(e['cached'] for e in turn.ledger)} cached")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    asyncio.run(main(ap.parse_args().repeat))
