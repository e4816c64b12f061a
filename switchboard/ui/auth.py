"""Sign-in and who is asking: the users of ``SWITCHBOARD_UI_USERS``, their password check, the
secret Chainlit signs its login cookie with, and the signed-in user as a principal
(``switchboard/access.py``)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chainlit as cl

from switchboard.access import UI, Access, Principal
from switchboard.settings import Settings


def drop_chainlit_ci_fake_key() -> None:
    """``chainlit run`` treats env ``CI`` as its ``--ci`` flag and then sets a fake
    OPENAI_API_KEY, which would switch on the hosted models of the registry. Undo that."""
    if os.environ.get("OPENAI_API_KEY") == "sk-FAKE-OPENAI-API-KEY":  # secret-scan: allow (Chainlit's placeholder)
        del os.environ["OPENAI_API_KEY"]


def ensure_auth_secret(data_dir: Path) -> None:
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


def ui_principal(settings: Settings, users: Mapping[str, str]) -> Principal:
    """The signed-in user; with no SWITCHBOARD_UI_USERS (``users`` empty), the single local user
    (single-user: they decide their own reviews). A reviewer (SWITCHBOARD_REVIEWERS) never decides
    their own. Call it in a Chainlit handler (it reads the session's user)."""
    user = cl.context.session.user
    name = user.identifier if user is not None else "local"
    return Principal.named(name, UI, settings, single_user_default=not users)


async def foreign_thread(access: Access, graph: Any, thread_id: str, who: Principal) -> bool:
    """Is this thread id someone else's than ``who`` (or an ownerless old conversation the UI may
    not adopt)? Claims nothing: a new id becomes the user's with their first message."""
    owner = await access.owner(thread_id)
    if owner is not None:
        return owner != who.name
    return bool((await graph.aget_state({"configurable": {"thread_id": thread_id}})).values)
