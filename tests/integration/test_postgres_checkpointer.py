"""Conversations persist in a real PostgreSQL (started by scripts/postgres.sh) across a restart."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
import threading
import uuid

import pytest

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.persistence import open_checkpointer
from tests.stacks import scripted_services

PG_URL = os.environ.get("SWITCHBOARD_PG_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="SWITCHBOARD_PG_URL is not set: run `eval \"$(scripts/postgres.sh)\"`")


async def test_conversation_survives_restart_on_postgres(make_settings):
    # no response cache: with a PostgreSQL checkpointer it lives in that database, shared by every run
    settings = make_settings(checkpoint_url=PG_URL, cache_ttl_s=0)
    thread = f"pg-{uuid.uuid4().hex}"
    services, _ = scripted_services(settings)
    async with open_checkpointer(settings) as saver:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        assert isinstance(saver, AsyncPostgresSaver)
        first = await Switchboard(build_support_graph(services=services, checkpointer=saver), services).ask(
            "How many customers do we have?", thread_id=thread
        )
    assert first.answer == "We have 59 customers."
    services2, fake2 = scripted_services(settings)
    async with open_checkpointer(settings) as saver:
        turn = await Switchboard(build_support_graph(services=services2, checkpointer=saver), services2).ask(
            "and how many of them are from Brazil?", thread_id=thread
        )
        state = await build_support_graph(services=services2, checkpointer=saver).aget_state(
            {"configurable": {"thread_id": thread}}
        )
    assert turn.answer == "5 of them are from Brazil."
    assert "We have 59 customers." in str(fake2.calls[-1][-1].content)
    assert len(state.values["turns"]) == 2 and len(state.values["messages"]) == 4


async def test_checkpoints_jsonb_is_written_with_orjson(make_settings):
    """Every step writes a checkpoint's JSONB: the pool's connections encode it with orjson (the
    standard library's encoder was ~5% of a replica's event loop under load). Same JSON, compact."""
    from psycopg.adapt import PyFormat
    from psycopg.types.json import Jsonb

    settings = make_settings(checkpoint_url=PG_URL, cache_ttl_s=0)
    async with open_checkpointer(settings) as saver:
        async with saver.conn.connection() as conn:  # type: ignore[union-attr]
            dumper = conn.adapters.get_dumper(Jsonb, PyFormat.TEXT)(Jsonb, conn)
            assert bytes(dumper.dump(Jsonb({1: "é", "v": [1.5, None]}))) == '{"1":"é","v":[1.5,null]}'.encode()


def test_only_serializers_are_moved_onto_the_loop():
    """switchboard.persistence.postgres_saver_class runs upstream's methods with a to_thread that
    calls in place. That is right only for CPU work on values in memory: if an upgrade of
    langgraph-checkpoint-postgres hands anything else to a thread there (I/O, say), this fails."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from switchboard.persistence import SERDE_ON_THE_LOOP, SERIALIZERS

    for name in SERDE_ON_THE_LOOP:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(AsyncPostgresSaver, name))))
        handed = [ast.unparse(call.args[0]) for call in ast.walk(tree) if isinstance(call, ast.Call)
                  and ast.unparse(call.func) == "asyncio.to_thread"]
        assert handed, f"{name} hands nothing to a thread any more: drop it from SERDE_ON_THE_LOOP"
        assert {h.removeprefix("self.") for h in handed} <= set(SERIALIZERS), (name, handed)


async def test_checkpoints_are_serialized_on_the_event_loop(make_settings, monkeypatch):
    """A turn's checkpoint writes and reads run their serializers on the loop's thread (a hand-off
    per write cost more than the work), and the conversation reads back whole."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from switchboard.persistence import SERIALIZERS

    threads: dict[str, set[str]] = {name: set() for name in SERIALIZERS}

    def spying(name: str):
        upstream = getattr(AsyncPostgresSaver, name)

        def spy(self, *args, **kwargs):
            threads[name].add(threading.current_thread().name)
            return upstream(self, *args, **kwargs)

        return spy

    for name in SERIALIZERS:
        monkeypatch.setattr(AsyncPostgresSaver, name, spying(name))
    settings = make_settings(checkpoint_url=PG_URL, cache_ttl_s=0)
    thread = f"pg-loop-{uuid.uuid4().hex}"
    services, _ = scripted_services(settings)
    async with open_checkpointer(settings) as saver:
        board = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        await board.ask("How many customers do we have?", thread_id=thread)
        turn = await board.ask("and how many of them are from Brazil?", thread_id=thread)
        state = await board.graph.aget_state({"configurable": {"thread_id": thread}})
    assert turn.answer == "5 of them are from Brazil."
    assert len(state.values["turns"]) == 2
    loop_thread = threading.current_thread().name
    assert threads == {name: {loop_thread} for name in SERIALIZERS}, threads
