"""The model registry: which models exist, which tier serves a subtask, and their clients.

Agents ask for a tier (``light``/``heavy``) or a capability, never a model name. Every call goes
through :func:`tools.models.gateway.call_model`, which records tokens, cost (from the registry's
prices) and latency into a :class:`LedgerEntry` for the turn's ledger. The registry takes plain
values; the composition root (``switchboard/services.py``) builds it and binds the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import yaml
from langchain_core.language_models import BaseChatModel

from tools.models.recording import Cassette, RecordingChatModel
from tools.models.values import (
    ESCALATE_POLICY,
    POLICIES,
    Caller,
    ChallengerSpec,
    ModelSpec,
    RegistryError,
    Tier,
    TierChooser,
    TierDecision,
    TierRule,
    ab_bucket,
)

log = logging.getLogger("switchboard.models")


def current_thread_id() -> str | None:
    """The LangGraph thread of the run we are inside, if any (budgets are per conversation)."""
    from langgraph.config import get_config

    try:
        return (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:  # not inside a graph run (benchmarks, direct calls)
        return None


@dataclass
class ModelHandle:
    """A chat model plus the registry facts needed to account for its calls."""

    spec: ModelSpec
    chat: BaseChatModel
    registry: ModelRegistry


def read_registry_file(path: Path) -> tuple[dict[str, ModelSpec], dict[str, dict[str, TierRule]], dict[str, ChallengerSpec]]:
    """The models, policies and challengers of a registry file, checked: fallbacks and
    challengers name known models, challengers name a tier, policies are the known ones."""
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
    policies = raw.get("policies") or {}
    unknown_policies = [p for p in policies if p not in POLICIES]
    if unknown_policies:
        raise RegistryError(f"policies: {unknown_policies} are not routing policies ({', '.join(POLICIES)})")
    return specs, policies, challengers


@dataclass
class ModelRegistry:
    specs: dict[str, ModelSpec]
    policies: dict[str, dict[str, TierRule]]
    default_policy: str
    build_chat: Callable[[ModelSpec, str], BaseChatModel]  # (spec, role) -> client; see providers.py
    challengers: dict[str, ChallengerSpec] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # provider credentials by variable name
    load_tier_router: Callable[[], TierChooser] | None = None
    cassette: Cassette | None = None  # record/replay of model exchanges (tests, demos)
    record_mode: str = "off"
    gateway: Caller | None = None  # the gateway, bound by the composition root; call_model goes through it
    _cache: dict[tuple[str, str], ModelHandle] = field(default_factory=dict)
    _overrides: dict[tuple[str, str], BaseChatModel] = field(default_factory=dict)

    def available(self) -> list[ModelSpec]:
        return [s for s in self.specs.values() if s.available(self.secrets)]

    def is_available(self, spec: ModelSpec) -> bool:
        return spec.available(self.secrets)

    @cached_property
    def tier_router(self) -> TierChooser:
        if self.load_tier_router is None:
            raise RegistryError("an 'auto' tier rule needs a tier router, and none was configured")
        return self.load_tier_router()

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
        policy = policy or self.default_policy
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
        """Serve ``name`` with a given chat model (fakes in tests and benchmarks), for ``roles``
        (the agents asking), or for every role when none are named."""
        for role in roles or ("*",):
            self._overrides[(name, role)] = chat
        self._cache = {k: h for k, h in self._cache.items() if k[0] != name}

    def handle(self, name: str, role: str = "default") -> ModelHandle:
        key = (name, role)
        if key not in self._cache:
            spec = self.specs[name]
            given = self._overrides.get(key) or self._overrides.get((name, "*"))
            if given is not None:
                self._cache[key] = ModelHandle(spec=spec, chat=given, registry=self)
                return self._cache[key]
            chat = self.build_chat(spec, role)
            if self.cassette is not None:
                inner = chat  # the wrapped client, bound before ``chat`` names the wrapper
                chat = RecordingChatModel(
                    model_id=name,
                    mode=self.record_mode,
                    cassette=self.cassette,
                    inner_factory=lambda: inner,
                )
            self._cache[key] = ModelHandle(spec=spec, chat=chat, registry=self)
        return self._cache[key]
