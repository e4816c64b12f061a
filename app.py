"""Switchboard's chat front end (Chainlit). Run: ``uv run chainlit run app.py``.

Thin on purpose: the support graph (``graphs/support.py``) does all the work; this file runs it
per user turn and shows what happened. Triage and every specialist appear as collapsible steps
(routing scores, model, tokens, cost, latency, SQL and its result, citations, what was read from
an image); specialists' model tokens stream into their steps, the composed answer streams into
the reply, and a footer gives the turn's cost, time and LLM calls.

Persistence: the Chainlit thread id *is* the LangGraph thread id. Conversation context lives in
the LangGraph checkpointer (``switchboard.persistence``); the chat history the sidebar lists
lives in Chainlit's SQLAlchemy data layer, a SQLite file under the data dir by default
(``SWITCHBOARD_UI_DATABASE_URL`` to change it). Chainlit only keeps history for signed-in users:
set ``SWITCHBOARD_UI_USERS="alice:secret,bob:other"`` for password sign-in; when it is unset,
everyone is the single local user "local" (no login page), which suits a local app.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.input_widget import InputWidget, Select
from chainlit.types import ThreadDict
from langgraph.types import Command

from graphs.state import Context, turn_policy
from graphs.support import SPECIALISTS, build_support_graph, turn_input
from switchboard.access import UI, Access, Principal, ReviewForbidden, ThreadNotFound
from switchboard.api import RecoveryGuard, RetryFailed, record_decisions, runtime_failure
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings
from tools import review
from tools.models.values import POLICIES
from tools.observability.redaction import install_log_redaction
from tools.vision.images import ImageRejected, sniff_upload_file

log = logging.getLogger("switchboard.ui")
install_log_redaction()  # Chainlit configures logging itself; records are redacted as they are made

SETTINGS = Settings()
POLICY_LABELS = {  # how the chat settings show the routing policies (tools/models/values.py names them)
    "cost-saver": "Cost saver: cheapest models",
    "best-quality": "Best quality: strongest models",
}
AGENT_TITLES = {cls.name: cls.title for cls in SPECIALISTS}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- process environment (app.py is imported before `chainlit run` checks its auth secret) ---


def _drop_chainlit_ci_fake_key() -> None:
    """``chainlit run`` treats env ``CI`` as its ``--ci`` flag and then sets a fake
    OPENAI_API_KEY, which would switch on the hosted models of the registry. Undo that."""
    if os.environ.get("OPENAI_API_KEY") == "sk-FAKE-OPENAI-API-KEY":  # secret-scan: allow (Chainlit's placeholder)
        del os.environ["OPENAI_API_KEY"]


def _ensure_auth_secret(data_dir: Path) -> None:
    """Chainlit signs its login cookie with CHAINLIT_AUTH_SECRET. Without one configured, use a
    random secret generated on first start and kept (mode 0600) in the data dir."""
    if os.environ.get("CHAINLIT_AUTH_SECRET"):
        return
    path = data_dir / "chainlit_auth_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # made by an earlier start (or a concurrent one)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds no usable secret; delete it (users will have to sign in again)")
    os.environ["CHAINLIT_AUTH_SECRET"] = secret


def parse_ui_users(spec: str) -> dict[str, str]:
    """``"alice:secret,bob:pw"`` -> {"alice": "secret", "bob": "pw"} (passwords may contain ':')."""
    users = {}
    for n, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
        name, sep, password = item.partition(":")
        if not sep or not name.strip() or not password:  # never echo the entry: it may be a password
            raise ValueError(f"SWITCHBOARD_UI_USERS: entry {n} must be NAME:PASSWORD")
        users[name.strip()] = password
    return users


def check_password(users: dict[str, str], username: str, password: str) -> bool:
    """Constant-time check; an unknown user costs the same as a wrong password."""

    def digest(s: str) -> bytes:
        return hashlib.sha256(s.encode("utf-8")).digest()

    expected = users.get(username)
    ok = hmac.compare_digest(digest(password), digest(expected if expected is not None else secrets.token_hex(16)))
    return ok and expected is not None


def _private_files_dir() -> None:
    """Chainlit keeps live sessions' uploads in ``<app root>/.files`` and deletes that whole
    folder when a server stops, which breaks uploads in every other server started from the
    same folder (a second instance, a test run next to a dev server). This process gets its
    own folder; Chainlit still deletes it at shutdown (sessions' files are transient: what the
    graph needs is copied under the data dir)."""
    import chainlit.config
    import chainlit.server

    if chainlit.config.FILES_DIRECTORY.name.startswith("switchboard-chainlit-files-"):
        return  # already ours (`chainlit run -w` re-imports this file)
    own = Path(tempfile.mkdtemp(prefix="switchboard-chainlit-files-"))
    chainlit.config.FILES_DIRECTORY = own  # read at call time by sessions
    chainlit.server.FILES_DIRECTORY = own  # the folder removed at shutdown


_drop_chainlit_ci_fake_key()
_ensure_auth_secret(SETTINGS.data_dir)
_private_files_dir()
UI_USERS = parse_ui_users(os.environ.get("SWITCHBOARD_UI_USERS", ""))


# --- chat history: Chainlit's data layer on SQLite ---------------------------------------------

# The tables Chainlit 2.x's SQLAlchemyDataLayer reads and writes (its documented PostgreSQL schema,
# with the columns the 2.12 code writes: it inserts every non-empty key of a step/element dict,
# so a missing column loses the whole row). Types are SQLite affinities.
UI_SCHEMA: dict[str, dict[str, str]] = {
    "users": {
        "id": "TEXT PRIMARY KEY",
        "identifier": "TEXT NOT NULL UNIQUE",
        "metadata": "TEXT NOT NULL",
        "createdAt": "TEXT",
    },
    "threads": {
        "id": "TEXT PRIMARY KEY",
        "createdAt": "TEXT",
        "name": "TEXT",
        "userId": "TEXT",
        "userIdentifier": "TEXT",
        "tags": "TEXT",
        "metadata": "TEXT",
    },
    "steps": {
        "id": "TEXT PRIMARY KEY",
        "name": "TEXT NOT NULL",
        "type": "TEXT NOT NULL",
        "threadId": "TEXT NOT NULL",
        "parentId": "TEXT",
        "streaming": "BOOLEAN NOT NULL",
        "waitForAnswer": "BOOLEAN",
        "isError": "BOOLEAN",
        "metadata": "TEXT",
        "tags": "TEXT",
        "input": "TEXT",
        "output": "TEXT",
        "createdAt": "TEXT",
        "command": "TEXT",
        "modes": "TEXT",
        "start": "TEXT",
        "end": "TEXT",
        "generation": "TEXT",
        "showInput": "TEXT",
        "language": "TEXT",
        "indent": "INT",
        "defaultOpen": "BOOLEAN",
        "autoCollapse": "BOOLEAN",
    },
    "elements": {
        "id": "TEXT PRIMARY KEY",
        "threadId": "TEXT",
        "type": "TEXT",
        "url": "TEXT",
        "chainlitKey": "TEXT",
        "name": "TEXT NOT NULL",
        "display": "TEXT",
        "objectKey": "TEXT",
        "size": "TEXT",
        "page": "INT",
        "language": "TEXT",
        "forId": "TEXT",
        "mime": "TEXT",
        "props": "TEXT",
        "autoPlay": "BOOLEAN",
        "playerConfig": "TEXT",
    },
    "feedbacks": {
        "id": "TEXT PRIMARY KEY",
        "forId": "TEXT NOT NULL",
        "threadId": "TEXT",
        "value": "INT NOT NULL",
        "comment": "TEXT",
    },
}


def ensure_ui_schema(db_path: Path) -> None:
    """Create the history tables if missing, and add any column a newer Chainlit writes."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as con:
        con.execute("PRAGMA journal_mode=WAL")
        for table, columns in UI_SCHEMA.items():
            cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
            con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
            have = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
            for c, t in columns.items():
                if c not in have:
                    con.execute(
                        f'ALTER TABLE "{table}" ADD COLUMN "{c}" {t.replace(" NOT NULL", "").replace(" PRIMARY KEY", "").replace(" UNIQUE", "")}'
                    )
        con.execute('CREATE INDEX IF NOT EXISTS steps_thread ON steps ("threadId")')
        con.execute('CREATE INDEX IF NOT EXISTS threads_user ON threads ("userId")')


