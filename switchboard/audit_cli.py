"""`switchboard audit` and `switchboard compare`: reading the audit trail from the terminal.

    switchboard audit [--thread ID] [--since TIME] [--agent NAME] [--model NAME] [--json|--csv]
    switchboard audit --summary            # per model and per agent: calls, cost, p50/p95, escalations
    switchboard compare CHAMPION CHALLENGER
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from switchboard.services import Services
from switchboard.settings import Settings
from tools.observability.audit import parse_since

TURN_COLUMNS = ["time", "thread_id", "turn_index", "policy", "agents", "models", "llm_calls", "cache_hits",
                "tokens_in", "tokens_out", "cost_usd", "latency_ms", "escalations", "fallbacks", "errors",
                "answer_id", "question"]


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="query the audit trail (one decision record per turn)")
    audit.add_argument("--thread", help="only this conversation")
    audit.add_argument("--since", help="ISO date/time (2026-11-24T18:00) or an age (30m, 2h, 7d)")
    audit.add_argument("--agent", help="only turns with a subtask for this agent (sql, rag, vision, general)")
    audit.add_argument("--model", help="only turns that called this registry model")
    audit.add_argument("--limit", type=int, help="only the newest N turns")
    fmt = audit.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON record per line, with its calls")
    fmt.add_argument("--csv", action="store_true", help="one CSV row per turn")
    fmt.add_argument("--summary", action="store_true", help="per model and per agent: calls, cost, latency, escalations")

    cmp_ = sub.add_parser("compare", help="champion vs challenger, side by side, from the audit trail")
    cmp_.add_argument("champion")
    cmp_.add_argument("challenger")
    cmp_.add_argument("--since", help="ISO date/time or an age (30m, 2h, 7d)")
    cmp_.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trail = Services(settings).audit
    if args.command == "compare":
        from tools.observability.compare import compare

        report = compare(trail, args.champion, args.challenger, since=since)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(render_compare(report))
        return 0
    if args.summary:
        summary = trail.summary(since=since)
        if getattr(args, "json", False):
            print(json.dumps(summary, indent=2))
        else:
            print(render_summary(summary))
        return 0
    turns = trail.turns(thread=args.thread, since=since, agent=args.agent, model=args.model, limit=args.limit)
    if args.json:
        for t in turns:
            print(json.dumps(t, ensure_ascii=False, default=str))
    elif args.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=TURN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for t in turns:
            w.writerow(_flat(t))
    else:
        print(render_turns(turns))
    return 0


def _flat(t: dict[str, Any]) -> dict[str, Any]:
    return {**t, "agents": "+".join(s["agent"] for s in t["subtasks"]),
            "models": "+".join(sorted({c["model"] for c in t["calls"]})) or "-"}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("%", "").replace("$", "").replace("-", "", 1).isdigit()


def render_turns(turns: list[dict[str, Any]]) -> str:
    if not turns:
        return "no turns recorded for these filters"
    rows = [[t["time"], t["thread_id"][:24], "+".join(s["agent"] for s in t["subtasks"]) or "-",
             _flat(t)["models"], t["llm_calls"], t["cache_hits"], f"${t['cost_usd']:.5f}", t["latency_ms"],
             t["escalations"], t["fallbacks"], t["errors"], (t["question"] or "")[:48]] for t in turns]
    return _table(["time", "thread", "agents", "models", "calls", "cached", "cost", "ms", "esc", "fallb", "err",
                   "question"], rows) + f"\n{len(turns)} turn(s)"


def render_summary(summary: dict[str, list[dict[str, Any]]]) -> str:
    out = []
    for key in ("model", "agent"):
        rows = [[r[key], r["calls"], r["cached"], r["tokens_in"], r["tokens_out"], f"${r['cost_usd']:.5f}",
                 f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{100 * r['escalation_rate']:.1f}%",
                 f"{100 * r['fallback_rate']:.1f}%"] for r in summary[key]]
        out.append(f"per {key}\n" + (_table([key, "calls", "cached", "tokens in", "tokens out", "cost", "p50 ms",
                                             "p95 ms", "escalated", "fallback"], rows) if rows else "(no calls)"))
    return "\n\n".join(out)


def render_compare(report: dict[str, Any]) -> str:
    a, b = report["champion"], report["challenger"]
    keys = [("subtasks", "subtasks answered"), ("shadow_calls", "of which in shadow"),
            ("validator_pass_rate", "validator pass rate"), ("escalation_rate", "escalation rate"),
            ("feedback_up", "thumbs up"), ("feedback_down", "thumbs down"), ("cost_usd", "cost (USD)"),
            ("cost_per_call_usd", "cost per call"), ("p50_ms", "latency p50 ms"), ("p95_ms", "latency p95 ms"),
            ("errors", "errors")]
    rows = [[label, _fmt(a.get(k)), _fmt(b.get(k))] for k, label in keys]
    text = _table(["", a["model"], b["model"]], rows)
    return text + f"\n\n{report['paired']} subtask(s) answered by both (shadow pairs)."


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if v < 1 else f"{v:.1f}"
    return str(v)
