"""Figure 3: throughput with many conversations at once on a fake model with a fixed latency per
call, against the ideal where conversations never wait for each other."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import format_table
from bench.eval_common import percentile
from bench.fake_models import BenchChatModel
from bench.overhead_parts.stack import (
    BENCH_MODEL,
    MIX,
    ask,
    bench_settings,
    llm_depth,
    split_ok,
    summary,
    switchboard_fake,
)
from graphs.support import build_support_graph
from switchboard.api import Switchboard, TurnResult
from switchboard.persistence import open_checkpointer
from switchboard.services import Services


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