class OrderedSQLAlchemyDataLayer(SQLAlchemyDataLayer):
    """Chainlit persists steps from fire-and-forget tasks (one per send/update), and one write can
    take more SQL statements than another (the first also creates the thread row), so a step's
    create could land after its update and save it empty. Step writes are serialized in the
    order their tasks start (an asyncio.Lock is FIFO), and SQL statements are serialized too, so
    SQLite never sees two writers ("database is locked")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sql_lock = asyncio.Lock()
        self._step_lock = asyncio.Lock()

    async def execute_sql(self, query: str, parameters: dict) -> Any:
        async with self._sql_lock:
            return await super().execute_sql(query, parameters)

    async def create_step(self, step_dict: Any) -> None:
        async with self._step_lock:
            await SQLAlchemyDataLayer.create_step(self, step_dict)

    async def update_step(self, step_dict: Any) -> None:
        # the base update_step calls self.create_step, which would wait for this very lock
        async with self._step_lock:
            await SQLAlchemyDataLayer.create_step(self, step_dict)

    async def delete_step(self, step_id: str) -> None:
        async with self._step_lock:
            await SQLAlchemyDataLayer.delete_step(self, step_id)

    async def upsert_feedback(self, feedback: Any) -> str:
        """A thumbs up/down is kept with the chat and, by answer id, in the audit trail
        (`switchboard compare` reports it per model)."""
        feedback_id = await super().upsert_feedback(feedback)
        try:
            # Chainlit puts feedback on the turn's run step; the answer is its assistant message
            rows = await self.execute_sql(
                'SELECT id FROM steps WHERE (id = :id OR "parentId" = :id) AND type = \'assistant_message\' '
                'ORDER BY "createdAt" DESC LIMIT 1', {"id": feedback.forId})
            answer_id = uuid.UUID(rows[0]["id"]).hex
            await asyncio.to_thread(SERVICES.audit.record_feedback, answer_id, 1 if feedback.value else -1,
                                    feedback.comment)
        except Exception:  # noqa: BLE001 - feedback on a message without an answer id, or the audit db is down
            log.warning("feedback on %s not recorded in the audit trail", feedback.forId, exc_info=True)
        return feedback_id

    async def delete_thread(self, thread_id: str) -> None:
        """Deleting a conversation in the sidebar (Chainlit checks the user owns it) also deletes
        its graph state (summary, entities) and the images uploaded to it."""
        author = await self.get_thread_author(thread_id)
        await super().delete_thread(thread_id)
        # the graph state only when the LangGraph thread is this user's too: a chat thread can carry
        # the id of a conversation another door owns (the id came from the client)
        if (saver := _runtime.get("saver")) and await ACCESS.owner(thread_id) == author:
            await saver.adelete_thread(thread_id)
        shutil.rmtree(upload_dir(thread_id), ignore_errors=True)


def ui_database_url(settings: Settings) -> str:
    url = os.environ.get("SWITCHBOARD_UI_DATABASE_URL", "").strip()
    if url:
        return url
    return f"sqlite+aiosqlite:///{settings.data_dir / 'ui_history.sqlite'}"


UI_DATABASE_URL = ui_database_url(SETTINGS)
if UI_DATABASE_URL.startswith("sqlite"):
    ensure_ui_schema(Path(UI_DATABASE_URL.split(":///", 1)[1]))


@cl.data_layer
def _data_layer() -> SQLAlchemyDataLayer:
    connect_args = {"timeout": 30} if UI_DATABASE_URL.startswith("sqlite") else None
    return OrderedSQLAlchemyDataLayer(conninfo=UI_DATABASE_URL, connect_args=connect_args)


# --- sign-in ------------------------------------------------------------------------------------

if UI_USERS:

    @cl.password_auth_callback
    async def _password_auth(username: str, password: str) -> cl.User | None:
        if check_password(UI_USERS, username, password):
            return cl.User(identifier=username, metadata={"provider": "credentials"})
        return None

else:

    @cl.header_auth_callback
    async def _local_user(headers: Any) -> cl.User | None:
        # No users configured: one local user, so history still works without a login page.
        return cl.User(identifier="local", metadata={"provider": "local"})


# --- the graph, once per process ----------------------------------------------------------------

SERVICES = Services(SETTINGS)
SERVICES.registry  # noqa: B018  (cheap; built here so the banner never races the warm-up thread)
_runtime: dict[str, Any] = {}


# --- who is asking: ownership and separation of duties (switchboard/access.py) ---------------------

ACCESS = Access(SERVICES.audit)
# the LangGraph thread is the Chainlit thread id, which the client chooses (socket.io auth.threadId):
# it is used only when it is this user's conversation, or a new one
NOT_FOUND = "This conversation was not found. Start a new chat to ask something."


def ui_principal() -> Principal:
    """The signed-in user; with no SWITCHBOARD_UI_USERS, the single local user (single-user: they
    decide their own reviews). A reviewer (SWITCHBOARD_REVIEWERS) never decides their own."""
    user = cl.context.session.user
    name = user.identifier if user is not None else "local"
    return Principal.named(name, UI, SETTINGS, single_user_default=not UI_USERS)


async def foreign_thread(graph: Any, thread_id: str) -> bool:
    """Is this thread id someone else's (or an ownerless old conversation the UI may not adopt)?
    Claims nothing: a new id becomes the user's with their first message."""
    owner = await ACCESS.owner(thread_id)
    if owner is not None:
        return owner != ui_principal().name
    return bool((await graph.aget_state({"configurable": {"thread_id": thread_id}})).values)


