"""Issue 15, findings 1 and 3 at the HTTP, CLI and Python doors: conversations belong to a
principal (an API key's name, the CLI's local user), another principal's conversation is "not
found" everywhere, and a review is decided by a reviewer who did not ask (separation of duties),
with the decision and who made it in the audit trail.

The real app under uvicorn on a loopback port with scripted models (tests/integration/test_http_api.py);
the CLI runs ``switchboard.cli.main`` in-process over a SQLite checkpointer in a temporary data dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.access import HTTP, Principal, ReviewForbidden, ThreadNotFound
from switchboard.api import Switchboard
from switchboard.persistence import open_checkpointer
from switchboard.server import ServerSettings, create_app, key_name, parse_key_entries
from switchboard.settings import Settings
from tests.stacks import EMAIL, PHONE, PHONE_Q, PHONE_SQL, REGISTRY, board, scripted, serve_in_thread

ALICE = "alice-key-0123456789abcdef"  # asks
BOB = "bob-key-0123456789abcdef"  # another customer's backend: neither reviewer nor admin
OPS = "ops-key-0123456789abcdef"  # a reviewer
AUDITOR = "auditor-key-0123456789abcdef"  # an admin: reads everything, decides nothing
ALL_CUSTOMERS = "SELECT FirstName, LastName, Email, Phone, Address FROM Customer"


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, key: str, body: Any = None, **headers: str) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", json=body, timeout=60,
                             headers={"Authorization": f"Bearer {key}", **headers})

    def ask(self, key: str, text: str, conversation: str | None = None, **extra: Any) -> httpx.Response:
        headers = {"X-Conversation-Id": conversation} if conversation else {}
        return self.call("POST", "/v1/chat/completions", key,
                         {"model": "switchboard", "messages": [{"role": "user", "content": text}], **extra}, **headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Switchboard]]:
    root = tmp_path_factory.mktemp("ownership-http")
    (root / "models.yaml").write_text(REGISTRY)
    settings = Settings(data_dir=root / "data", models_file=root / "models.yaml", reviewers=["ops"],
                        admins=["auditor"])
    services, _ = scripted(settings)
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    keys = [f"alice={ALICE}", f"bob={BOB}", f"ops={OPS}", f"auditor={AUDITOR}"]
    with serve_in_thread(create_app(settings, sb, api_keys=keys)) as url:
        yield Api(url), sb


def paused(api: Api, conversation: str) -> dict[str, Any]:
    r = api.ask(ALICE, PHONE_Q, conversation)
    assert r.status_code == 200, r.text
    [pending] = r.json()["switchboard"]["pending_review"]
    assert pending["sql"] == PHONE_SQL
    return pending


def assert_not_found(r: httpx.Response, conversation: str) -> None:
    """The answer a missing conversation gets, to the letter: ids cannot be probed."""
    assert r.status_code == 404, r.text
    assert r.json() == {"error": {"message": f"No conversation with id {conversation!r}.",
                                  "type": "invalid_request_error", "param": None, "code": "thread_not_found"}}


def test_the_asker_cannot_approve_their_own_sensitive_query(served) -> None:
    """Finding 3: any key asks for a phone, then edits the review into every customer's data."""
    api, sb = served
    pending = paused(api, "own-1")
    for body in ({"action": "edit", "sql": ALL_CUSTOMERS}, {"action": "approve"}):
        r = api.call("POST", "/v1/threads/own-1/review", ALICE, body)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "review_not_allowed" and error["type"] == "permission_error"
        assert "not a reviewer" in error["message"]
        assert EMAIL not in r.text and PHONE not in r.text
    # the owner may still see what waits; nothing was decided or recorded
    listed = api.call("GET", "/v1/threads/own-1/review", ALICE).json()
    assert [p["id"] for p in listed["pending"]] == [pending["id"]]
    assert sb.services.audit.review_decisions("own-1") == []


