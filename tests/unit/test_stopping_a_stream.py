"""Stopping a streamed turn at the doors closes the turn's event generator at once, wherever the
cancellation lands (the end-to-end versions: tests/integration/test_http_streaming.py and
tests/e2e/test_streaming_ui.py). A generator left suspended keeps its model calls running until
the garbage collector happens to close it, and the turn cannot be closed cleanly before that."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from switchboard import lifecycle
from switchboard.server import stream_turn
from switchboard.ui.turn_view import show_turn


class Turn:
    """A turn's events: one, then a model that writes forever; notes when it is closed."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.closed = asyncio.Event()

    async def events(self) -> AsyncGenerator[lifecycle.Event, None]:
        try:
            yield lifecycle.Notice("first")
            self.running.set()
            await asyncio.sleep(3600)
            yield lifecycle.Notice("never")
        finally:
            self.closed.set()


async def test_the_chat_closes_the_turn_when_stopped_while_showing_an_event() -> None:
    turn = Turn()
    showing, stopped = asyncio.Event(), []

    class View:  # what show_turn uses of a TurnView
        who, thread_id = None, "t"

        async def on(self, event: Any) -> None:
            showing.set()
            await asyncio.sleep(3600)  # a message being saved or sent when the user presses stop

        async def stopped(self) -> None:
            stopped.append(True)

    events = turn.events()
    task = asyncio.create_task(show_turn(events, View()))
    await showing.wait()
    task.cancel()  # the stop button
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and stopped == [True]
    assert turn.closed.is_set()  # closed now, not when collected


async def test_the_http_stream_closes_the_turn_when_its_client_goes_away() -> None:
    turn = Turn()
    stops: list[bool] = []

    async def on_stop() -> None:
        stops.append(turn.closed.is_set())  # the turn is closed only once its generator has ended

    async def client() -> None:
        async for _ in stream_turn(turn.events(), "chatcmpl-1", "switchboard", False, on_stop):
            pass

    task = asyncio.create_task(client())
    await turn.running.wait()  # the server waits for the model's next token
    task.cancel()  # the client disconnected
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert turn.closed.is_set() and stops == [True]