def _warm_up() -> None:
    """Load what the first question would otherwise wait for (embeddings, knowledge base)."""
    started = time.monotonic()
    SERVICES.triage  # noqa: B018
    SERVICES.db  # noqa: B018
    SERVICES.kb  # noqa: B018
    log.info("services warm in %.1f s", time.monotonic() - started)


@cl.on_app_startup
async def _startup() -> None:
    stack = AsyncExitStack()
    saver = await stack.enter_async_context(open_checkpointer(SETTINGS))
    _runtime["stack"], _runtime["saver"] = stack, saver
    _runtime["graph"] = build_support_graph(SERVICES, checkpointer=saver)
    _runtime["warm"] = asyncio.create_task(asyncio.to_thread(_warm_up))
    host = os.environ.get("CHAINLIT_HOST", "127.0.0.1")
    if not UI_USERS and host not in LOOPBACK:
        log.warning(
            "SWITCHBOARD_UI_USERS is not set and the server listens on %s: everyone who can "
            "reach it is the same user (the local principal, who also owns the CLI's conversations) "
            "and shares one chat history",
            host,
        )


@cl.on_app_shutdown
async def _shutdown() -> None:
    if stack := _runtime.pop("stack", None):
        await stack.aclose()


async def _graph() -> Any:
    if (warm := _runtime.get("warm")) is not None:
        try:
            await asyncio.shield(warm)  # a stopped turn must not cancel the warm-up
        except Exception:  # noqa: BLE001 - the turn itself will report what is broken
            if not _runtime.get("warm_reported"):
                _runtime["warm_reported"] = True
                log.exception("warm-up failed")
    return _runtime["graph"]