def test_a_reviewer_cannot_approve_their_own_either(served) -> None:
    api, sb = served
    r = api.ask(OPS, PHONE_Q, "ops-own")
    assert r.json()["switchboard"]["pending_review"]
    r = api.call("POST", "/v1/threads/ops-own/review", OPS, {"action": "approve"})
    assert r.status_code == 403 and "their own conversation" in r.json()["error"]["message"]
    assert sb.services.audit.review_decisions("ops-own") == []


def test_another_principal_cannot_read_continue_or_review(served) -> None:
    """Finding 1 over HTTP: bob names alice's conversation everywhere; each is a plain 404."""
    api, sb = served
    pending = paused(api, "alice-private")
    probes = [
        api.call("GET", "/v1/threads/alice-private", BOB),
        api.call("GET", "/v1/threads/alice-private/review", BOB),
        api.call("POST", "/v1/threads/alice-private/review", BOB, {"action": "approve"}),
        api.call("POST", "/v1/threads/alice-private/review", BOB, {"action": "edit", "sql": ALL_CUSTOMERS}),
        api.ask(BOB, "hello", "alice-private"),  # X-Conversation-Id
        api.ask(BOB, "hello", "alice-private", stream=True),
    ]
    # the `user` field never names a thread directly (it is hashed with a server key into
    # "user-..."), so naming alice's id there starts a conversation of bob's own
    by_user = api.ask(BOB, "hello", user="alice-private")
    assert by_user.status_code == 200, by_user.text
    assert by_user.json()["switchboard"]["conversation_id"].startswith("user-")
    for secret in (PHONE_SQL, pending["id"], PHONE, EMAIL, "alice-private"):
        assert secret not in by_user.text
    for r in probes:
        assert_not_found(r, "alice-private")
        for secret in (PHONE_SQL, pending["id"], PHONE, EMAIL):
            assert secret not in r.text
    assert_not_found(api.call("GET", "/v1/threads/never-existed", BOB), "never-existed")  # the same answer
    assert bob_sees_nothing(api)
    # alice's conversation is as she left it: still paused, one question, no decision
    assert [p["id"] for p in api.call("GET", "/v1/threads/alice-private/review", ALICE).json()["pending"]] \
        == [pending["id"]]
    assert [t["question"] for t in api.call("GET", "/v1/threads/alice-private", ALICE).json()["turns"]] == []
    assert sb.services.audit.review_decisions("alice-private") == []
    assert sb.services.audit.thread_owner("alice-private") == "alice"


def bob_sees_nothing(api: Api) -> bool:
    return api.call("GET", "/v1/reviews", BOB).json() == {"object": "list", "data": []}


def test_a_reviewer_decides_and_the_audit_trail_names_them(served) -> None:
    api, sb = served
    pending = paused(api, "to-review")
    listed = api.call("GET", "/v1/reviews", OPS).json()["data"]
    assert {"conversation_id": "to-review", "owner": "alice", "pending": [pending]} in listed
    assert api.call("GET", "/v1/threads/to-review/review", OPS).json()["pending"] == [pending]
    # a reviewer may decide, not read the conversation nor talk in it
    assert_not_found(api.call("GET", "/v1/threads/to-review", OPS), "to-review")
    assert_not_found(api.ask(OPS, "hello", "to-review"), "to-review")

    r = api.call("POST", "/v1/threads/to-review/review", OPS, {"action": "approve"})
    assert r.status_code == 200, r.text
    assert PHONE in r.json()["choices"][0]["message"]["content"]
    [decision] = sb.services.audit.review_decisions("to-review")
    assert decision["reviewer"] == "ops" and decision["owner"] == "alice" and decision["door"] == HTTP
    assert decision["action"] == "approve" and decision["interrupt_id"] == pending["id"]
    assert decision["sql"] == PHONE_SQL and decision["kind"] == "sensitive_sql" and decision["ts"] > 0
    # the answer is alice's to read
    history = api.call("GET", "/v1/threads/to-review", ALICE).json()
    assert PHONE in json.dumps(history)


