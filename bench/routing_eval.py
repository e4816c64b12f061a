"""Triage accuracy on a small hand-written set of store requests (bench/data/routing_eval.jsonl,
written for this project; none of them are route examples). Prints exact-match accuracy of the
agent sequence, how often the LLM was asked, and decision latency.

    uv run python bench/routing_eval.py [--no-llm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from switchboard.services import Services
from switchboard.settings import Settings

DATA = Path(__file__).parent / "data" / "routing_eval.jsonl"


async def main(no_llm: bool) -> None:
    triage = Services(Settings()).triage
    triage.use_llm = not no_llm
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    hits, llm, times = 0, 0, []
    for row in rows:
        t = time.perf_counter()
        decision = await triage.decide(row["text"], has_image=row["image"])
        times.append((time.perf_counter() - t) * 1000)
        got = [s.agent for s in decision.subtasks]
        llm += decision.llm_calls
        ok = got == row["expect"]
        hits += ok
        if not ok:
            print(f"MISS {row['text']!r}: expected {row['expect']}, got {got}")
    print(f"\n{hits}/{len(rows)} exact ({hits / len(rows):.1%}); LLM asked {llm} times; "
          f"decision p50 {statistics.median(times):.1f} ms, max {max(times):.0f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-llm", action="store_true")
    asyncio.run(main(ap.parse_args().no_llm))
