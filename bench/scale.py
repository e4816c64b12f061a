"""Scale-out on loopback: 1 replica against 2 behind HAProxy, a replica killed under load, and
replicas racing for a small daily budget. Everything runs on this machine: PostgreSQL
(``scripts/postgres.sh``), a Chroma server, N ``switchboard serve`` replicas and HAProxy
(``scripts/cluster.sh``), and the load generator (httpx, one conversation per task).

Every model is a fake that answers after a fixed latency (``--latency-ms``, asleep: no CPU, like a
remote model; ``bench/scale_parts/replica.py``), so what is measured is Switchboard's own work per
turn and how it spreads over processes. Conversations ask one- and two-part questions (a joke
about a per-turn token, which the fake echoes; a SQL count; SQL + help center); each answer is
checked against its own question (no cross-talk).

1. **Throughput**: turns/s and p50/p99 turn latency at ``--conversations`` (10 and 50) for 1 and 2
   replicas; ideal = every turn takes its LLM-call depth x latency and conversations never wait.
   Replica CPU per turn (``/proc``, all their processes).
2. **Kill** (``--kill``): under load on 2 replicas, replica 1 is SIGKILLed in the middle of a turn
   (one slow question sent straight to it is sure to be in flight). A client whose request
   failed checks whether the cluster stored its question: if so, its next message finishes the
   cut-off turn; if not, it sends the question again. Then, from PostgreSQL: lost turns (asked,
   never recorded), duplicated turn records, duplicated ledger rows, ledger rows of work redone.
3. **Budget** (``--budget``): the fake has a price; N replicas serve conversations against a small
   daily budget (``SWITCHBOARD_BUDGET_DAY_USD``); spend recorded in the ledger against the limit.

    uv run python bench/scale.py [--quick] [--figures 1 2 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script; ahead of site-packages, which has a stray `tests` (literalai)
    sys.path.insert(0, str(ROOT))

from bench.common import finish_run, format_table, machine_cpu_seconds, machine_load  # noqa: E402
from bench.eval_common import percentile  # noqa: E402
from bench.scale_parts.load import (  # noqa: E402
    POSTGRES,
    Cluster,
    Turn,
    budget_race,
    fresh_database,
    kill_under_load,
    load,
    start_postgres,
)


def throughput_row(turns: list[Turn], wall: float, latency_s: float, conversations: int, replicas: int,
                   cpu_s: float, machine_cpu_s: float, client_cpu_s: float) -> dict[str, Any]:
    ok = [t for t in turns if t.ok]
    lat = [t.latency_s for t in ok]
    # a turn's ideal: one call per part in parallel, plus any call before or after (triage, a retry)
    depth = [1 + max(0, t.llm_calls - t.parts) for t in ok]
    per_conv: dict[str, float] = {}
    for t, d in zip(ok, depth, strict=True):
        per_conv[t.conversation] = per_conv.get(t.conversation, 0.0) + d * latency_s
    ideal_makespan = max(per_conv.values(), default=0.0)
    tokens = {tok for t in turns for tok in t.expect if "-t" in tok}
    return {
        "replicas": replicas, "conversations": conversations, "turns": len(turns), "ok": len(ok),
        "wrong_or_failed": len(turns) - len(ok), "crosstalk": sum(t.crosstalk(tokens) for t in turns),
        "wall_s": round(wall, 2), "turns_per_s": round(len(ok) / wall, 1),
        "ideal_turns_per_s": round(len(ok) / ideal_makespan, 1) if ideal_makespan else None,
        "fraction_of_ideal": round(ideal_makespan / wall, 3) if wall else None,
        "p50_ms": round(percentile(lat, 50) * 1000, 1) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1000, 1) if lat else None,
        "ideal_turn_ms": round(statistics.mean(depth) * latency_s * 1000, 1) if depth else None,
        "replica_cpu_ms_per_turn": round(cpu_s / max(1, len(turns)) * 1000, 1),
        # everything on the machine: replicas, PostgreSQL, Chroma, HAProxy and this load client
        "machine_cpu_ms_per_turn": round(machine_cpu_s / max(1, len(turns)) * 1000, 1),
        "client_cpu_ms_per_turn": round(client_cpu_s / max(1, len(turns)) * 1000, 1),  # of that, this load client
        "extra_llm_calls": sum(d - 1 for d in depth),
    }


def scaling_bound(rows: list[dict[str, Any]]) -> str:
    """What this machine allows two replicas over one, from the busiest rows' CPU per turn.

    One replica runs its Python on one core at a time (the GIL): at most 1000 / R turns/s for R ms
    of replica CPU a turn. Two replicas share the machine's cores with everything else a turn
    costs (PostgreSQL, Chroma, HAProxy, the load client): at most cores x 1000 / M turns/s for M ms
    of machine CPU a turn. So two over one is at most cores x R / M, whatever the replicas do."""
    cores = os.cpu_count() or 1
    one = max((r for r in rows if r["replicas"] == 1), key=lambda r: r["conversations"])
    two = max((r for r in rows if r["replicas"] == 2), key=lambda r: r["conversations"])
    r_ms, m_ms = one["replica_cpu_ms_per_turn"], two["machine_cpu_ms_per_turn"]
    if not r_ms or not m_ms:
        return "bound: no CPU figures"
    return (f"bound on this machine at {two['conversations']} conversations: one replica <= about {1000 / r_ms:.0f} turns/s "
            f"({r_ms} ms of its CPU a turn, one core), two <= {cores * 1000 / m_ms:.0f} turns/s ({m_ms} ms of "
            f"machine CPU a turn over {cores} cores), so two / one <= {cores * r_ms / m_ms:.2f}x")


async def figure1(pg_admin: str, run: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for replicas in (1, 2):
        db = fresh_database(pg_admin, f"sb_scale_{replicas}")
        with Cluster(replicas, run / f"fig1-{replicas}", db, args.latency_ms) as cluster:
            print(f"  {replicas} replica(s) up in {cluster.info['up_s']} s", flush=True)
            key = cluster.info["api_key"]
            await load(cluster.url, key, 8, 2, f"warm{replicas}")  # imports, caches, pools
            for conversations in args.conversations:
                cpu0, machine0, client0 = cluster.cpu_seconds(), machine_cpu_seconds(), time.process_time()
                turns, wall = await load(cluster.url, key, conversations, args.turns, f"r{replicas}c{conversations}")
                row = throughput_row(turns, wall, args.latency_ms / 1000, conversations, replicas,
                                     cluster.cpu_seconds() - cpu0, machine_cpu_seconds() - machine0,
                                     time.process_time() - client0)
                rows.append(row)
                print(f"  {replicas} replica(s), {conversations} conversations: {row['turns_per_s']} turns/s "
                      f"({row['fraction_of_ideal']} of ideal), p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms; "
                      f"{machine_load()}", flush=True)
    return rows


async def figure2(pg_admin: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    db = fresh_database(pg_admin, "sb_scale_kill")
    with Cluster(2, run / "fig2", db, args.latency_ms) as cluster:
        return await kill_under_load(cluster, db, args.kill_conversations, args.kill_turns, args.kill_after_s)


async def figure3(pg_admin: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    db = fresh_database(pg_admin, "sb_scale_budget")
    return await budget_race(run / "fig3", db, args.budget_usd, args.budget_replicas, args.budget_conversations,
                             args.latency_ms)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer turns per conversation")
    ap.add_argument("--figures", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--conversations", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--turns", type=int, help="turns per conversation in figure 1 (default 6; quick 3)")
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--kill-conversations", type=int, default=20)
    ap.add_argument("--kill-turns", type=int, default=6)
    ap.add_argument("--kill-after-s", type=float, default=1.5)
    ap.add_argument("--budget-usd", type=float, default=0.05)
    ap.add_argument("--budget-replicas", type=int, default=2)
    ap.add_argument("--budget-conversations", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.turns = args.turns or (3 if args.quick else 6)
    return args


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pg, started_pg = start_postgres()
    admin = pg["SWITCHBOARD_PG_ADMIN_URL"] if "SWITCHBOARD_PG_ADMIN_URL" in pg else pg["SWITCHBOARD_PG_URL"]
    run = Path(tempfile.mkdtemp(prefix="sb-scale-"))
    out: dict[str, Any] = {"machine": machine_load(), "latency_ms": args.latency_ms}
    try:
        if 1 in args.figures:
            print("== 1. throughput: 1 and 2 replicas behind HAProxy", flush=True)
            out["throughput"] = await figure1(admin, run, args)
            cols = ["replicas", "conversations", "turns", "ok", "crosstalk", "turns_per_s", "ideal_turns_per_s",
                    "fraction_of_ideal", "p50_ms", "p99_ms", "ideal_turn_ms", "replica_cpu_ms_per_turn",
                    "machine_cpu_ms_per_turn", "client_cpu_ms_per_turn"]
            print(format_table(cols, [[r[c] for c in cols] for r in out["throughput"]]))
            for n in args.conversations:
                one = next(r for r in out["throughput"] if r["replicas"] == 1 and r["conversations"] == n)
                two = next(r for r in out["throughput"] if r["replicas"] == 2 and r["conversations"] == n)
                print(f"{n} conversations: 2 replicas / 1 replica = {two['turns_per_s'] / one['turns_per_s']:.2f}x")
            print(scaling_bound(out["throughput"]))
        if 2 in args.figures:
            print("\n== 2. one replica SIGKILLed under load (2 replicas)", flush=True)
            out["kill"] = await figure2(admin, run, args)
            print(json.dumps(out["kill"], indent=2))
        if 3 in args.figures:
            print("\n== 3. replicas racing for a small daily budget", flush=True)
            out["budget"] = await figure3(admin, run, args)
            print(json.dumps(out["budget"], indent=2))
    finally:
        if started_pg:
            subprocess.run(["bash", str(POSTGRES), "stop"], capture_output=True, timeout=120)
    out["machine_after"] = machine_load()
    return out


if __name__ == "__main__":
    arguments = parse_args()
    began = time.monotonic()
    finish_run(asyncio.run(main(arguments)), began, arguments.json)
