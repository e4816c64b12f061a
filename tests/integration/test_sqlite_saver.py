"""The default checkpointer (switchboard/sqlite_saver.py): LangGraph's SqliteSaver, on the event loop
when SQLite answers at once and on its own thread when the database is busy. It must keep what
LangGraph's AsyncSqliteSaver kept: files written by one are read by the other (an upgrade keeps
every conversation), history, pending writes and deletion, from any event loop."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import threading
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

from switchboard import sqlite_saver
from switchboard.persistence import open_checkpointer
from switchboard.settings import Settings
from switchboard.sqlite_saver import ThreadedSqliteSaver


class Counter(TypedDict):
    said: Annotated[list[str], operator.add]


def _graph(saver):  # type: ignore[no-untyped-def]
    builder = StateGraph(Counter)
    builder.add_node("echo", lambda s: {"said": [f"echo {len(s['said'])}"]})
    builder.add_node("done", lambda s: {"said": ["done"]})
    builder.add_edge(START, "echo")
    builder.add_edge("echo", "done")
    builder.add_edge("done", END)
    return builder.compile(checkpointer=saver)


def _cfg(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


async def test_conversations_written_by_langgraphs_async_saver_are_read_and_continued(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    async with AsyncSqliteSaver.from_conn_string(str(path)) as old:
        await _graph(old).ainvoke({"said": ["hi"]}, _cfg("t1"))
    async with open_checkpointer(Settings(data_dir=tmp_path, checkpoint_url=f"sqlite:///{path}")) as saver:
        assert isinstance(saver, ThreadedSqliteSaver)
        graph = _graph(saver)
        assert (await graph.aget_state(_cfg("t1"))).values["said"] == ["hi", "echo 1", "done"]
        await graph.ainvoke({"said": ["again"]}, _cfg("t1"))
        history = [s async for s in graph.aget_state_history(_cfg("t1"))]
    assert len(history) == 8  # two runs of input + two steps + end, as LangGraph's saver records them
    async with AsyncSqliteSaver.from_conn_string(str(path)) as old:  # and back: nothing lost either way
        state = await _graph(old).aget_state(_cfg("t1"))
    assert state.values["said"] == ["hi", "echo 1", "done", "again", "echo 4", "done"]


def _spy_threads(monkeypatch) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, thread name) of every call of the saver's SQLite work."""
    calls: list[tuple[str, str]] = []
    for name in ("put", "put_writes", "get_tuple"):
        original = getattr(SqliteSaver, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((_name, threading.current_thread().name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SqliteSaver, name, spy)
    return calls


async def test_a_turns_calls_run_on_the_event_loop_and_a_deleted_thread_is_gone(tmp_path: Path, monkeypatch) -> None:
    calls = _spy_threads(monkeypatch)
    async with open_checkpointer(Settings(data_dir=tmp_path)) as saver:
        assert isinstance(saver, ThreadedSqliteSaver)
        graph = _graph(saver)
        await asyncio.gather(*(graph.ainvoke({"said": [str(i)]}, _cfg(f"c{i}")) for i in range(5)))
        for i in range(5):
            assert (await graph.aget_state(_cfg(f"c{i}"))).values["said"] == [str(i), "echo 1", "done"]
        await saver.adelete_thread("c0")
        assert (await graph.aget_state(_cfg("c0"))).values == {}
        assert [s async for s in saver.alist(_cfg("c1"), limit=2)][0].checkpoint["channel_values"]["said"][-1] == "done"
    assert {m for m, _ in calls} == {"put", "put_writes", "get_tuple"}
    assert {t for _, t in calls} == {threading.current_thread().name}  # no hand-off while SQLite was free


async def test_when_another_process_holds_the_lock_the_writes_wait_on_the_thread_not_the_loop(
        tmp_path: Path, monkeypatch) -> None:
    """``serve --workers`` on SQLite: another process writes. The turn's writes wait for the lock on
    the saver's thread while the event loop goes on; nothing is lost once the lock is free."""
    calls = _spy_threads(monkeypatch)
    path = tmp_path / "checkpoints.sqlite"
    async with open_checkpointer(Settings(data_dir=tmp_path, checkpoint_url=f"sqlite:///{path}")) as saver:
        graph = _graph(saver)
        await graph.ainvoke({"said": ["warm"]}, _cfg("w"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process's transaction holds it
        calls.clear()
        turn = asyncio.create_task(graph.ainvoke({"said": ["busy"]}, _cfg("b")))
        ticks = 0
        for _ in range(30):  # the loop keeps running while the turn waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not turn.done() and ticks == 30
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(turn, 10)
        assert (await graph.aget_state(_cfg("b"))).values["said"] == ["busy", "echo 1", "done"]
    waited = [m for m, t in calls if t.startswith("sqlite-checkpoints")]
    assert "put" in waited  # a write found the database busy on the loop and was done on the thread


async def test_the_wal_is_checkpointed_on_the_thread(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_saver, "WAL_CHECKPOINT_EVERY", 4)
    ran: list[str] = []
    original = ThreadedSqliteSaver._checkpoint_wal

    def spy(self):  # type: ignore[no-untyped-def]
        ran.append(threading.current_thread().name)
        original(self)

    monkeypatch.setattr(ThreadedSqliteSaver, "_checkpoint_wal", spy)
    async with open_checkpointer(Settings(data_dir=tmp_path)) as saver:
        graph = _graph(saver)
        for i in range(3):
            await graph.ainvoke({"said": [str(i)]}, _cfg("t"))
    assert ran and all(t.startswith("sqlite-checkpoints") for t in ran)


def test_the_saver_serves_more_than_one_event_loop(tmp_path: Path) -> None:
    """The chat UI and the HTTP server may run turns on different loops than the one that opened it."""

    async def opened() -> None:
        async with open_checkpointer(Settings(data_dir=tmp_path)) as saver:
            graph = _graph(saver)
            await graph.ainvoke({"said": ["a"]}, _cfg("x"))
            result: list[list[str]] = []
            worker = threading.Thread(target=lambda: result.append(
                asyncio.run(graph.aget_state(_cfg("x"))).values["said"]))
            worker.start()
            worker.join()
            assert result == [["a", "echo 1", "done"]]

    asyncio.run(opened())


async def test_history_is_read_a_page_at_a_time_and_in_order(tmp_path: Path, monkeypatch) -> None:
    async with open_checkpointer(Settings(data_dir=tmp_path)) as saver:
        graph = _graph(saver)
        for i in range(10):
            await graph.ainvoke({"said": [str(i)]}, _cfg("long"))
        pages: list[int] = []
        read = saver._list_page

        def counted(*args):  # type: ignore[no-untyped-def]
            pages.append(args[-1])
            return read(*args)

        monkeypatch.setattr(saver, "_list_page", counted)
        every = [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(_cfg("long"))]
        assert every == [t.config["configurable"]["checkpoint_id"] for t in saver.list(_cfg("long"))]
        assert len(every) == 40 and len(set(every)) == 40 and pages == [20, 20, 20]
        pages.clear()
        async for _first in saver.alist(_cfg("long")):
            break  # the newest only: one page read, not the whole history
        assert pages == [20]
        pages.clear()
        assert len([t async for t in saver.alist(_cfg("long"), limit=25)]) == 25 and pages == [20, 5]
        newest = (await saver.aget_tuple(_cfg("long"))).config  # type: ignore[union-attr]
        older = [t async for t in saver.alist(_cfg("long"), before=newest, limit=3)]
        assert [t.config["configurable"]["checkpoint_id"] for t in older] == every[1:4]
