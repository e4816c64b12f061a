"""The model layer's value types: what a model is, which tier it serves, what a call cost.

This module imports nothing of the project, so every layer (registry, gateway, agents, the audit
trail, metrics, the doors) can name these types without pulling in the machinery behind them.
The routing policies are named here, once: the registry file's ``policies`` rules, the tier
router's per-policy thresholds, the settings' default and both doors' choices all read
:data:`POLICIES`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, BaseMessage
from pydantic import BaseModel, Field

RoutingPolicy = Literal["cost-saver", "balanced", "best-quality"]
POLICIES: tuple[RoutingPolicy, ...] = ("cost-saver", "balanced", "best-quality")  # cheapest first
DEFAULT_POLICY: RoutingPolicy = "balanced"


def default_model_cache() -> Path:
    """Where model files assembled or built on this machine are kept unless configured otherwise
    (``Settings.model_cache_dir``): the local GGUF, the knowledge base's MPNet graph."""
    return Path.home() / ".cache" / "switchboard" / "models"

Tier = Literal["light", "heavy"]
TierRule = Literal["light", "heavy", "auto"]  # "auto": the tier router decides per subtask
ESCALATE_POLICY = "escalate"  # a retry after a failed validation: the heavy tier, whatever the rules
Provider = Literal["llamacpp", "openai", "openai_compatible", "anthropic", "fake"]


class Price(BaseModel):
    input: float = 0.0  # USD per million input tokens
    output: float = 0.0  # USD per million output tokens


class ModelSpec(BaseModel):
    name: str
    provider: Provider
    model: str
    version: str = ""
    tier: Tier = "light"
    price: Price = Field(default_factory=Price)
    capabilities: list[str] = Field(default_factory=list)
    base_url: str | None = None
    requires_env: str | None = None
    enabled: bool | None = None
    fallbacks: list[str] = Field(default_factory=list)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price.input + tokens_out * self.price.output) / 1_000_000

    def available(self, secrets: Mapping[str, str] | None = None) -> bool:
        """Enabled explicitly, or its credential is among ``secrets`` (the composition root
        gathers them from the settings, which read ``.env`` too, and the environment)."""
        if self.enabled is not None:
            return self.enabled
        return bool(self.requires_env and (secrets or {}).get(self.requires_env))


class ChallengerSpec(BaseModel):
    """A model on trial for a tier: ``ab`` serves it to ``share`` of conversations (sticky per
    thread); ``shadow`` has it answer a copy of the tier's subtasks in the background, recorded in
    the audit trail and never shown to the user."""

    model: str
    mode: Literal["ab", "shadow"]
    share: float = Field(default=0.0, ge=0.0, le=1.0)


def ab_bucket(thread_id: str, tier: str) -> float:
    """A conversation's fixed place in [0, 1) for A/B assignment: deterministic from the thread."""
    digest = hashlib.sha256(f"switchboard-ab:{tier}:{thread_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class LedgerEntry:
    agent: str
    task: str
    model: str
    model_version: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: int
    replayed: bool = False
    cached: bool = False
    subtask_id: str = ""
    note: str = ""
    role: str = "serve"  # serve | shadow | validate | vote
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    escalated: bool = False  # made on the heavy tier after the light one failed (a query, a validation)
    fallback: bool = False  # answered by a fallback after the chosen model failed

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TierDecision:
    """Which tier a subtask got, and why (kept in the result's evidence and the audit trail)."""

    tier: Tier
    reason: str
    score: float | None = None  # the tier router's P(light model is not enough), when it was asked
    threshold: float | None = None
    arm: str = "champion"  # "challenger" when an A/B trial served this subtask

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "reason": self.reason, "score": self.score, "threshold": self.threshold,
                "arm": self.arm}


class RegistryError(ValueError):
    """The model registry file is wrong, or no model can serve a request."""


class TierChoice(Protocol):
    """A tier decision, read-only (``tools.routing.tier_router.Choice`` is a NamedTuple)."""

    @property
    def tier(self) -> Tier: ...

    @property
    def score(self) -> float: ...

    @property
    def threshold(self) -> float: ...


class TierChooser(Protocol):
    """What the registry asks of the tier router (``tools.routing.tier_router.TierRouter``)."""

    def choose(self, task: str, policy: str, /) -> TierChoice: ...


class Caller(Protocol):
    """What the registry's handles call through: the gateway (``tools.models.gateway``)."""

    async def call(self, handle: Any, messages: list[BaseMessage], *, agent: str, task: str, max_tokens: int,
                   stop: list[str] | None, subtask_id: str, note: str = "",
                   answer: AnswerSink | None = None) -> tuple[AIMessage, LedgerEntry]: ...


class AnswerSink(Protocol):
    """Where the tokens of a call whose text is the user's answer go as they arrive
    (``agents/streaming.py`` ``PartStream``): the gateway calls ``start`` before each attempt (a
    fallback starts again), ``token`` per token, ``cached`` for an answer from the cache."""

    async def start(self, model: str) -> None: ...

    async def token(self, text: str) -> None: ...

    async def cached(self, text: str) -> None: ...
