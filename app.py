"""Switchboard's chat front end (Chainlit). Run: ``uv run chainlit run app.py``.

Thin on purpose: the support graph (``graphs/support.py``) does all the work; this file runs it
per user turn and shows what happened. Triage and every specialist appear as collapsible steps
(routing scores, model, tokens, cost, latency, SQL and its result, citations, what was read from
an image); specialists' model tokens stream into their steps, the composed answer streams into
the reply, and a footer gives the turn's cost, time and LLM calls.

This file is only the Chainlit wiring: the decorated handlers (Chainlit finds them by importing it)
and the process's settings, services and runtime they share. The parts they use are in
``switchboard/ui/`` (sign-in, chat history, uploads, what the steps say, one turn, reviews).

Persistence: the Chainlit thread id *is* the LangGraph thread id. Conversation context lives in
the LangGraph checkpointer (``switchboard.persistence``); the chat history the sidebar lists
lives in Chainlit's SQLAlchemy data layer, a SQLite file under the data dir by default
(``SWITCHBOARD_UI_DATABASE_URL`` to change it). Chainlit only keeps history for signed-in users:
set ``SWITCHBOARD_UI_USERS="alice:secret,bob:other"`` for password sign-in; when it is unset,
everyone is the single local user "local" (no login page), which suits a local app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import AsyncExitStack
from typing import Any

import chainlit as cl
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.types import ThreadDict

from graphs.support import build_support_graph
from switchboard.access import ReviewForbidden, ThreadNotFound
from switchboard.api import ConversationBusy, Switchboard
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings
from switchboard.ui.auth import (
    check_password,
    drop_chainlit_ci_fake_key,
    ensure_auth_secret,
    foreign_thread,
    parse_ui_users,
    ui_principal,
)
from switchboard.ui.chat_settings import send_settings
from switchboard.ui.data_layer import (
    OrderedSQLAlchemyDataLayer,
    prepare_ui_database,
    private_files_dir,
    ui_database_url,
)
from switchboard.ui.markdown import banner_markdown
from switchboard.ui.reviews import (
    REVIEW_ACTION,
    REVIEW_LABELS,
    remove_review_buttons,
    saved_review_message,
    send_review,
)
from switchboard.ui.turn_view import TurnView, show_turn
from switchboard.ui.uploads import pick_attachment, stash_upload
from tools import review
from tools.models.values import POLICIES
from tools.observability.redaction import install_log_redaction
from tools.vision.images import ImageRejected

log = logging.getLogger("switchboard.ui")
install_log_redaction()  # Chainlit configures logging itself; records are redacted as they are made

SETTINGS = Settings()
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- process environment (app.py is imported before `chainlit run` checks its auth secret) ---

drop_chainlit_ci_fake_key()
ensure_auth_secret(SETTINGS.data_dir)
private_files_dir()
UI_USERS = parse_ui_users(os.environ.get("SWITCHBOARD_UI_USERS", ""))


# --- chat history: Chainlit's data layer on SQLite or PostgreSQL (switchboard/ui/data_layer.py) ---------------

UI_DATABASE_URL = ui_database_url(SETTINGS)
prepare_ui_database(UI_DATABASE_URL)


@cl.data_layer
def _data_layer() -> SQLAlchemyDataLayer:
    connect_args = {"timeout": 30} if UI_DATABASE_URL.startswith("sqlite") else None
    return OrderedSQLAlchemyDataLayer(conninfo=UI_DATABASE_URL, connect_args=connect_args,
                                      services=SERVICES, access=ACCESS, runtime=_runtime)


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

ACCESS = SERVICES.access  # the one Switchboard uses too: owners it looked up are remembered once
# the LangGraph thread is the Chainlit thread id, which the client chooses (socket.io auth.threadId):
# it is used only when it is this user's conversation, or a new one
NOT_FOUND = "This conversation was not found. Start a new chat to ask something."
BUSY = "This conversation is still answering your previous message (in another window?). Send this one again when it has finished: nothing was lost."


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
    await SERVICES.turn_locks.aclose()


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


def _valid_policy(value: Any) -> str:
    return value if value in POLICIES else SETTINGS.routing_policy


@cl.on_chat_start
async def on_chat_start() -> None:
    policy = policy_of_session()
    cl.user_session.set("policy", policy)
    await send_settings(policy)
    await cl.Message(content=banner_markdown(SERVICES, cl.user_session.get("policy"))).send()
    # a client-chosen id (socket.io auth.threadId) of another's conversation: say so at once (each
    # message and action checks again); the graph exists from startup, warm or not
    who = ui_principal(SETTINGS, UI_USERS)
    if await foreign_thread(ACCESS, _runtime["graph"], cl.context.session.thread_id, who):
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
    await send_settings(policy)
    graph = await _graph()
    who = ui_principal(SETTINGS, UI_USERS)
    if await foreign_thread(ACCESS, graph, thread["id"], who):  # Chainlit's thread is the user's; the graph's is not
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
            await send_review(thread["id"], pending, who, for_id=saved)


# --- one user turn (switchboard/ui/turn_view.py) ------------------------------------------------


@cl.on_message
async def on_message(message: cl.Message) -> None:
    graph = await _graph()
    thread_id = cl.context.session.thread_id
    who = ui_principal(SETTINGS, UI_USERS)
    view = TurnView(who, thread_id)
    attachment = pick_attachment(message.elements)
    # Switchboard.stream checks who is asking and a pending review before it reads the thread; an
    # upload is checked here first, so nothing is stored for a thread this user may not continue
    if attachment is not None and not await _may_continue(graph, thread_id, who):
        return
    if attachment is not None:
        try:
            view.image_path = str(stash_upload(attachment, SETTINGS.data_dir, thread_id))
        except ImageRejected as exc:  # not a raster image the vision path reads (by its content)
            await cl.Message(content=exc.message).send()
            return
    question = message.content.strip()
    if not question and view.image_path:
        question = "What does this image show?"
    # one lifecycle for every door (switchboard/api.py): a turn a crash cut off is finished first
    board = Switchboard(graph, SERVICES, principal=who)
    try:
        await show_turn(board.stream(question, thread_id=thread_id, image=view.image_path, policy=policy_of_session()),
                        view)
    except ThreadNotFound:  # the user's conversation, or a new one that becomes theirs; never another door's
        log.warning("refused thread %s to UI user %s: not theirs", thread_id, who.name)
        await cl.Message(content=NOT_FOUND).send()
    except ConversationBusy:  # the same chat is answering in another tab or window
        await cl.Message(content=BUSY).send()
    except asyncio.CancelledError:  # the stop button: the model calls are cancelled; close the turn
        await asyncio.shield(board.stop(thread_id))
        raise


def policy_of_session() -> str:
    return _valid_policy(cl.user_session.get("policy"))


async def _may_continue(graph: Any, thread_id: str, who: Any) -> bool:
    """The checks ``Switchboard.stream`` makes, for a turn that must store an upload first: this
    user's conversation (or a new one), and not one paused for review (its buttons are shown)."""
    try:
        await ACCESS.check_turn(graph, thread_id, who)
    except ThreadNotFound:
        log.warning("refused thread %s to UI user %s: not theirs", thread_id, who.name)
        await cl.Message(content=NOT_FOUND).send()
        return False
    if pending := review.pending_reviews(await graph.aget_state({"configurable": {"thread_id": thread_id}})):
        await TurnView(who, thread_id).waiting_for_review(pending)
        return False
    return True