def test_an_admin_reads_every_conversation_but_decides_nothing(served) -> None:
    api, sb = served
    paused(api, "audited")
    assert api.call("GET", "/v1/threads/audited", AUDITOR).status_code == 200
    assert api.call("GET", "/v1/threads/audited/review", AUDITOR).json()["pending"]
    r = api.call("POST", "/v1/threads/audited/review", AUDITOR, {"action": "approve"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "review_not_allowed"
    assert_not_found(api.ask(AUDITOR, "hello", "audited"), "audited")  # reading is not talking


def test_api_keys_name_their_principals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    padded = "c2VjcmV0LWtleQ=="  # base64 padding is not a name=key separator
    assert parse_key_entries(["alice=k-1", "plain-key", padded]) == [
        ("alice", "k-1"), (key_name("plain-key"), "plain-key"), (key_name(padded), padded)]
    assert key_name("plain-key").startswith("key-") and "plain" not in key_name("plain-key")
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nops=ops-secret\n\ncarol=carol-secret\n")
    monkeypatch.setenv("SWITCHBOARD_API_KEYS", "alice=a-secret")
    monkeypatch.setenv("SWITCHBOARD_API_KEYS_FILE", str(keyfile))
    assert ServerSettings(_env_file=None).key_list() == ["alice=a-secret", "ops=ops-secret", "carol=carol-secret"]
    with pytest.raises(ValueError, match="same name"):
        create_app(Settings(data_dir=tmp_path / "d"), api_keys=["a=1", "a=2"])


# --- the CLI and the Python API: a conversation owned by an HTTP principal -------------------------


async def test_cli_resume_and_recover_refuse_an_http_principals_thread(make_settings, monkeypatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from switchboard import cli

    settings = make_settings()
    partner = Principal.named("partner", HTTP, settings)
    async with open_checkpointer(settings) as saver:
        sb, _ = board(settings, saver=saver)
        turn = await sb.ask(PHONE_Q, thread_id="http-owned", principal=partner)
        assert turn.paused
        # the Python API's default principal is the local one: it sees nothing of the thread
        for attempt in (sb.pending_reviews("http-owned"), sb.resume("http-owned", "approve"),
                        sb.recover("http-owned"), sb.ask("hello", thread_id="http-owned")):
            with pytest.raises(ThreadNotFound, match="not found"):
                await attempt

    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(settings.data_dir))
    for argv in (["resume", "http-owned", "--approve"], ["resume", "http-owned", "--edit", ALL_CUSTOMERS],
                 ["recover", "http-owned"], ["resume", "no-such-thread", "--approve"]):
        assert await _cli(cli, argv) == 2
        err = capsys.readouterr()
        thread = argv[1]
        assert err.err.strip() == f"error: conversation {thread!r} not found"  # the same for both threads
        assert PHONE not in err.out and EMAIL not in err.out

    async with open_checkpointer(settings) as saver:
        sb, _ = board(settings, saver=saver)
        assert (await sb.pending_reviews("http-owned", principal=partner))[0]["id"] == turn.pending_review[0]["id"]
        assert sb.services.audit.review_decisions("http-owned") == []
        # separation of duties at the Python door: the owner (not a reviewer) cannot decide it
        with pytest.raises(ReviewForbidden):
            await sb.resume("http-owned", "approve", principal=partner)


async def test_cli_resume_needs_a_reviewer_once_reviewers_are_configured(make_settings, monkeypatch, capsys) -> None:
    """Single-user by default; with SWITCHBOARD_REVIEWERS set, the local asker cannot approve."""
    from switchboard import cli

    settings = make_settings()
    async with open_checkpointer(settings) as saver:
        sb, _ = board(settings, saver=saver)
        assert (await sb.ask(PHONE_Q, thread_id="local-own")).paused
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SWITCHBOARD_REVIEWERS", "carol")
    assert await _cli(cli, ["resume", "local-own", "--approve"]) == 2
    assert "not a reviewer" in capsys.readouterr().err


async def _cli(cli: Any, argv: list[str]) -> int:
    """``switchboard.cli.main`` runs its own event loop: run it in a worker thread."""
    import asyncio

    return await asyncio.to_thread(cli.main, argv)
