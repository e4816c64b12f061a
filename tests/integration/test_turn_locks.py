"""One turn per conversation at a time, across processes: file locks (SQLite default) here, the
PostgreSQL advisory locks in test_shared_state_postgres.py; the HTTP door's 409 and /readyz."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from switchboard import server
from switchboard.server import create_app
from switchboard.turn_locks import ConversationBusy, FileTurnLocks, lock_key
from tests.stacks import KEY, scripted_board, serve_in_thread

HOLDER = """
import asyncio, sys
from pathlib import Path
from switchboard.turn_locks import FileTurnLocks

async def main():
    async with FileTurnLocks(Path(sys.argv[1]), 5).hold("shared-thread"):
        print("held", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_second_turn_of_a_conversation_waits_for_the_first(tmp_path: Path):
    locks = FileTurnLocks(tmp_path, wait_s=5)
    order: list[str] = []

    async def turn(name: str, hold_s: float) -> None:
        async with locks.hold("t1"):
            order.append(f"{name} in")
            await asyncio.sleep(hold_s)
            order.append(f"{name} out")

    first = asyncio.create_task(turn("a", 0.2))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, turn("b", 0))
    assert order == ["a in", "a out", "b in", "b out"]  # never interleaved


async def test_a_conversation_busy_past_the_wait_is_refused_and_others_are_not_blocked(tmp_path: Path):
    locks = FileTurnLocks(tmp_path, wait_s=0.3)
    async with locks.hold("busy"):
        started = time.monotonic()
        with pytest.raises(ConversationBusy, match="busy with another turn"):
            async with locks.hold("busy"):
                pass
        assert time.monotonic() - started >= 0.25
        other = next(t for t in (f"other-{i}" for i in range(100)) if locks._path(t) != locks._path("busy"))
        async with locks.hold(other):  # another conversation goes ahead at once
            pass
    async with locks.hold("busy"):  # released
        pass


async def test_the_lock_spans_processes_and_dies_with_its_holder(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        locks = FileTurnLocks(tmp_path, wait_s=0.3)
        with pytest.raises(ConversationBusy):  # another process has the conversation
            async with locks.hold("shared-thread"):
                pass
        holder.kill()  # a replica killed mid-turn: the kernel releases its lock
        holder.wait(10)
        async with locks.hold("shared-thread"):
            pass
    finally:
        holder.kill()


def test_lock_keys_are_stable_signed_64_bit_and_distinct():
    keys = {lock_key(f"thread-{i}") for i in range(1000)}
    assert len(keys) == 1000 and all(-(2**63) <= k < 2**63 for k in keys)
    assert lock_key("a") == lock_key("a")


def test_http_a_second_message_for_a_busy_conversation_is_409(make_settings):
    settings = make_settings(turn_wait_s=0.5)
    gate = threading.Event()

    async def hold_open(messages) -> None:  # the first turn's model call stays open until released
        while not gate.is_set():
            await asyncio.sleep(0.02)

    board, fake, _ = scripted_board(settings)
    fake.before_reply = hold_open
    app = create_app(settings, board, api_keys=[KEY])
    body = {"model": "switchboard", "messages": [{"role": "user", "content": "Hello!"}]}
    headers = {"Authorization": f"Bearer {KEY}", "X-Conversation-Id": "busy-conv"}
    with serve_in_thread(app) as url:
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: results.setdefault(
            "first", httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)))
        first.start()
        deadline = time.monotonic() + 10
        while not fake.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        second = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        gate.set()
        first.join(30)
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "conversation_busy"
    assert second.headers["Retry-After"] and second.headers["X-Conversation-Id"] == "busy-conv"
    assert results["first"].status_code == 200  # the first turn was not disturbed
    assert len(fake.calls) == 1  # the refused message never reached a model


def test_readyz_says_ready_and_503_when_the_store_does_not_answer(make_settings, tmp_path: Path):
    settings = make_settings()
    board, _, _ = scripted_board(settings)
    with serve_in_thread(create_app(settings, board, api_keys=[KEY])) as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        server.DRAINING.set()  # what SIGTERM does in a `switchboard serve` process
        try:
            draining = httpx.get(f"{url}/readyz", timeout=10)
        finally:
            server.DRAINING.clear()
        board.services.audit.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'audit.sqlite'}")
        broken = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert draining.status_code == 503 and draining.json() == {"status": "draining"}
    assert broken.status_code == 503 and broken.json()["status"] == "unavailable"