# --- chat lifecycle -----------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (a path): nothing to hide
        return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def banner_markdown(services: Services) -> str:
    s = services.settings
    models = (
        ", ".join(
            f"`{m.name}` ({m.tier}{', ' + m.provider if m.provider != 'llamacpp' else ', local llama.cpp'})"
            for m in services.registry.available()
        )
        or "none available"
    )
    db = _safe_url(s.database_url)
    lines = [
        "**Switchboard**: each question is triaged, split into parts and sent to specialists "
        "(SQL over the store's database, the help-center knowledge base, vision for images, a generalist), "
        "then answered in one reply. Open the steps to see who did what and what it cost.",
        "",
        f"- **Models:** {models}",
        f"- **Database:** `{Path(db.split(':///', 1)[-1]).name if db.startswith('sqlite') else db}` (read-only)",
        f"- **Knowledge base:** {_safe_url(s.chroma_url) if s.chroma_url else f'Chroma at `{s.chroma_dir}`'} "
        f"(collection `{s.collection}`)",
        f"- **Conversations:** {_safe_url(s.checkpoint_url) if s.checkpoint_url else f'`{s.checkpoint_sqlite_path}`'}",
        f"- **Routing policy:** {cl.user_session.get('policy') or s.routing_policy} (change it in the settings "
        "next to the message box)",
    ]
    if s.record_mode != "off":
        name = s.cassette_path.name if s.cassette_path else "(none)"
        lines.append(
            f"- **Model calls:** {s.record_mode} {'into' if s.record_mode == 'record' else 'from'} cassette `{name}`"
        )
    lines += ["", "Try *How many customers are from Brazil?*, *What's your refund policy?*, or attach a receipt image."]
    return "\n".join(lines)


async def _send_settings(policy: str) -> None:
    widgets: list[InputWidget] = [
        Select(
            id="policy",
            label="Routing policy",
            items={POLICY_LABELS.get(p, p.capitalize()): p for p in POLICIES},
            initial_value=policy,
            description="Which model tier each specialist asks for (cost-saver and balanced stay on "
            "light models; best-quality uses heavy ones when they are configured).",
        )
    ]
    await cl.ChatSettings(widgets).send()


def _valid_policy(value: Any) -> str:
    return value if value in POLICIES else SETTINGS.routing_policy


@cl.on_chat_start
async def on_chat_start() -> None:
    policy = _valid_policy(cl.user_session.get("policy"))
    cl.user_session.set("policy", policy)
    await _send_settings(policy)
    await cl.Message(content=banner_markdown(SERVICES)).send()
    # a client-chosen id (socket.io auth.threadId) of another's conversation: say so at once (each
    # message and action checks again); the graph exists from startup, warm or not
    if await foreign_thread(_runtime["graph"], cl.context.session.thread_id):
        await cl.Message(content=NOT_FOUND).send()


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]) -> None:
    cl.user_session.set("policy", _valid_policy(values.get("policy")))


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    # Chainlit restores the user session from the thread's metadata (saved on disconnect); the
    # conversation context is in the LangGraph checkpoint under the same thread id.
    meta = thread.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta or "{}")
    policy = _valid_policy(cl.user_session.get("policy") or (meta.get("chat_settings") or {}).get("policy"))
    cl.user_session.set("policy", policy)
    await _send_settings(policy)
    graph = await _graph()
    if await foreign_thread(graph, thread["id"]):  # Chainlit's thread is the user's; the graph's is not
        await cl.Message(content=NOT_FOUND).send()
        return
    state = await graph.aget_state({"configurable": {"thread_id": thread["id"]}})
    if not (state and state.values):
        log.warning("thread %s has no saved graph state: earlier context is not available", thread["id"])
    elif pending := review.pending_reviews(state):
        # a turn still paused for review gets its buttons back, on its saved review message: Chainlit
        # replaces the shown messages with the saved ones right after this hook (buttons are kept).
        # Without that message, the next one the user sends brings the buttons back (on_message).
        if (saved := saved_review_message(thread, pending)) is not None:
            await send_review(thread["id"], pending, for_id=saved)


# --- one user turn ------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def upload_dir(thread_id: str) -> Path:
    return SETTINGS.data_dir / "uploads" / _SAFE_NAME.sub("_", thread_id)


def stash_upload(element: Any, thread_id: str) -> Path:
    """Copy an upload out of Chainlit's per-session folder (deleted when the session ends) into
    the data dir, keeping its file name's stem so the vision specialist's messages can name it.
    Typed by its bytes, never the client's MIME type or extension: anything but a raster image
    the vision path reads (an SVG, a PDF...) raises :class:`ImageRejected` and is not stored;
    the stored file's extension is the one its content shows."""
    stem = _SAFE_NAME.sub("_", Path(element.name or "upload").stem).strip("._") or "upload"
    kind = sniff_upload_file(element.path, name=Path(element.name or "upload").name)
    dest = upload_dir(thread_id) / _SAFE_NAME.sub("_", str(element.id)) / f"{stem}{kind.extension}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(element.path, dest)
    return dest


def _is_supported_image(element: Any) -> bool:
    try:
        sniff_upload_file(element.path)
    except (ImageRejected, OSError):
        return False
    return True


