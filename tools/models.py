"""The model registry: which models exist, what they cost, and how to build them.

Agents ask for a tier (``light``/``heavy``) or a capability, never a model name. Every call goes
through :func:`call_model`, which records tokens, cost (from the registry's prices) and latency
into a :class:`LedgerEntry` for the turn's ledger.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from pydantic import BaseModel, Field

from switchboard.settings import Settings
from tools.recording import Cassette, RecordingChatModel

if TYPE_CHECKING:
    from tools.audit import AuditTrail
    from tools.gateway import ModelGateway
    from tools.tier_router import TierRouter

log = logging.getLogger("switchboard.models")

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
        """Enabled explicitly, or its credential is set: in ``secrets`` (the settings, which read
        ``.env`` too) or in the environment."""
        if self.enabled is not None:
            return self.enabled
        return bool(self.requires_env and ((secrets or {}).get(self.requires_env) or os.environ.get(self.requires_env)))


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


@dataclass
class ModelHandle:
    """A chat model plus the registry facts needed to account for its calls."""

    spec: ModelSpec
    chat: BaseChatModel
    registry: ModelRegistry


class RegistryError(ValueError):
    pass


@dataclass
class ModelRegistry:
    settings: Settings
    specs: dict[str, ModelSpec]
    policies: dict[str, dict[str, TierRule]]
    challengers: dict[str, ChallengerSpec] = field(default_factory=dict)
    _cache: dict[tuple[str, str], ModelHandle] = field(default_factory=dict)
    _cassette: Cassette | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        return cls.from_file(settings.models_file, settings)

    @classmethod
    def from_file(cls, path: Path, settings: Settings) -> ModelRegistry:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        specs = {n: ModelSpec(name=n, **body) for n, body in (raw.get("models") or {}).items()}
        for spec in specs.values():
            unknown = [f for f in spec.fallbacks if f not in specs]
            if unknown:
                raise RegistryError(f"model {spec.name!r} names unknown fallbacks {unknown}")
        challengers = {t: ChallengerSpec(**body) for t, body in (raw.get("challengers") or {}).items()}
        for tier, ch in challengers.items():
            if tier not in ("light", "heavy"):
                raise RegistryError(f"challengers: {tier!r} is not a tier (light or heavy)")
            if ch.model not in specs:
                raise RegistryError(f"challenger for the {tier} tier names unknown model {ch.model!r}")
        return cls(settings=settings, specs=specs, policies=raw.get("policies") or {}, challengers=challengers)

    @cached_property
    def gateway(self) -> ModelGateway:
        from tools.gateway import ModelGateway

        return ModelGateway(self)

    @cached_property
    def audit(self) -> AuditTrail:
        from tools.audit import AuditTrail

        return AuditTrail.from_settings(self.settings)

    @cached_property
    def cassette(self) -> Cassette | None:
        if self.settings.record_mode == "off":
            return None
        if self.settings.cassette_path is None:
            raise RegistryError("record/replay mode needs SWITCHBOARD_CASSETTE_PATH")
        return Cassette.load(self.settings.cassette_path)

    def available(self) -> list[ModelSpec]:
        return [s for s in self.specs.values() if s.available(self.secrets)]

    @cached_property
    def secrets(self) -> dict[str, str]:
        """Provider credentials from the settings (environment or ``.env``), by variable name."""
        s = self.settings
        found = {"OPENAI_API_KEY": s.openai_api_key, "ANTHROPIC_API_KEY": s.anthropic_api_key}
        return {k: v.get_secret_value() for k, v in found.items() if v is not None and v.get_secret_value()}

    def is_available(self, spec: ModelSpec) -> bool:
        return spec.available(self.secrets)

    @cached_property
    def tier_router(self) -> TierRouter:
        from tools.tier_router import TierRouter

        return TierRouter.load(self.settings.tier_router_file)

    def heavy_differs(self, capability: str | None = None) -> bool:
        """Is there a heavy model to escalate to, distinct from the light one?"""
        try:
            return self.pick("heavy", capability).name != self.pick("light", capability).name
        except RegistryError:
            return False

    def decide_tier(self, agent: str, policy: str | None = None, task: str | None = None,
                    capability: str | None = None) -> TierDecision:
        """The policy's rule for ``agent``: a fixed tier, or ``auto`` -- the tier router reads the
        subtask and sends it to the heavy tier only when it predicts the light model won't do, at
        the policy's threshold (cost-saver < balanced < best-quality in heavy share). No model is
        called; scoring is one embedding. With no distinct heavy model configured there is
        nothing to choose, so the router is not even asked."""
        policy = policy or self.settings.routing_policy
        if policy == ESCALATE_POLICY:
            return TierDecision("heavy", "retry on the heavy tier after the light answer failed validation")
        rule = self.policies.get(policy, {}).get(agent, "light")
        if rule != "auto":
            return TierDecision(rule, f"policy {policy}: {agent} uses the {rule} tier")
        if not self.heavy_differs(capability):
            return TierDecision("light", "no distinct heavy model is available")
        if not task:
            return TierDecision("light", "no subtask text to score")
        choice = self.tier_router.choose(task, policy)
        verdict = "needs" if choice.tier == "heavy" else "does not need"
        return TierDecision(
            choice.tier,
            f"tier router: {agent} subtask {verdict} the heavy model "
            f"(score {choice.score:.2f} vs {policy} threshold {choice.threshold:.2f})",
            round(choice.score, 4), round(choice.threshold, 4),
        )

    def pick(self, tier: Tier, capability: str | None = None) -> ModelSpec:
        """The first available model of ``tier`` with ``capability``; the other tier if none."""
        candidates = [s for s in self.available() if capability is None or capability in s.capabilities]
        for wanted in (tier, "heavy" if tier == "light" else "light"):
            for spec in candidates:
                if spec.tier == wanted:
                    return spec
        raise RegistryError(
            f"no available model for tier={tier!r}"
            + (f" with capability {capability!r}" if capability else "")
            + "; enable one in the model registry or set its API key"
        )

    def for_agent(self, agent: str, policy: str | None = None, capability: str | None = None,
                  task: str | None = None) -> ModelHandle:
        return self.route(agent, policy, task=task, capability=capability)[0]

    def route(self, agent: str, policy: str | None = None, *, task: str | None = None,
              capability: str | None = None) -> tuple[ModelHandle, TierDecision]:
        """The model for one subtask and the tier decision behind it."""
        decision = self.decide_tier(agent, policy, task, capability)
        spec = self.pick(decision.tier, capability)
        ab = self.challenger_for(decision.tier, "ab", capability)
        if ab is not None and ab.name != spec.name:
            from tools.gateway import current_thread_id

            thread = current_thread_id()
            share = self.challengers[decision.tier].share
            if thread and ab_bucket(thread, decision.tier) < share:
                decision = replace(decision, arm="challenger",
                                   reason=f"{decision.reason}; A/B trial: {ab.name} serves {share:.0%} of conversations")
                spec = ab
        return self.handle(spec.name, role=agent), decision

    def challenger_for(self, tier: str, mode: str, capability: str | None = None) -> ModelSpec | None:
        """The tier's challenger in ``mode``, if one is configured and can be called."""
        ch = self.challengers.get(tier)
        if ch is None or ch.mode != mode:
            return None
        spec = self.specs[ch.model]
        if not spec.available(self.secrets) or (capability and capability not in spec.capabilities):
            return None
        return spec

    def light_instead(self, spec: ModelSpec) -> ModelSpec | None:
        """The light-tier model to use instead of heavy ``spec`` (budget, a reviewer's "no"), if any."""
        if spec.tier != "heavy":
            return None
        light = self.pick("light")
        return light if light.tier == "light" and light.name != spec.name else None

    def escalation(self, handle: ModelHandle, agent: str, capability: str | None = None) -> ModelHandle | None:
        """The heavy model to escalate to from ``handle`` (cascade), or None if there is none."""
        if handle.spec.tier == "heavy" or not self.heavy_differs(capability):
            return None
        return self.handle(self.pick("heavy", capability).name, role=agent)

    def use_chat_model(self, name: str, chat: BaseChatModel, roles: tuple[str, ...] = ()) -> None:
        """Serve ``name`` with a given chat model (fakes in tests and benchmarks)."""
        for role in roles or ("default", "triage", "sql", "rag", "vision", "general", "validator"):
            self._cache[(name, role)] = ModelHandle(spec=self.specs[name], chat=chat, registry=self)

    def handle(self, name: str, role: str = "default") -> ModelHandle:
        key = (name, role)
        if key not in self._cache:
            spec = self.specs[name]
            chat = self._build(spec, role)
            if self.cassette is not None:
                chat = RecordingChatModel(
                    model_id=name,
                    mode=self.settings.record_mode,
                    cassette=self.cassette,
                    inner_factory=lambda chat=chat: chat,
                )
            self._cache[key] = ModelHandle(spec=spec, chat=chat, registry=self)
        return self._cache[key]

    def _build(self, spec: ModelSpec, role: str) -> BaseChatModel:
        s = self.settings
        if spec.provider == "llamacpp":
            return _LazyLocal(spec=spec, settings=s, role=role)
        if spec.provider in ("openai", "openai_compatible"):
            from langchain_openai import ChatOpenAI

            kwargs: dict[str, Any] = {
                "model": spec.model, "temperature": 0, "max_retries": s.model_max_retries,
                "timeout": s.model_timeout_s, "stream_usage": True,
            }
            if spec.provider == "openai_compatible":
                kwargs["base_url"] = spec.base_url
                env = spec.requires_env or ""
                kwargs["api_key"] = self.secrets.get(env) or os.environ.get(env, "") or "not-needed"
            else:
                if s.openai_base_url:
                    kwargs["base_url"] = s.openai_base_url
                if key := self.secrets.get(spec.requires_env or "OPENAI_API_KEY"):
                    kwargs["api_key"] = key
            return ChatOpenAI(**kwargs)
        if spec.provider == "anthropic":
            try:
                from langchain_anthropic import ChatAnthropic  # optional extra
            except ImportError as exc:
                raise RegistryError("install langchain-anthropic to use Anthropic models") from exc
            key = self.secrets.get(spec.requires_env or "ANTHROPIC_API_KEY")
            return ChatAnthropic(model=spec.model, temperature=0, **({"api_key": key} if key else {}))
        raise RegistryError(f"provider {spec.provider!r} cannot be built from the registry")


