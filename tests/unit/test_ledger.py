"""The ledger on its zero-setup default, SQLite: budgets reserved atomically by several processes'
ledgers (here: four engines on one file, racing from threads), settled by the call's real cost,
released by a failed call; the response cache's TTL. The same on PostgreSQL:
tests/integration/test_shared_state_postgres.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tools.models import ledger as ledger_module
from tools.models.ledger import Ledger, Limit, Refusal, Reservation, ledger_url
from tools.models.values import LedgerEntry


def entry(cost: float) -> LedgerEntry:
    return LedgerEntry(agent="sql", task="q", model="big", model_version="1", tokens_in=10, tokens_out=5,
                       cost_usd=cost, latency_ms=3)


def test_four_ledgers_racing_on_one_sqlite_file_never_pass_the_budget(tmp_path: Path):
    url = ledger_url("", tmp_path)
    ledgers = [Ledger(url) for _ in range(4)]
    limits = [Limit("daily", "2026-12-05", 0.10), Limit("conversation", "t1", 0.07)]
    granted: list[Reservation | Refusal] = []
    start = threading.Barrier(4)

    def worker(ledger: Ledger) -> None:
        start.wait()
        for _ in range(5):
            granted.append(ledger.reserve(0.01, limits))

    threads = [threading.Thread(target=worker, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(isinstance(g, Reservation) for g in granted) == 7  # the tighter (conversation) limit
    refusals = [g for g in granted if isinstance(g, Refusal)]
    assert len(refusals) == 13 and {r.scope for r in refusals} == {"conversation"}
    # a refused reservation gave back what it had taken from the scopes before the refusing one
    assert ledgers[0].spent(day="2026-12-05") == pytest.approx(0.07)
    assert ledgers[1].spent(thread_id="t1") == pytest.approx(0.07)


def test_settle_release_and_costs_without_a_budget(tmp_path: Path):
    ledger = Ledger(ledger_url("", tmp_path))
    held = ledger.reserve(0.50, [Limit("conversation", "t2", 1.0)])
    assert isinstance(held, Reservation)
    ledger.record(entry(0.125), "t2", held)
    assert ledger.spent(thread_id="t2") == pytest.approx(0.125)  # the estimate became the cost
    failed = ledger.reserve(0.50, [Limit("conversation", "t2", 1.0)])
    assert isinstance(failed, Reservation)
    ledger.release(failed)
    assert ledger.spent(thread_id="t2") == pytest.approx(0.125)
    ledger.record(entry(0.25), "t2")  # no budget checked this call: its cost still counts
    assert ledger.spent(thread_id="t2") == pytest.approx(0.375)
    assert [round(c["cost_usd"], 3) for c in ledger.calls("t2")] == [0.125, 0.25]


def test_the_cache_answers_within_its_ttl_and_expired_rows_are_purged(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ledger_module, "PURGE_EVERY", 2)
    ledger = Ledger(ledger_url("", tmp_path))
    ledger.store("k1", "m", "answer one", 1, 2, ttl_s=60)
    assert ledger.cached("k1", ttl_s=60) == ("answer one", 1, 2)
    assert ledger.cached("k1", ttl_s=0) is None
    monkeypatch.setattr(ledger_module.time, "time", lambda: 10**10)  # far in the future: k1 expired
    ledger.store("k2", "m", "answer two", 1, 2, ttl_s=60)  # the second write purges
    with ledger.engine.connect() as conn:
        keys = [r[0] for r in conn.exec_driver_sql("SELECT key FROM response_cache")]
    assert keys == ["k2"]