def pick_attachment(elements: list[Any]) -> Any | None:
    """The first file whose *content* is a supported image; failing that the first file
    (:func:`stash_upload` refuses it with a message saying what it is)."""
    files = [e for e in elements or [] if getattr(e, "path", None)]
    images = [e for e in files if _is_supported_image(e)]
    return (images or files or [None])[0]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def _secs(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def _usd(v: float) -> str:
    return f"${v:.5f}"


def triage_markdown(subtasks: list[dict[str, Any]], log_: dict[str, Any]) -> str:
    rows = ["| part | task | agent | confidence | why | top scores |", "|---|---|---|---|---|---|"]
    for s in subtasks:
        top = sorted((s.get("scores") or {}).items(), key=lambda kv: -kv[1])[:3]
        why = s.get("reason", "")
        if s.get("llm_asked"):
            why += " (LLM asked)"
        if s.get("depends_on"):
            why += f"; waits for {', '.join(s['depends_on'])}"
        if s.get("extract_only"):
            why += "; gathers evidence only"
        route = f" (route `{s['route']}`)" if s.get("route") and s["route"] != s["agent"] else ""
        rows.append(
            f"| {s['id']} | {_cell(s['task'])} | **{s['agent']}**{route} "
            f"| {s.get('confidence', 0):.2f} | {_cell(why)} | {', '.join(f'{k} {v:.2f}' for k, v in top)} |"
        )
    n = log_.get("llm_calls", 0)
    head = f"Split into {len(subtasks)} part{'s' if len(subtasks) != 1 else ''}; routing used {n} LLM call{'s' if n != 1 else ''}."
    return head + "\n\n" + "\n".join(rows)


def specialist_markdown(result: dict[str, Any], ledger: list[dict[str, Any]], raw: str) -> str:
    ev = result.get("evidence") or {}
    calls = [e for e in ledger if e.get("subtask_id") == result["subtask_id"]]
    model = calls[-1]["model"] if calls else ev.get("model")
    t_in, t_out = sum(e["tokens_in"] for e in calls), sum(e["tokens_out"] for e in calls)
    cost = sum(e["cost_usd"] for e in calls)
    facts = [
        f"model `{model}`" if model else "no model call",
        f"{t_in} in / {t_out} out tokens",
        _usd(cost),
        _secs(ev.get("elapsed_ms", 0)),
    ]
    if len(calls) > 1:
        facts.append(f"{len(calls)} calls")
    if cached := sum(1 for e in calls if e.get("cached")):
        facts.append("answered from cache" if cached == len(calls) else f"{cached} from cache")
    out = [f"**Task:** {result['task']}", "", " · ".join(facts), ""]
    for note in dict.fromkeys(e["note"] for e in calls if e.get("note")):
        out += [f"*Note:* {note}", ""]  # fallbacks, budget moves
    if not result.get("ok"):
        out += [f"**Could not answer:** {result.get('error') or result.get('answer')}", ""]
    failed = [a for a in ev.get("attempts") or [] if a.get("error")]
    for a in failed:
        out += [f"Rejected query ({_cell(a['error'])}):", f"```sql\n{a['sql']}\n```"]
    if ev.get("sql"):
        out += ["**SQL**", f"```sql\n{ev['sql']}\n```"]
    if ev.get("table"):
        more = f" ({ev.get('row_count')} rows, first shown)" if (ev.get("row_count") or 0) > 10 else ""
        out += [f"**Result**{more}", "", ev["table"], ""]
    if ev.get("image"):
        im = ev["image"]
        out += [
            f"**Image:** {im.get('name')} · {im.get('width')}×{im.get('height')} {im.get('format')}"
            + (" (downscaled)" if im.get("downscaled") else "")
        ]
    if ev.get("fields"):
        f = ev["fields"]
        out += ["", "**Read from the image**", "", "| field | value |", "|---|---|"]
        out += [f"| {k} | {_cell(f.get(k) or '(not found)')} |" for k in ("merchant", "date", "total", "currency")]
        if f.get("unreadable"):
            unreadable = f["unreadable"]
            if isinstance(unreadable, (list, tuple)):
                unreadable = ", ".join(map(str, unreadable))
            out += ["", f"Could not read: {_cell(unreadable)}"]
    if ev.get("ocr_text"):
        out += ["", "**Text on the image (OCR)**", f"```text\n{ev['ocr_text']}\n```"]
    if "citations" in ev:
        cites = ev.get("citations") or []
        out += ["**Citations**"] + ([f"{c['n']}. [{c['title']}]({c['url']})" for c in cites] or ["none"])
    if ev.get("retrieved"):
        out += ["", "**Retrieved passages**", "", "| title | score |", "|---|---|"]
        out += [f"| {_cell(h['title'])} | {h['score']:.3f} |" for h in ev["retrieved"]]
    out += ["", "**Answer**", "", result.get("answer", "")]
    if raw.strip() and raw.strip() != (result.get("answer") or "").strip():
        out += ["", "**Model output**", f"```text\n{raw.strip()}\n```"]
    return "\n".join(out)


def footer(cost: float, elapsed_s: float, ledger: list[dict[str, Any]]) -> str:
    n = len(ledger)
    cached = sum(1 for e in ledger if e.get("cached"))
    text = f"💲{cost:.5f} · {elapsed_s:.1f} s · {n} LLM call{'s' if n != 1 else ''}"
    return text + (f" ({cached} from cache)" if cached else "")


class TurnView:
    """Turns the graph's stream into Chainlit steps and the reply message."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        # Chainlit wraps on_message in a "run" step under the user's message and parents the reply
        # to it; steps must share that parent, or the UI lists them after the reply.
        run = cl.context.current_step
        self.parent_id = run.id if run is not None else None
        self.triage: cl.Step | None = None
        self.steps: dict[str, cl.Step] = {}  # LangGraph task id -> step
        self.raw: dict[str, str] = {}  # task id -> streamed model text
        self.live: dict[str, str | None] = {}  # task id -> run id of the model call streaming
        self.echoes: dict[str, set[str]] = {}  # task id -> run ids to ignore (see _fresh)
        self.subtasks: list[dict[str, Any]] = []
        self.image_path: str | None = None
        self.reply: cl.Message | None = None
        self.skip: set[str] = set()  # a resumed turn's tasks whose results LangGraph reuses (no new step)

    async def task_started(self, task: dict[str, Any]) -> None:
        name = task["name"]
        if task["id"] in self.skip:
            return
        if name == "triage":
            self.triage = cl.Step(name="Triage", type="tool", show_input=False, parent_id=self.parent_id)
            self.triage.start = _now()
            await self.triage.send()
        elif name in AGENT_TITLES:
            handoff = task.get("input") or {}
            sub = handoff.get("subtask") or {}
            title = AGENT_TITLES[name]
            if sum(1 for s in self.subtasks if s["agent"] == name) > 1:
                title += f" · {sub.get('id', '')}"
            step = cl.Step(name=title, type="tool", show_input=False, parent_id=self.parent_id)
            step.start = _now()
            step.metadata = {"subtask": sub.get("id"), "agent": name}
            self.steps[task["id"]] = step
            self.raw[task["id"]] = ""
            await step.send()

    def _fresh(self, key: str, chunk: Any) -> bool:
        """True for tokens of the model call being shown. A model wrapped in another (the
        record/replay wrapper around the local model, in record mode) streams every token twice
        under two run ids: while one call's stream is open, another id is its echo."""
        run_id = getattr(chunk, "id", None)
        if run_id is None:
            return True
        ignored = self.echoes.setdefault(key, set())
        if run_id in ignored:
            return False
        current = self.live.get(key)
        if current is None:
            self.live[key] = current = run_id
        elif current != run_id:
            ignored.add(run_id)
            return False
        if getattr(chunk, "usage_metadata", None) or getattr(chunk, "chunk_position", None) == "last":
            self.live[key] = None  # this call is done; a retry opens a new stream
        return True

    async def token(self, chunk: Any, meta: dict[str, Any]) -> None:
        node = meta.get("langgraph_node")
        task_id = (meta.get("langgraph_checkpoint_ns") or "").partition(":")[2].split("|")[0]
        if node not in (*AGENT_TITLES, "triage") or not self._fresh(task_id, chunk):
            return
        text = chunk.content if isinstance(chunk.content, str) else ""
        if node in AGENT_TITLES and task_id in self.steps:
            if getattr(chunk, "usage_metadata", None) and self.raw[task_id] and not text:
                self.raw[task_id] += "\n\n"  # end of one model call (SQL may retry)
            if text:
                self.raw[task_id] += text
                await self.steps[task_id].stream_token(text)
        elif node == "triage" and self.triage is not None and text:
            await self.triage.stream_token(text)

    async def task_finished(self, task: dict[str, Any]) -> None:
        name = task["name"]
        if name == "triage" and self.triage is not None:
            result = task.get("result") or {}
            self.subtasks = result.get("subtasks") or []
            log_ = _unwrap(result.get("triage_log")) or {}
            self.triage.output = triage_markdown(self.subtasks, log_)
            await _finish(self.triage, error=task.get("error"))
        elif name in AGENT_TITLES and task["id"] in self.steps:
            step = self.steps.pop(task["id"])
            if task.get("interrupts"):  # paused for human review: the node runs again once decided
                step.output = "Waiting for review: see the request below."
                await _finish(step)
                return
            update = task.get("result") or {}
            results = _unwrap(update.get("results")) or []
            ledger = _unwrap(update.get("ledger")) or []
            if results:
                r = results[0]
                step.output = specialist_markdown(r, ledger, self.raw.get(task["id"], ""))
                if r["agent"] == "vision" and self.image_path and (r.get("evidence") or {}).get("image"):
                    step.elements = [
                        cl.Image(path=self.image_path, name=Path(self.image_path).name, display="inline", size="medium")
                    ]
                await _finish(step, error=None if r.get("ok") else (r.get("error") or "failed"))
            else:
                step.output = f"The specialist stopped: {task.get('error')}"
                await _finish(step, error=task.get("error") or "no result")

    async def answer(self, text: str, answer_id: str | None = None) -> None:
        # the message's id is the answer's audit id, so a thumbs up/down lands in the audit trail
        self.reply = cl.Message(content="", id=str(uuid.UUID(answer_id)) if answer_id else None)
        pieces = re.findall(r"\S+\s*|\s+", text) or [""]
        delay = min(0.02, 0.6 / max(len(pieces), 1))
        for piece in pieces:
            await self.reply.stream_token(piece)
            await asyncio.sleep(delay)

    async def close_open_steps(self, error: str) -> None:
        for step in [self.triage, *self.steps.values()]:
            if step is not None and step.end is None:
                step.output = (step.output + "\n\n" if step.output else "") + f"Stopped: {error}"
                await _finish(step, error=error)
        self.steps.clear()


def _now() -> str:
    from chainlit.utils import utc_now

    return utc_now()


def _unwrap(value: Any) -> Any:
    """Values written with ``Overwrite`` arrive wrapped in it."""
    return getattr(value, "value", value)


async def _finish(step: cl.Step, error: Any = None) -> None:
    step.end = _now()
    if error:
        step.is_error = True
    await step.update()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    graph = await _graph()
    thread_id = cl.context.session.thread_id
    try:  # the user's conversation, or a new one that becomes theirs; never another door's
        await ACCESS.check_turn(graph, thread_id, ui_principal())
    except ThreadNotFound:
        log.warning("refused thread %s to UI user %s: not theirs", thread_id, ui_principal().name)
        await cl.Message(content=NOT_FOUND).send()
        return
    policy = _valid_policy(cl.user_session.get("policy"))
    config = {"configurable": {"thread_id": thread_id}}
    snapshot = await graph.aget_state(config)
    if pending := review.pending_reviews(snapshot):  # a paused turn is decided first
        await cl.Message(content="This conversation is waiting for review: it continues once it is decided, "
                                 "then ask again.").send()
        await send_review(thread_id, pending)
        return
    if snapshot.next:  # a turn that a crash or restart cut off: finish it from its checkpoint first
        async def finish_earlier() -> None:
            await cl.Message(content="First, the answer to your previous question, which was interrupted:").send()
            earlier = TurnView()
            if not await stream_turn(graph, None, config, _valid_policy(turn_policy(snapshot.values, policy)), earlier):
                raise RetryFailed("the interrupted turn failed again")  # stream_turn showed why
            await conclude_turn(graph, config, earlier)

        # tried at most twice; a failed retry closes it, keeping what its finished parts found
        _, closed = await RecoveryGuard(graph, SERVICES).finish(snapshot, thread_id, finish_earlier)
        if closed is not None:
            await cl.Message(content=closed).send()
        elif review.pending_reviews(await graph.aget_state(config)):
            return  # the finished turn paused for review: its buttons are shown
    view = TurnView()

    attachment = pick_attachment(message.elements)
    if attachment is not None:
        try:
            view.image_path = str(stash_upload(attachment, thread_id))
        except ImageRejected as exc:  # not a raster image the vision path reads (by its content)
            await cl.Message(content=exc.message).send()
            return
    question = message.content.strip()
    if not question and view.image_path:
        question = "What does this image show?"

    if await stream_turn(graph, turn_input(question, view.image_path), config, policy, view):
        await conclude_turn(graph, config, view)


async def stream_turn(graph: Any, graph_input: Any, config: dict[str, Any], policy: str, view: TurnView) -> bool:
    """Run a turn (or resume a paused one: ``graph_input`` is a ``Command``), streaming its steps
    and answer into the chat. False when it failed (and the failure was shown)."""
    try:
        async for mode, chunk in graph.astream(
            graph_input,
            config=config,
            context=Context(policy=policy),
            stream_mode=["messages", "updates", "tasks"],
        ):
            if mode == "tasks":
                if "result" in chunk or "error" in chunk:
                    await view.task_finished(chunk)
                else:
                    await view.task_started(chunk)
            elif mode == "messages":
                await view.token(*chunk)
            elif mode == "updates" and "synthesize" in chunk:
                update = chunk["synthesize"] or {}
                await view.answer(update.get("answer", ""), next((m.id for m in update.get("messages") or []), None))
    except Exception as exc:  # noqa: BLE001 - the UI boundary: show what broke, keep the session
        log.exception("turn failed on thread %s", config["configurable"]["thread_id"])
        await view.close_open_steps(f"{type(exc).__name__}: {exc}")
        if view.reply is not None:
            await view.reply.send()
        await cl.ErrorMessage(content=f"Sorry, this turn failed ({type(exc).__name__}: {exc}).").send()
        return False
    return True


async def conclude_turn(graph: Any, config: dict[str, Any], view: TurnView) -> None:
    """The reply's footer; or, when the turn paused for human review, what awaits a decision."""
    state = await graph.aget_state(config)
    if pending := review.pending_reviews(state):
        await send_review(config["configurable"]["thread_id"], pending)
        return
    values = state.values or {}
    if (error := runtime_failure(values.get("results") or [])) is not None:
        # no model could run: an error message with the cause and the fix, not an answer
        if view.reply is not None:
            await view.reply.remove()
        await cl.ErrorMessage(content=error).send()
        return
    ledger = values.get("ledger") or []
    if view.reply is None:  # synthesis always answers; this is only a guard
        await view.answer((state.values or {}).get("answer", ""))
    cost = round(sum(e.get("cost_usd", 0.0) for e in ledger), 8)
    assert view.reply is not None
    await view.reply.stream_token("\n\n" + "*" + footer(cost, time.monotonic() - view.started, ledger) + "*")
    await view.reply.send()


# --- human review: a paused turn's buttons ---------------------------------------------------------

REVIEW_ACTION = "review"
REVIEW_LABELS = {"approve": ("Approve", "check"), "reject": ("Reject", "x"), "edit": ("Edit SQL", "pencil")}
_review_actions: dict[str, list[cl.Action]] = {}  # thread id -> the buttons shown for its paused turn


def review_markdown(pending: list[dict[str, Any]]) -> str:
    out = ["**Waiting for review**"]
    for r in pending:
        out += ["", review.describe(r)]
        if r.get("sql"):
            out += [f"```sql\n{r['sql']}\n```"]
        if r.get("kind") == review.COST:
            out += [f"Model `{r.get('model')}` · about {_usd(r.get('estimate_usd', 0.0))} · spent so far "
                    f"{_usd(r.get('spent_usd', 0.0))} · review limit ${r.get('limit_usd', 0.0):.2f}"]
    return "\n".join(out)


NOT_A_REVIEWER = ("A reviewer other than you decides this request (separation of duties): over the HTTP API "
                  "(`POST /v1/threads/{id}/review`) or `switchboard resume`.")


async def send_review(thread_id: str, pending: list[dict[str, Any]], for_id: str | None = None) -> None:
    """Show what a paused turn waits for, with Approve / Reject (/ Edit SQL) buttons per review
    when this user may decide it (single-user: their own conversation); with ``for_id``, put the
    buttons back on that (saved) review message instead."""
    if not ui_principal().may_decide(ui_principal().name):  # the UI shows only the user's own threads
        if for_id is None:
            await cl.Message(content=review_markdown(pending) + "\n\n" + NOT_A_REVIEWER,
                             metadata={"review": [r["id"] for r in pending]}).send()
        return
    actions = []
    for n, r in enumerate(pending, 1):
        for action in r.get("actions") or review.ACTIONS.get(str(r.get("kind")), ()):
            label, icon = REVIEW_LABELS[action]
            actions.append(cl.Action(name=REVIEW_ACTION, payload={"id": r["id"], "action": action}, icon=icon,
                                     label=f"{label} #{n}" if len(pending) > 1 else label))
    if for_id is not None:
        for action in actions:
            await action.send(for_id=for_id)
    else:
        await cl.Message(content=review_markdown(pending), actions=actions,
                         metadata={"review": [r["id"] for r in pending]}).send()
    _review_actions[thread_id] = actions


def saved_review_message(thread: Mapping[str, Any], pending: list[dict[str, Any]]) -> str | None:
    """The id of the saved message that showed these reviews (buttons are not saved with it)."""
    wanted = {r["id"] for r in pending}
    for saved in reversed(thread.get("steps") or []):
        meta = saved.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta or "{}")
            except ValueError:
                continue
        if isinstance(meta, dict) and wanted <= set(meta.get("review") or []):
            return saved.get("id")
    return None


