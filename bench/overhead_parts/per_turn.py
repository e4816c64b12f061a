"""Figure 1: orchestration overhead per turn on a zero-latency fake model, with the SQLite and the
in-memory checkpointer, and where the time goes."""

from __future__ import annotations

import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage

from bench.common import cpu_probe_ms, format_table
from bench.fake_models import BenchChatModel
from bench.overhead_parts.probe import Probe, instrument, instrument_saver
from bench.overhead_parts.stack import BENCH_MODEL, MIX, ask, bench_settings, split_ok, summary, switchboard_fake
from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.persistence import open_checkpointer
from switchboard.services import Services

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
        variants["SqliteSaver"] = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        variants["InMemorySaver"] = Switchboard(build_support_graph(services=services, checkpointer=memory), services)

        for name, sb in variants.items():  # first turns pay for imports and lazy setup: not measured
            for i, r in enumerate(MIX * 2):
                await ask(sb, r, f"warm-{name}-{i % 3}")

        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        problems: list[str] = []
        order = list(variants)
        probe.active = True
        speeds: list[float] = []  # the machine's speed during the run (a shared VM's drifts by a third)
        for i in range(turns):
            if i % 20 == 0:
                probe.active = False
                speeds.append(cpu_probe_ms())
                probe.active = True
            conv = i % conversations
            request = MIX[(i // conversations + conv) % len(MIX)]  # each conversation walks MIX from its own offset
            for name in order if i % 2 == 0 else order[::-1]:  # alternate which variant goes first
                probe.take()
                fake.reset()
                cpu = time.process_time()  # the process's CPU, all threads (checkpointer, audit, ONNX)
                turn, wall = await ask(variants[name], request, f"fig1-{name}-{conv}")
                cpu = time.process_time() - cpu
                parts, counts = probe.take()
                if not split_ok(turn, request):
                    problems.append(f"{request.text!r}: triage gave {[s.agent for s in turn.subtasks]}")
                if len(fake.calls) != request.k:
                    problems.append(f"{request.text!r}: {len(fake.calls)} LLM calls for {request.k} parts")
                if not all(r["ok"] for r in turn.results):
                    problems.append(f"{request.text!r}: a specialist failed: {[r['error'] for r in turn.results]}")
                rows[name].append({
                    "k": request.k, "wall": wall, "cpu": cpu, "llm_calls": len(fake.calls),
                    "triage_llm_calls": turn.triage.get("llm_calls", 0), **parts,
                    **{f"n_{b}": c for b, c in counts.items()},
                })
        probe.active = False

    out: dict[str, Any] = {"turns": turns, "conversations": conversations, "variants": {},
                           "cpu_probe_ms": {"median": round(statistics.median(speeds), 1),
                                            "min": round(min(speeds), 1), "max": round(max(speeds), 1)}}
    for name, rs in rows.items():
        for r in rs:
            r["rest"] = r["wall"] - r.get("triage", 0.0)
            r["other"] = r["rest"] - r.get("work", 0.0)
        out["variants"][name] = {
            "wall": summary([r["wall"] for r in rs]),
            "cpu": summary([r["cpu"] for r in rs]),
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
    from tools.models.gateway import call_model

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
                     f"{s['cpu']['mean_ms']:.1f}", s["llm_calls"], s["triage_llm_calls"]])
    ks = sorted(next(iter(v.values()))["by_k"])
    print(format_table(["checkpointer", "turns", "p50 ms", "p99 ms", "mean ms", "max ms",
                        *(f"p50 {k}-part" for k in ks), "CPU ms/turn", "LLM calls", "triage LLM calls"], rows))
    print("CPU ms/turn: the process's CPU time (all its threads) per turn, mean. A process spending C ms per "
          "turn on one core finishes at most 1000 / C turns per second, however many conversations wait.")
    probe = f["cpu_probe_ms"]
    print(f"CPU probe every 20 turns (bench/common.py; lower is faster): median {probe['median']:.1f} ms, "
          f"{probe['min']:.1f}-{probe['max']:.1f}. This VM's speed drifts by a third within minutes: compare "
          "runs at similar probes, or p50 in probes: " + ", ".join(
              f"{name} {s['wall']['p50_ms'] / probe['median']:.1f}" for name, s in v.items()))
    sq, mem = v.get("SqliteSaver"), v.get("InMemorySaver")
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


