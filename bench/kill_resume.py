"""Durability: kill the process mid-turn (between specialists) and recover the turn, N times.

Each cycle runs ``tests/integration/kill_worker.py first`` as its own process on a fresh thread
(a two-part SQL + RAG turn on scripted models; RAG blocks inside its model call), waits until
SQL's result is in the checkpoint, sends SIGKILL, then runs ``kill_worker.py resume`` (a new
process, same data folder: ``Switchboard.recover``). Prints per cycle and in total: turns killed
and recovered, finished specialists re-run (should be 0), unfinished ones re-run, duplicated
audit records / audit calls / gateway-ledger rows (should be 0), and the time to recover: from
the kill to the recovered answer (a new Python process included) and ``recover()`` alone.

    uv run python bench/kill_resume.py [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from graphs.support import build_support_graph
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings

WORKER = Path(__file__).resolve().parents[1] / "tests" / "integration" / "kill_worker.py"
SPECIALISTS = {"sql", "rag", "vision", "general"}
TIMEOUT_S = 120.0


async def sql_checkpointed(settings: Settings, thread: str) -> bool:
    async with open_checkpointer(settings) as saver:
        graph = build_support_graph(services=Services(settings), checkpointer=saver)
        snap = await graph.aget_state({"configurable": {"thread_id": thread}})
    return any(t.name == "sql" and t.result is not None for t in snap.tasks)


async def cycle(data: Path, work: Path, thread: str, env: dict[str, str]) -> dict[str, float | int]:
    settings = Settings(data_dir=data, cache_ttl_s=0)
    argv = [sys.executable, str(WORKER), "--work", str(work), "--thread", thread]
    log = work.parent / f"{thread}.first.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*argv[:2], "first", *argv[2:]], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ((work / "rag-started").exists() and await sql_checkpointed(settings, thread)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cycle {thread}: the first worker never reached the kill point:\n{log.read_text()}")
            await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run([*argv[:2], "resume", *argv[2:]], env=env, capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    kill_to_answer = time.monotonic() - killed_at
    if resumed.returncode != 0:
        raise SystemExit(f"cycle {thread}: resume failed:\n{resumed.stdout}\n{resumed.stderr}")
    out = json.loads(resumed.stdout.strip().splitlines()[-1])

    events = [json.loads(x) for x in (work / "events.jsonl").read_text().splitlines() if x.strip()]
    ended_first = {e["node"] for e in events if e["pid"] == proc.pid and e["event"] == "node-end"}
    started_again = [e["node"] for e in events if e["pid"] != proc.pid and e["event"] == "node-start"]
    records = Services(settings).audit.turns(thread=thread)
    call_ids = Counter(c["call_id"] for r in records for c in r["calls"])
    with sqlite3.connect(settings.ledger_path) as db:
        rows = Counter(db.execute("SELECT subtask_id, agent FROM ledger_calls WHERE thread_id = ?", (thread,)).fetchall())
    answer = out["turn"]["answer"]
    return {
        "killed": 1,
        "recovered": int("59" in answer and "14 days" in answer and not out["unfinished_after"]),
        "finished_rerun": sum(1 for n in started_again if n in SPECIALISTS and n in ended_first),
        "unfinished_rerun": sum(1 for n in started_again if n in SPECIALISTS and n not in ended_first),
        "dup_records": max(0, len(records) - 1),
        "dup_calls": sum(n - 1 for n in call_ids.values()),
        "dup_ledger": sum(n - 1 for n in rows.values()),
        "kill_to_answer_s": kill_to_answer,
        "recover_s": out["recover_s"],
    }


async def main(turns: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="sb-kill-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(SWITCHBOARD_DATA_DIR=str(data / "data"), SWITCHBOARD_CACHE_TTL_S="0", ANONYMIZED_TELEMETRY="False")
    cols = ["killed", "recovered", "finished_rerun", "unfinished_rerun", "dup_records", "dup_calls", "dup_ledger"]
    print(f"{'cycle':<8}" + "".join(f"{c:>17}" for c in cols) + f"{'kill->answer s':>16}{'recover() s':>13}")
    results = []
    try:
        for i in range(turns):
            thread = f"kill-{i}"
            r = await cycle(data / "data", data / thread, thread, env)
            results.append(r)
            print(f"{thread:<8}" + "".join(f"{r[c]:>17}" for c in cols)
                  + f"{r['kill_to_answer_s']:>16.2f}{r['recover_s']:>13.3f}")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    total = {c: sum(r[c] for r in results) for c in cols}
    print(f"{'total':<8}" + "".join(f"{total[c]:>17}" for c in cols)
          + f"{statistics.median(r['kill_to_answer_s'] for r in results):>16.2f}"
          + f"{statistics.median(r['recover_s'] for r in results):>13.3f}  (medians)")
    print(f"\nturns killed: {total['killed']}, recovered: {total['recovered']}; specialists re-run: "
          f"{total['finished_rerun']} finished, {total['unfinished_rerun']} unfinished; duplicated audit records: "
          f"{total['dup_records']}, audit calls: {total['dup_calls']}, ledger rows: {total['dup_ledger']}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--turns", type=int, default=3, help="kill/recover cycles (one fresh thread each)")
    asyncio.run(main(p.parse_args().turns))