@cl.action_callback(REVIEW_ACTION)
async def on_review(action: cl.Action) -> None:
    """A reviewer's click: resume the paused turn with their decision and stream the rest."""
    graph = await _graph()
    thread_id = cl.context.session.thread_id
    who = ui_principal()
    try:  # the same checks as every door: not another's conversation, and not one's own review
        owner = await ACCESS.check_review(graph, thread_id, who)
    except ThreadNotFound:
        log.warning("refused a review on thread %s to UI user %s: not theirs", thread_id, who.name)
        await cl.Message(content=NOT_FOUND).send()
        return
    except ReviewForbidden as exc:
        await cl.ErrorMessage(content=str(exc)).send()
        return
    config = {"configurable": {"thread_id": thread_id}}
    snapshot = await graph.aget_state(config)
    pending = review.pending_reviews(snapshot)
    target = str(action.payload.get("id"))
    shown = next((r for r in pending if r["id"] == target), None)
    if shown is None:
        await action.remove()
        await cl.Message(content="That review was already decided.").send()
        return
    decision: dict[str, Any] = {"action": action.payload.get("action")}
    if decision["action"] == "edit":
        reply = await cl.AskUserMessage(content=f"Send the SQL to run instead of:\n```sql\n{shown.get('sql', '')}\n```",
                                        timeout=600).send()
        if not reply or not str(reply.get("output", "")).strip():
            await cl.Message(content="No query received: the review is still waiting.").send()
            return
        decision["sql"] = str(reply["output"]).strip().removeprefix("```sql").strip("`").strip()
    try:
        values = review.resume_map(pending, decision, interrupt_id=target)
    except review.ReviewError as exc:
        await cl.ErrorMessage(content=f"That decision cannot be applied: {exc}.").send()
        return
    await record_decisions(SERVICES.audit, thread_id, pending, values, who, owner)
    for shown_action in _review_actions.pop(thread_id, None) or [action]:
        await shown_action.remove()
    await cl.Message(content=f"Reviewer's decision: **{REVIEW_LABELS[decision['action']][0]}**"
                             + (f"\n```sql\n{decision['sql']}\n```" if decision.get("sql") else "")).send()
    view = TurnView()
    view.skip = {t.id for t in snapshot.tasks if t.result is not None and not t.interrupts}
    policy = turn_policy(snapshot.values, _valid_policy(cl.user_session.get("policy")))
    if await stream_turn(graph, Command(resume=values), config, policy, view):
        await conclude_turn(graph, config, view)
