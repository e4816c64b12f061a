"""Figure 2: LLM calls per k-part request, Switchboard next to the ``langgraph-supervisor`` baseline
on the same requests and the same scripted fake model class."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from bench.common import format_table
from bench.fake_models import BenchChatModel
from bench.overhead_parts.stack import BENCH_MODEL, BY_K, TRIAGE_PROMPT, ask, llm_depth, split_ok, switchboard_fake
from bench.overhead_parts.supervisor import (
    WORKERS,
    build_supervisor,
    classify_supervisor_calls,
    image_message,
    supervisor_script,
)
from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services


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


