"""The shapes observability reads, as protocols: it sits below the model layer, which produces
them (``tools.models.values.ModelSpec`` and ``LedgerEntry`` satisfy these)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class ModelInfo(Protocol):
    @property
    def name(self) -> str: ...  # registry name

    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...  # the provider's model id


class ModelCall(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def tokens_in(self) -> int: ...

    @property
    def tokens_out(self) -> int: ...

    @property
    def cost_usd(self) -> float: ...

    @property
    def cached(self) -> bool: ...

    @property
    def replayed(self) -> bool: ...

    @property
    def note(self) -> str: ...


def ledger_cost(entries: Iterable[Mapping[str, Any]]) -> float:
    """What a set of ledger entries (``LedgerEntry.as_dict()``) cost, in USD: the one sum every
    report uses (a turn's answer, its parts, the audit trail, the thread view)."""
    return round(sum(float(e.get("cost_usd") or 0.0) for e in entries), 8)
