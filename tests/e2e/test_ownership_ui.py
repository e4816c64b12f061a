"""Issue 15, finding 1, through the chat UI's real door (socket.io + ``POST /project/action``):
a signed-in user opens a socket with ``auth.threadId`` set to a conversation another door started
(here the Python API, as the CLI would: principal ``local``) that is paused for review of a query
reading customers' phones. The UI must not use that thread: "hello" shows nothing of it (no SQL,
no interrupt id), and a forged review action is refused without running anything.

No browser: a raw python-socketio client speaks Chainlit's protocol (``/ws/socket.io``, auth
``{clientType, sessionId, threadId}``, the ``access_token`` cookie from ``POST /login``), exactly
what an attacker's script would do. The paused thread is made with scripted models before the
server starts; the server replays ``cassettes/review.yaml`` but must never need it here."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings
from tests.e2e.conftest import ChainlitServer
from tests.stacks import EMAIL, PHONE, PHONE_Q, PHONE_SQL, board

pytestmark = pytest.mark.e2e

FOREIGN = "rt-sql-7"
USERS = {"SWITCHBOARD_UI_USERS": "alice:alice-secret-1,carol:carol-secret-2", "SWITCHBOARD_REVIEWERS": "carol"}
NOT_FOUND = "This conversation was not found"


async def paused_from_another_door(data_dir: Path) -> str:
    """Ask on FOREIGN from the Python API (the local principal, as `switchboard ask --thread`)."""
    settings = Settings(data_dir=data_dir)
    async with open_checkpointer(settings) as saver:
        sb, _ = board(settings, saver=saver)
        turn = await sb.ask(PHONE_Q, thread_id=FOREIGN)
    assert turn.paused and turn.pending_review[0]["sql"] == PHONE_SQL
    return turn.pending_review[0]["id"]


class Session:
    """One Chainlit chat session over a raw socket.io connection; records every event."""

    def __init__(self, url: str, cookies: dict[str, str]) -> None:
        self.url, self.cookies = url, cookies
        self.session_id = str(uuid.uuid4())
        self.events: list[tuple[str, Any]] = []
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))

    def text(self) -> str:
        return json.dumps(self.events, ensure_ascii=False, default=str)

    async def connect(self, thread_id: str) -> None:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        await self.sio.connect(self.url, headers={"Cookie": cookie}, socketio_path="/ws/socket.io",
                               transports=["websocket"], wait_timeout=30,
                               auth={"clientType": "webapp", "sessionId": self.session_id, "threadId": thread_id,
                                     "userEnv": "{}"})
        await self.sio.emit("connection_successful")

    async def send(self, thread_id: str, text: str) -> None:
        await self.sio.emit("client_message", {"message": {
            "id": str(uuid.uuid4()), "threadId": thread_id, "name": "alice", "type": "user_message",
            "output": text, "createdAt": datetime.now(UTC).isoformat()}, "fileReferences": []})

    async def wait_for(self, needle: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} (x{count}) within {timeout} s; events: {self.text()[-3000:]}")
            await asyncio.sleep(0.2)


async def login(http: httpx.AsyncClient, user: str, password: str) -> dict[str, str]:
    r = await http.post("/login", data={"username": user, "password": password})
    assert r.status_code == 200, r.text
    assert http.cookies, "Chainlit set no access-token cookie"
    return dict(http.cookies)


@pytest.fixture
def server(tmp_path: Path, server_logs: Path):
    data_dir = tmp_path / "data"
    interrupt_id = asyncio.run(paused_from_another_door(data_dir))
    srv = ChainlitServer("review", data_dir, server_logs, USERS).start()
    yield srv, data_dir, interrupt_id
    srv.stop()


def test_a_ui_user_cannot_take_over_another_doors_conversation(server) -> None:
    srv, data_dir, interrupt_id = server

    async def attack() -> tuple[Session, httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
            cookies = await login(http, "alice", "alice-secret-1")
            s = Session(srv.url, cookies)
            await s.connect(FOREIGN)
            await s.wait_for(NOT_FOUND)  # said at chat start: the id is not hers
            await s.send(FOREIGN, "hello")
            await s.wait_for(NOT_FOUND, count=2)  # and again for the message: nothing of the thread ran
            forged = {"sessionId": s.session_id, "action": {
                "name": "review", "payload": {"id": interrupt_id, "action": "approve"},
                "id": str(uuid.uuid4()), "forId": str(uuid.uuid4()), "label": "Approve"}}
            response = await http.post("/project/action", json=forged,
                                       headers={"X-Chainlit-Session-Id": s.session_id})
            await s.wait_for(NOT_FOUND, count=3)  # the action callback refused too
            await asyncio.sleep(1.0)  # anything that would follow the refusal has had time to arrive
            await s.sio.disconnect()
            return s, response

    session, response = asyncio.run(attack())
    seen = session.text() + response.text
    for secret in (PHONE_SQL, "Customer.Phone", interrupt_id, PHONE, EMAIL, "Waiting for review"):
        assert secret not in seen, f"{secret!r} leaked to the UI user"
    assert response.status_code == 200, response.text  # Chainlit ran our callback, which refused

    # the paused turn is untouched and still the other door's; no decision was recorded
    async def still_paused() -> list[dict[str, Any]]:
        settings = Settings(data_dir=data_dir)
        async with open_checkpointer(settings) as saver:
            sb, _ = board(settings, saver=saver)
            return await sb.pending_reviews(FOREIGN)

    assert [r["id"] for r in asyncio.run(still_paused())] == [interrupt_id]
    audit = Services(Settings(data_dir=data_dir)).audit
    assert audit.thread_owner(FOREIGN) == "local"
    assert audit.review_decisions(FOREIGN) == []
    assert "refused thread rt-sql-7 to UI user alice" in srv.log_text()


def test_a_ui_user_asking_gets_no_review_buttons_on_their_own_conversation(server) -> None:
    """Finding 3 in the UI: with users configured, the asker's own paused turn shows what waits,
    with no Approve/Edit buttons, and a forged action on it is refused (403-like message)."""
    srv, data_dir, _ = server

    async def own() -> tuple[Session, httpx.Response, str]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
            s = Session(srv.url, await login(http, "carol", "carol-secret-2"))  # a reviewer, and the asker
            mine = str(uuid.uuid4())
            await s.connect(mine)
            await s.send(mine, "What is the phone number of customer Luís Gonçalves?")
            await s.wait_for("Waiting for review", timeout=240)
            await s.wait_for("A reviewer other than you decides")
            forged = {"sessionId": s.session_id, "action": {
                "name": "review", "payload": {"id": "x", "action": "approve"}, "id": str(uuid.uuid4()),
                "forId": str(uuid.uuid4()), "label": "Approve"}}
            response = await http.post("/project/action", json=forged)
            await s.wait_for("Not allowed to decide this review")
            await s.sio.disconnect()
            return s, response, mine

    session, response, mine = asyncio.run(own())
    seen = session.text()
    assert "Customer.Phone" in seen  # the asker sees what waits for a reviewer...
    for button in ('"label": "Approve"', '"label": "Edit SQL"', '"label": "Reject"'):
        assert button not in seen  # ...but gets no review buttons
    assert PHONE not in session.text() and PHONE not in response.text
    audit = Services(Settings(data_dir=data_dir)).audit
    assert audit.thread_owner(mine) == "carol" and audit.review_decisions(mine) == []
