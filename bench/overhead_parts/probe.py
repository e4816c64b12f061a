"""Wall-time probes: the time chosen methods of the services and checkpointers are running, per
bucket, for figure 1's breakdown of a turn."""

from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from typing import Any

from switchboard.services import Services


class Probe:
    """Wall time during which a chosen method is running, per bucket, between two ``take()`` calls.

    Time is the union of the calls' intervals, so calls that overlap (a two-part turn's branches,
    LangGraph's background checkpoint writes) are not counted twice; a method can feed several
    buckets (one of its own and a group). Methods are wrapped on the instance (``functools.wraps``
    keeps the signature LangGraph inspects). Only meaningful while turns run one at a time;
    ``active`` turns it off."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._running: dict[str, int] = defaultdict(int)
        self._since: dict[str, float] = {}
        self.active = False

    def _enter(self, buckets: tuple[str, ...]) -> None:
        now = time.perf_counter()
        for b in buckets:
            self.counts[b] += 1
            if self._running[b] == 0:
                self._since[b] = now
            self._running[b] += 1

    def _exit(self, buckets: tuple[str, ...]) -> None:
        now = time.perf_counter()
        for b in buckets:
            self._running[b] -= 1
            if self._running[b] == 0:
                self.totals[b] += now - self._since.pop(b)

    def wrap(self, obj: Any, name: str, *buckets: str) -> None:
        fn = getattr(obj, name)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                if not self.active:
                    return await fn(*args, **kwargs)
                self._enter(buckets)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self._exit(buckets)
            setattr(obj, name, timed_async)
        else:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                if not self.active:
                    return fn(*args, **kwargs)
                self._enter(buckets)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._exit(buckets)
            setattr(obj, name, timed)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        """Closed intervals' time per bucket and the number of calls, then start afresh (a call
        still running -- a background checkpoint write -- counts toward the next turn)."""
        out = dict(self.totals), dict(self.counts)
        self.totals.clear()
        self.counts.clear()
        return out


def instrument(services: Services, probe: Probe) -> None:
    gateway = services.registry.gateway
    probe.wrap(services.triage, "decide", "triage")
    probe.wrap(gateway, "call", "gateway", "work")
    for name in ("record", "spent", "cached", "store"):
        probe.wrap(gateway.ledger, name, "ledger")
    probe.wrap(services.kb, "search", "retrieval", "work")
    probe.wrap(services.db, "run", "sql_db", "work")
    audit = getattr(services, "audit", None)  # the turn's audit record, written by `remember`
    if audit is not None and hasattr(audit, "record_turn"):
        probe.wrap(audit, "record_turn", "audit")


def instrument_saver(saver: Any, probe: Probe, bucket: str) -> None:
    for name in ("aget_tuple", "aput", "aput_writes"):
        probe.wrap(saver, name, bucket)
