"""Durability: a process killed in the middle of a turn, between specialists, and started again.

Real processes, a real SIGKILL: ``kill_worker.py first`` asks a two-part turn (SQL + RAG) against
the real support graph, SQLite checkpointer, audit trail and gateway ledger, with scripted models;
SQL answers at once, RAG blocks inside its model call. Once SQL's result is in the checkpoint and
RAG is mid-call, the process is killed. ``kill_worker.py resume`` (a new process, same data
folder) calls ``Switchboard.recover``. Measured across both processes: which graph nodes ran
where, how many times each specialist's model was called, the checkpoint before and after, the
audit trail's records and the gateway ledger's rows for the thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from graphs.support import build_support_graph
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings

WORKER = Path(__file__).with_name("kill_worker.py")
THREAD = "durable"
TIMEOUT_S = 60.0  # bounds only the failure cases; a passing run polls its way through in seconds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def worker_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(SWITCHBOARD_DATA_DIR=str(data_dir), SWITCHBOARD_CACHE_TTL_S="0", PYTHONUNBUFFERED="1")
    return env


def events(work: Path) -> list[dict[str, Any]]:
    path = work / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ledger_rows(settings: Settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.ledger_path) as db:
        return db.execute("SELECT agent, subtask_id FROM ledger_calls WHERE thread_id = ? ORDER BY id", (THREAD,)).fetchall()


async def checkpointed(graph: Any) -> dict[str, Any]:
    """The thread's last checkpoint: what still has to run, and which tasks' results are saved."""
    snap = await graph.aget_state({"configurable": {"thread_id": THREAD}})
    return {"next": snap.next, "done": {t.name: t.result for t in snap.tasks if t.result is not None},
            "pending": sorted(t.name for t in snap.tasks if t.result is None), "values": snap.values}


async def test_a_turn_killed_between_specialists_resumes_without_rerunning_or_duplicating(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    settings = Settings(data_dir=data, cache_ttl_s=0)
    env = worker_env(data)
    first_log = tmp_path / "first.log"

    # 1. the first process: run until SQL's result is checkpointed and RAG is inside its model call
    with first_log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(WORKER), "first", "--work", str(work)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (work / "rag-started").exists():
            if proc.poll() is not None:
                pytest.fail(f"the first worker exited ({proc.returncode}) before RAG's model call:\n"
                            f"{first_log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"RAG's model call did not start within {TIMEOUT_S:.0f} s:\n{first_log.read_text()}")
            await asyncio.sleep(0.1)
        async with open_checkpointer(settings) as saver:
            graph = build_support_graph(services=Services(settings), checkpointer=saver)
            while "sql" not in (before := await checkpointed(graph))["done"]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"SQL's result never reached the checkpoint: {before}\n{first_log.read_text()}")
                await asyncio.sleep(0.1)
        assert proc.poll() is None, "the first worker must still be mid-turn when it is killed"
        killed_at = time.monotonic()
        proc.kill()  # SIGKILL: no cleanup, no finally, no atexit in the worker
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    first_pid = proc.pid

    # what the kill left behind: SQL done and saved, RAG started and not
    assert before["next"] == ("rag",) and before["pending"] == ["rag"]
    [sql_before] = before["done"]["sql"]["results"]
    assert sql_before["ok"] and sql_before["answer"] == "We have 59 customers."
    [sql_call_before] = before["done"]["sql"]["ledger"]
    assert ledger_rows(settings) == [("sql", sql_before["subtask_id"])]  # RAG's call never completed
    assert Services(settings).audit.turns(thread=THREAD) == []  # written by `synthesize` only

    # 2. a new process on the same data: recover the turn
    try:
        resumed = subprocess.run([sys.executable, str(WORKER), "resume", "--work", str(work)], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # the child is killed by run(); show what it said
        pytest.fail(f"resume did not finish within {TIMEOUT_S:.0f} s:\n{exc.stdout}\n{exc.stderr}")
    kill_to_answer_s = time.monotonic() - killed_at
    assert resumed.returncode == 0, f"resume failed:\n{resumed.stdout}\n{resumed.stderr}"
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    turn = out["turn"]
    assert out["unfinished_before"] is True and out["unfinished_after"] is False

    # the answer has both parts, in the order asked
    assert "We have 59 customers." in turn["answer"] and "14 days" in turn["answer"]
    assert turn["answer"].index("59") < turn["answer"].index("14 days")
    assert [s["agent"] for s in turn["subtasks"]] == ["sql", "rag"]
    assert sorted(r["agent"] for r in turn["results"]) == ["rag", "sql"] and all(r["ok"] for r in turn["results"])

    # finished specialists did not run again: graph nodes and model calls, per process
    log = events(work)
    resume_pid = next(e["pid"] for e in log if e["pid"] != first_pid)
    nodes = {pid: [e["node"] for e in log if e["pid"] == pid and e["event"] == "node-start"]
             for pid in (first_pid, resume_pid)}
    ended = [e["node"] for e in log if e["pid"] == first_pid and e["event"] == "node-end"]
    assert sorted(nodes[first_pid]) == ["rag", "sql", "triage"] and sorted(ended) == ["sql", "triage"]
    assert nodes[resume_pid] == ["rag", "synthesize"]
    calls = Counter((e["agent"], "first" if e["pid"] == first_pid else "resume") for e in log if e["event"] == "call")
    assert calls == {("sql", "first"): 1, ("rag", "first"): 1, ("rag", "resume"): 1}

    # the turn's ledger: SQL's entry is the one checkpointed before the kill, nothing twice
    assert sorted(e["agent"] for e in turn["ledger"]) == ["rag", "sql"]
    assert next(e for e in turn["ledger"] if e["agent"] == "sql")["call_id"] == sql_call_before["call_id"]

    # the audit trail: one record for the turn, both subtasks, each call once
    [rec] = Services(settings).audit.turns(thread=THREAD)
    assert rec["turn_id"] == f"{THREAD}:0" and rec["answer_id"] == turn["answer_id"]
    assert [s["agent"] for s in rec["subtasks"]] == ["sql", "rag"] and all(s["ok"] for s in rec["subtasks"])
    assert sorted(c["agent"] for c in rec["calls"]) == ["rag", "sql"] and rec["llm_calls"] == 2
    assert len({c["call_id"] for c in rec["calls"]}) == 2
    assert sql_call_before["call_id"] in {c["call_id"] for c in rec["calls"]}

    # the gateway's persistent ledger (what budgets are computed from): one row per completed call
    assert sorted(ledger_rows(settings)) == [("rag", "t2"), ("sql", "t1")]

    # the conversation: one question, one answer, and the turn is remembered for the next one
    async with open_checkpointer(settings) as saver:
        graph = build_support_graph(services=Services(settings), checkpointer=saver)
        after = await checkpointed(graph)
    assert after["next"] == () and [m.type for m in after["values"]["messages"]] == ["human", "ai"]
    assert [t["agents"] for t in after["values"]["turns"]] == [["rag", "sql"]]  # sorted by `synthesize`

    print(f"\nmeasured: 1 turn killed between specialists (sql checkpointed, rag mid-call); "
          f"re-run on recovery: nodes {nodes[resume_pid]}, model calls sql=0 rag=1; "
          f"audit records for the turn: 1 (calls: {len(rec['calls'])}); gateway ledger rows: "
          f"{len(ledger_rows(settings))}; kill -> recovered answer {kill_to_answer_s:.1f} s "
          f"(new process {out['process_s']:.1f} s, of which recover() {out['recover_s']:.2f} s)")


def test_recover_says_when_there_is_nothing_to_recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from switchboard.cli import main

    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert main(["recover", "never-started"]) == 2
    assert "no unfinished turn to recover" in capsys.readouterr().err
