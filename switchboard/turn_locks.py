"""One turn at a time per conversation, across every process that serves it.

Two turns of one conversation must never interleave: each reads the checkpoint the other is about
to replace, and a cut-off turn's recovery (``Switchboard.stream`` finishes it before the new
question) must not run while the turn is still alive somewhere else. Every door takes the lock in
``switchboard/api.py``; a second message for a busy conversation waits up to ``turn_wait_s`` and is
then refused with :class:`ConversationBusy` (HTTP 409, ``conversation_busy``).

* :class:`PostgresTurnLocks` (a ``postgresql://`` checkpointer, several replicas): a session-level
  advisory lock per conversation, ``pg_try_advisory_lock`` on one connection per process. PostgreSQL
  drops a session's locks when its connection ends, so a replica that is killed mid-turn frees its
  conversations at once, and the next message, on any replica, finishes the cut-off turn. Locks are
  re-entrant per session, so an in-process lock queues this process's own turns first.
* :class:`FileTurnLocks` (the SQLite default: processes of one machine, e.g. ``serve --workers``):
  ``flock`` on one of :data:`FILE_BUCKETS` files in the data dir, which the kernel releases when the
  process dies. Two conversations in one bucket wait for each other; nothing else is shared.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from tools.state_db import is_postgres

log = logging.getLogger("switchboard.locks")

FILE_BUCKETS = 4096
POLL_START_S, POLL_MAX_S = 0.02, 0.25


class ConversationBusy(RuntimeError):
    """Another turn of this conversation is still running (here or on another replica)."""

    def __init__(self, thread_id: str, waited_s: float) -> None:
        super().__init__(f"conversation {thread_id!r} is busy with another turn (waited {waited_s:.0f} s); "
                         "send the message again when that turn has finished")
        self.thread_id = thread_id
        self.waited_s = waited_s


class TurnLocks(Protocol):
    def hold(self, thread_id: str) -> Any:
        """``async with locks.hold(thread_id):`` the conversation's one turn (raises ConversationBusy)."""

    async def aclose(self) -> None: ...


def lock_key(thread_id: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, namespaced so other applications' keys do not collide."""
    digest = hashlib.blake2b(f"switchboard-turn:{thread_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _LocalQueue:
    """This process's turns of one conversation, first come first served (``asyncio.Lock`` is FIFO)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def get(self, thread_id: str) -> asyncio.Lock:
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[thread_id] = lock
        return lock


@asynccontextmanager
async def _queued(queue: _LocalQueue, thread_id: str, wait_s: float) -> AsyncIterator[float]:
    """This process's turn of the conversation, waited for at most ``wait_s``; yields when the
    wait started (the cross-process lock's wait counts from there too)."""
    started = time.monotonic()
    local = queue.get(thread_id)
    try:
        await asyncio.wait_for(local.acquire(), wait_s)
    except TimeoutError as exc:
        raise ConversationBusy(thread_id, time.monotonic() - started) from exc
    try:
        yield started
    finally:
        local.release()


async def _poll(try_once: Any, thread_id: str, deadline: float, started: float) -> None:
    """Call ``try_once()`` (True when taken) with backoff until the deadline."""
    pause = POLL_START_S
    while not await try_once():
        if time.monotonic() + pause > deadline:
            raise ConversationBusy(thread_id, time.monotonic() - started)
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_MAX_S)


class FileTurnLocks:
    def __init__(self, folder: Path, wait_s: float) -> None:
        self.folder, self.wait_s = folder, wait_s
        self._local = _LocalQueue()

    def _path(self, thread_id: str) -> Path:
        bucket = int.from_bytes(hashlib.blake2b(thread_id.encode(), digest_size=4).digest(), "big") % FILE_BUCKETS
        return self.folder / f"{bucket:03x}.lock"

    @asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        async with _queued(self._local, thread_id, self.wait_s) as started:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path(thread_id), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                async def try_once() -> bool:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return True
                    except BlockingIOError:
                        return False

                await _poll(try_once, thread_id, started + self.wait_s, started)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    async def aclose(self) -> None:
        return None


class PostgresTurnLocks:
    """Advisory locks on one autocommit connection per process and event loop."""

    def __init__(self, url: str, wait_s: float) -> None:
        self.url, self.wait_s = url, wait_s
        self._local = _LocalQueue()
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> Any:
        import psycopg

        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a connection belongs to the loop that opened it
            self._conn, self._loop, self._connecting = None, loop, asyncio.Lock()
        assert self._connecting is not None
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                if self._conn is not None:
                    log.error("the turn-lock connection to PostgreSQL was lost: turns running now are no "
                              "longer protected from a second replica; reconnecting")
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                   application_name="switchboard-turn-locks")
            return self._conn

    async def _execute(self, sql: str, key: int) -> bool:
        conn = await self._connection()
        cur = await conn.execute(sql, (key,))
        row = await cur.fetchone()
        return bool(row and row[0])

    @asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        key = lock_key(thread_id)
        async with _queued(self._local, thread_id, self.wait_s) as started:
            async def try_once() -> bool:
                return await self._execute("SELECT pg_try_advisory_lock(%s)", key)

            await _poll(try_once, thread_id, started + self.wait_s, started)
            try:
                yield
            finally:
                try:
                    await asyncio.shield(self._execute("SELECT pg_advisory_unlock(%s)", key))
                except Exception:  # noqa: BLE001 - a lost connection released it already
                    log.warning("could not release the turn lock of %s (connection lost: released by "
                                "PostgreSQL)", thread_id, exc_info=True)

    async def aclose(self) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()
        self._conn = None


def turn_locks_for(checkpoint_url: str, data_dir: Path, wait_s: float) -> TurnLocks:
    if is_postgres(checkpoint_url):
        return PostgresTurnLocks(checkpoint_url.strip(), wait_s)
    return FileTurnLocks(data_dir / "turn-locks", wait_s)
