"""Everything replicas share, on a real PostgreSQL (scripts/postgres.sh): turn locks that die with
their session, budgets reserved atomically by racing "replicas" (separate engines), the response
cache, and Chainlit's chat history tables."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from switchboard.turn_locks import ConversationBusy, PostgresTurnLocks
from switchboard.ui.data_layer import prepare_ui_database, ui_database_url
from tools.models.ledger import Ledger, Limit, Refusal, Reservation, ledger_url
from tools.models.values import LedgerEntry

PG_URL = os.environ.get("SWITCHBOARD_PG_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="SWITCHBOARD_PG_URL is not set: run `eval \"$(scripts/postgres.sh)\"`")


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    """A database of this module's own, dropped at the end."""
    name = f"sb_shared_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_URL.rpartition('/')[0]}/{name}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- turn locks ----------------------------------------------------------------------------------
async def test_a_conversation_is_one_turn_at_a_time_across_replicas(db_url: str):
    replica_a, replica_b = PostgresTurnLocks(db_url, wait_s=0.3), PostgresTurnLocks(db_url, wait_s=3)
    try:
        async with replica_a.hold("conv-1"):
            with pytest.raises(ConversationBusy):
                async with PostgresTurnLocks(db_url, wait_s=0.3).hold("conv-1"):
                    pass
            async with replica_b.hold("conv-2"):  # another conversation is not held up
                pass
        async with replica_b.hold("conv-1"):  # released by a: b goes ahead
            pass
    finally:
        await replica_a.aclose()
        await replica_b.aclose()


async def test_a_killed_replica_frees_its_conversations_at_once(db_url: str):
    dying, survivor = PostgresTurnLocks(db_url, wait_s=5), PostgresTurnLocks(db_url, wait_s=5)
    entered = asyncio.Event()

    async def turn_that_never_ends() -> None:
        async with dying.hold("conv-k"):
            entered.set()
            await asyncio.sleep(600)

    task = asyncio.create_task(turn_that_never_ends())
    await entered.wait()
    pid = (await (await dying._conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
    with psycopg.connect(db_url, autocommit=True) as admin:  # the replica's session ends (process killed)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    try:
        async with survivor.hold("conv-k"):  # the next message, on another replica, gets the conversation
            pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await survivor.aclose()
        await dying.aclose()


# --- budgets -------------------------------------------------------------------------------------
def test_replicas_racing_for_a_budget_never_pass_it(db_url: str):
    url = ledger_url(db_url, Path('unused'))  # a PostgreSQL checkpointer: no file
    replicas = [Ledger(url) for _ in range(4)]
    limit = Limit("daily", f"race-{uuid.uuid4().hex}", 0.10)
    results: list[Reservation | Refusal] = []
    lock = threading.Lock()
    start = threading.Barrier(len(replicas))

    def replica(ledger: Ledger) -> None:
        start.wait()
        for _ in range(10):
            got = ledger.reserve(0.01, [limit])
            with lock:
                results.append(got)

    threads = [threading.Thread(target=replica, args=(ledger,)) for ledger in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    granted = [r for r in results if isinstance(r, Reservation)]
    assert len(results) == 40
    assert len(granted) == 10  # exactly the budget's worth, however the 40 attempts interleaved
    assert replicas[0].spent(day=limit.key) == pytest.approx(0.10)
    assert all(isinstance(r, Refusal) and r.limit == 0.10 for r in results if r not in granted)


def test_a_call_settles_its_reservation_and_a_failed_call_gives_it_back(db_url: str):
    ledger = Ledger(ledger_url(db_url, data_dir=None))  # type: ignore[arg-type]
    thread = f"conv-{uuid.uuid4().hex}"
    limits = [Limit("conversation", thread, 1.0)]
    got = ledger.reserve(0.30, limits)
    assert isinstance(got, Reservation) and got.spent_after["conversation"] == pytest.approx(0.30)
    entry = LedgerEntry(agent="sql", task="q", model="big", model_version="1", tokens_in=10, tokens_out=5,
                        cost_usd=0.05, latency_ms=3)
    ledger.record(entry, thread, got)
    ledger.record(entry, thread, got)  # recorded twice (a retried write): one row, one cost
    assert ledger.spent(thread_id=thread) == pytest.approx(0.05)
    assert [c["call_id"] for c in ledger.calls(thread)] == [entry.call_id]
    failed = ledger.reserve(0.30, limits)
    assert isinstance(failed, Reservation)
    ledger.release(failed)
    assert ledger.spent(thread_id=thread) == pytest.approx(0.05)


def test_the_response_cache_is_shared(db_url: str):
    url = ledger_url(db_url, Path('unused'))
    one, two = Ledger(url), Ledger(url)
    key = uuid.uuid4().hex
    one.store(key, "m", "cached answer", 3, 4, ttl_s=60)
    assert two.cached(key, ttl_s=60) == ("cached answer", 3, 4)
    assert two.cached(key, ttl_s=0) is None  # expired for a zero TTL


# --- chat history ----------------------------------------------------------------------------------
async def test_chat_history_tables_on_postgres_round_trip(db_url: str, make_settings):
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.user import User

    url = ui_database_url(make_settings(checkpoint_url=db_url))
    assert url.startswith("postgresql+psycopg://")
    prepare_ui_database(url)
    prepare_ui_database(url)  # idempotent: a second replica starting
    layer = SQLAlchemyDataLayer(conninfo=url)
    user = await layer.create_user(User(identifier=f"alice-{uuid.uuid4().hex[:6]}"))
    assert user is not None
    thread = str(uuid.uuid4())
    await layer.update_thread(thread, name="Refund question", user_id=user.id, metadata={"policy": "balanced"})
    got = await layer.get_thread(thread)
    assert got is not None and got["name"] == "Refund question"
    assert await layer.get_thread_author(thread) == user.identifier  # what the sidebar's ownership check reads
    assert (await layer.get_user(user.identifier)).id == user.id  # type: ignore[union-attr]
    await layer.engine.dispose()


# --- replicas starting together ------------------------------------------------------------------
async def test_replicas_starting_together_on_an_empty_database_all_start(make_settings, tmp_path):
    """Found by bench/scale.py: two replicas on a fresh database both ran LangGraph's checkpoint
    migrations and one died on a unique violation. Schema work now waits for one advisory lock."""
    from concurrent.futures import ThreadPoolExecutor

    from switchboard.persistence import open_checkpointer
    from tools.observability.audit import AuditTrail, audit_url

    name = f"sb_start_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_URL.rpartition('/')[0]}/{name}"
    try:
        settings = make_settings(checkpoint_url=url)

        async def replica() -> str:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            async with open_checkpointer(settings) as saver:
                return "postgres" if isinstance(saver, AsyncPostgresSaver) else type(saver).__name__

        def stores(_: int) -> int:
            ledger, audit = Ledger(ledger_url(url, tmp_path)), AuditTrail(audit_url(url, tmp_path))
            return ledger.count() + len(audit.turns())

        with ThreadPoolExecutor(4) as pool:
            counts = list(pool.map(stores, range(4)))
        assert counts == [0, 0, 0, 0]
        assert await asyncio.gather(*(replica() for _ in range(4))) == ["postgres"] * 4
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
