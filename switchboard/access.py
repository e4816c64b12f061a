"""Who may do what with a conversation: ownership and separation of duties, for every door.

* **Ownership.** A conversation (a LangGraph thread id, shared by every door) belongs to the
  principal who first used it: an HTTP API key's name, a chat-UI user, or the process's local
  principal (CLI, Python API; ``Settings.principal``). Owners are kept in the audit database
  (``tools/observability/audit.py``, table ``thread_owners``); claiming is one INSERT, so two doors racing for a
  new id cannot both win. A thread owned by someone else is refused exactly like one that does
  not exist (:class:`ThreadNotFound`), so ids cannot be probed. A thread with checkpoints but no
  owner (made before owners were recorded) can only be claimed by the local principal.
* **Reading.** The owner and admins (``Settings.admins``) may read a conversation; reviewers may
  also see what it waits for (its pending reviews), not continue it.
* **Separation of duties.** Deciding a human review (``tools/review.py``) needs a reviewer
  (``Settings.reviewers``) who is *not* the conversation's owner. In a single-user deployment
  (``Principal.single_user``) the one user decides reviews on their own conversations instead.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from switchboard.settings import Settings

CLI, HTTP, UI = "cli", "http", "ui"


class ThreadNotFound(LookupError):
    """No such conversation -- or one this principal may not see (the same answer on purpose)."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"conversation {thread_id!r} not found")
        self.thread_id = thread_id


class ReviewForbidden(PermissionError):
    """This principal may see the conversation but not decide its review."""


@dataclass(frozen=True)
class Principal:
    """Who is asking, as a door authenticated them."""

    name: str
    door: str
    reviewer: bool = False
    admin: bool = False
    single_user: bool = False  # the one user: decides reviews on their own conversations
    may_claim_legacy: bool = False  # may adopt a thread that has checkpoints but no owner record

    @classmethod
    def local(cls, settings: Settings) -> Principal:
        """The CLI's and the Python API's user. Single-user unless reviewers are configured."""
        name = settings.principal.strip() or "local"
        single = settings.single_user if settings.single_user is not None else not settings.reviewers
        return cls(name, CLI, reviewer=name in settings.reviewers, admin=name in settings.admins,
                   single_user=single, may_claim_legacy=True)

    @classmethod
    def named(cls, name: str, door: str, settings: Settings, *, single_user_default: bool = False) -> Principal:
        """An HTTP key's principal or a chat-UI user (never claims ownerless old threads)."""
        single = settings.single_user if settings.single_user is not None else single_user_default
        return cls(name, door, reviewer=name in settings.reviewers, admin=name in settings.admins,
                   single_user=single)

    def may_decide(self, owner: str) -> bool:
        """Separation of duties: a reviewer decides other people's reviews; the single user their own."""
        return self.single_user if owner == self.name else self.reviewer


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


OWNER_CACHE = 10_000  # owners remembered per process (least recently used go first)


class Access:
    """The checks every door makes before it touches a thread (owners kept in ``audit``)."""

    def __init__(self, audit: Any) -> None:
        self.audit = audit
        # an owner record never changes once written (claiming is one INSERT), so a known owner is
        # remembered: a turn checks access at several doors' steps, and each check was a query
        self._owners: OrderedDict[str, str] = OrderedDict()

    async def owner(self, thread_id: str) -> str | None:
        if (known := self._owners.get(thread_id)) is not None:
            self._owners.move_to_end(thread_id)
            return known
        owner = await asyncio.to_thread(self.audit.thread_owner, thread_id)
        if owner is not None:
            self._remember(thread_id, owner)
        return owner

    def _remember(self, thread_id: str, owner: str) -> None:
        self._owners[thread_id] = owner
        if len(self._owners) > OWNER_CACHE:
            self._owners.popitem(last=False)

    async def _owner_or_claim(self, graph: Any, thread_id: str, p: Principal, *, create: bool) -> str:
        """The thread's owner; an unowned one is claimed by ``p`` when it is new and ``create``,
        or when it has checkpoints and ``p`` may adopt such threads. Else :class:`ThreadNotFound`."""
        owner = await self.owner(thread_id)
        if owner is not None:
            return owner
        exists = bool((await graph.aget_state(_config(thread_id))).values)
        if (exists and not p.may_claim_legacy) or (not exists and not create):
            raise ThreadNotFound(thread_id)
        claimed: str = await asyncio.to_thread(self.audit.claim_thread, thread_id, p.name, p.door)
        self._remember(thread_id, claimed)
        return claimed

    async def check_turn(self, graph: Any, thread_id: str, p: Principal) -> None:
        """Ask on, resume as owner, or recover a thread: only its owner (a new id becomes theirs)."""
        if await self._owner_or_claim(graph, thread_id, p, create=True) != p.name:
            raise ThreadNotFound(thread_id)

    async def check_read(self, graph: Any, thread_id: str, p: Principal) -> str:
        """Read a conversation's history: its owner or an admin. Returns the owner."""
        owner = await self._owner_or_claim(graph, thread_id, p, create=False)
        if owner != p.name and not p.admin:
            raise ThreadNotFound(thread_id)
        return owner

    async def check_see_reviews(self, graph: Any, thread_id: str, p: Principal) -> str:
        """See what a conversation waits for: its owner, an admin, or a reviewer. Returns the owner."""
        owner = await self._owner_or_claim(graph, thread_id, p, create=False)
        if owner != p.name and not (p.admin or p.reviewer):
            raise ThreadNotFound(thread_id)
        return owner

    async def check_review(self, graph: Any, thread_id: str, p: Principal) -> str:
        """Decide a conversation's review: see :meth:`Principal.may_decide`. Returns the owner."""
        owner = await self.check_see_reviews(graph, thread_id, p)
        if not p.may_decide(owner):
            if owner == p.name and p.reviewer:
                why = "a reviewer cannot decide a review of their own conversation; another reviewer must"
            else:
                why = f"{p.name!r} is not a reviewer (reviewers are set with SWITCHBOARD_REVIEWERS)"
            raise ReviewForbidden(f"Not allowed to decide this review: {why}.")
        return owner
