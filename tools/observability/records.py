"""The shapes observability reads, as protocols: it sits below the model layer, which produces
them (``tools.models.values.ModelSpec`` and ``LedgerEntry`` satisfy these)."""

from __future__ import annotations

from typing import Protocol


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
