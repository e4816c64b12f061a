"""A part's answer, streamed while its model writes it.

A specialist whose answer is its model's text passes a :class:`PartStream` to ``call_model``; the
gateway calls :meth:`PartStream.start` before each attempt (a fallback starts again) and
:meth:`PartStream.token` with each token. The stream writes LangGraph ``custom`` events::

    {"switchboard": "token", "subtask_id": ..., "agent": ..., "attempt": "<stream>:<n>", "text": ...}

What it sends is always a prefix of what the specialist will return: the specialist's own
``process`` (stripping, citation markers) is applied to the sentences already complete, and of the
sentence being written only what ``process`` cannot change is sent (no trailing whitespace or end
mark, nothing from an open ``[`` on). The doors (``switchboard/lifecycle.py``) compare the finished
answer with what was sent: the rest follows as a last token, and a new ``attempt`` (a fallback, a
validation retry on the heavy tier) restarts the part, so the half-answer of a failed model never
stays in the text.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable

from tools.models.gateway import announce

_ids = itertools.count(1)
# a sentence ends at an end mark followed by whitespace, or at a line break
_BOUNDARY = re.compile(r"(?<=[.!?])[ \t]+|\n+")
_HELD_TAIL = re.compile(r"[\s.!?:,;]+$")  # an end mark may still get a citation marker before it


class PartStream:
    """The answer of one part, as it is written. ``process`` turns finished model text into the
    specialist's answer text (``str.strip`` by default); ``blocking`` runs it off the event loop
    (RAG's attribution embeds sentences). ``lead`` is text the answer starts with whatever the
    model writes (RAG's sentence quoted from the top passage): it is sent as soon as a model call
    starts, before the model has read its prompt, and ``process`` must return it first."""

    def __init__(self, subtask_id: str, agent: str, process: Callable[[str], str] = str.strip,
                 *, blocking: bool = False, lead: str = "") -> None:
        self.subtask_id, self.agent = subtask_id, agent
        self.process, self.blocking, self.lead = process, blocking, lead
        self.stream_id = next(_ids)
        self.attempt = 0
        self.raw = ""
        self.sent = ""
        self._done_upto = 0  # raw[:_done_upto] is whole sentences, already processed into _done
        self._done = ""

    async def start(self, model: str) -> None:
        """A model call for this part begins (again, after a fallback)."""
        self.attempt += 1
        self.raw, self.sent, self._done_upto, self._done = "", "", 0, ""
        if self.lead:
            self._send(self.lead)

    async def cached(self, text: str) -> None:
        """The answer came from the response cache: all at once."""
        await self.start("cache")
        await self.token(text)

    async def token(self, text: str) -> None:
        if not text:
            return
        self.raw += text
        cut = max((m.start() for m in _BOUNDARY.finditer(self.raw)), default=0)
        if cut > self._done_upto:  # more whole sentences: process them as the specialist will
            head = self.raw[:cut]
            self._done = await asyncio.to_thread(self.process, head) if self.blocking else self.process(head)
            self._done_upto = cut
        if self.lead:  # whole sentences only: ``process`` may drop one (RAG drops a decline after a lead)
            self._send(self._done)
            return
        tail = self.raw[self._done_upto:]
        separator = tail[: len(tail) - len(tail.lstrip())] if self._done else ""
        tail = tail.lstrip()
        tail = tail.split("[", 1)[0]
        tail = re.split(r"[ \t]{2}", tail, maxsplit=1)[0]
        tail = _HELD_TAIL.sub("", tail)
        self._send(self._done + (separator + tail if tail else ""))

    def _send(self, visible: str) -> None:
        """Announce what ``visible`` adds to what was sent, when it extends it."""
        if visible.startswith(self.sent) and len(visible) > len(self.sent):
            delta, self.sent = visible[len(self.sent):], visible
            announce({"switchboard": "token", "subtask_id": self.subtask_id, "agent": self.agent,
                   "attempt": f"{self.stream_id}:{self.attempt}", "text": delta})