# --- human review: a paused turn's buttons (switchboard/ui/reviews.py) --------------------------


@cl.action_callback(REVIEW_ACTION)
async def on_review(action: cl.Action) -> None:
    """A reviewer's click: resume the paused turn with their decision and stream the rest."""
    graph = await _graph()
    thread_id = cl.context.session.thread_id
    who = ui_principal(SETTINGS, UI_USERS)
    try:  # the same checks as every door: not another's conversation, and not one's own review
        await ACCESS.check_review(graph, thread_id, who)  # before asking for an edited query
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
    try:  # checked before it runs: a bad decision leaves the review waiting
        review.resume_map(pending, decision, interrupt_id=target)
    except review.ReviewError as exc:
        await cl.ErrorMessage(content=f"That decision cannot be applied: {exc}.").send()
        return
    await remove_review_buttons(thread_id, action)
    await cl.Message(content=f"Reviewer's decision: **{REVIEW_LABELS[decision['action']][0]}**"
                             + (f"\n```sql\n{decision['sql']}\n```" if decision.get("sql") else "")).send()
    board = Switchboard(graph, SERVICES, principal=who)
    try:  # the same lifecycle as every door: the decision is recorded, then the turn goes on
        await show_turn(board.resume_stream(thread_id, decision, interrupt_id=target), TurnView(who, thread_id))
    except asyncio.CancelledError:
        await asyncio.shield(board.stop(thread_id))
        raise