class _LazyLocal(BaseChatModel):
    """Defers assembling/loading the GGUF until the first real call (replay never loads it)."""

    spec: ModelSpec
    settings: Settings
    role: str

    @property
    def _llm_type(self) -> str:
        return "llamacpp-local-lazy"

    @cached_property
    def _model(self) -> BaseChatModel:
        from tools.local_llm import ChatLocalLlama, assemble_packaged_gguf, check_runtime

        path = self.settings.local_gguf or assemble_packaged_gguf(self.settings.model_cache_dir)
        # A runtime that would die by a signal here fails its check in a child process instead,
        # with an error that names the fix (LocalRuntimeUnavailable); this process lives on.
        check_runtime(path, n_threads=self.settings.local_threads, cache_dir=self.settings.model_cache_dir,
                      timeout_s=self.settings.local_check_timeout_s)
        return ChatLocalLlama(
            model_path=str(path),
            model_name=self.spec.model,
            role=self.role,
            n_ctx=self.settings.local_ctx,
            n_threads=self.settings.local_threads,
        )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[override]
        return self._model._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[override]
        return self._model._stream(messages, stop=stop, run_manager=run_manager, **kwargs)


async def call_model(
    handle: ModelHandle,
    messages: list[BaseMessage],
    *,
    agent: str,
    task: str,
    max_tokens: int = 256,
    stop: list[str] | None = None,
    subtask_id: str = "",
    note: str = "",
    escalated: bool = False,
) -> tuple[AIMessage, LedgerEntry]:
    """Call a model (streaming, so UIs see tokens) through the gateway: cache, budget, fallback,
    circuit breaker, and a ledger entry with tokens, cost and latency. ``note`` (an escalation's
    reason, say) is kept with the call in the ledger."""
    msg, entry = await handle.registry.gateway.call(
        handle, messages, agent=agent, task=task, max_tokens=max_tokens, stop=stop, subtask_id=subtask_id,
        note=note,
    )
    entry.escalated = escalated
    return msg, entry
