"""The composition root: the one place that reads ``Settings`` and builds the long-lived objects
the graph's nodes use, once per process.

Everything below (``tools/``, ``knowledge/``, ``agents/``, ``graphs/``) takes plain values or the
small protocols in ``agents/deps.py`` and ``graphs/support.py``; this module is where they meet
the configuration. Expensive pieces (the database connection, Chroma, the local model) are
created on first use, so ``switchboard route`` never opens the knowledge base and replayed tests
never load the GGUF.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, cast

from agents.deps import AgentConfig
from switchboard.access import Access
from switchboard.settings import Settings
from switchboard.turn_locks import TurnLocks, turn_locks_for
from tools.models.gateway import GatewayConfig, ModelGateway
from tools.models.ledger import Ledger, ledger_url
from tools.models.providers import LocalRuntimeConfig, ProviderConfig, build_chat
from tools.models.recording import Cassette
from tools.models.registry import ModelRegistry, read_registry_file
from tools.models.values import ModelSpec, RegistryError
from tools.observability import telemetry
from tools.observability.audit import AuditTrail, audit_url
from tools.routing.intent import RouteConfig
from tools.vision.images import uploads_dir

if TYPE_CHECKING:
    from agents.profile import BusinessProfile
    from agents.triage import Triage
    from graphs.support import GraphConfig
    from knowledge.store import KnowledgeStore
    from tools.models.embeddings import MiniLMEmbedder
    from tools.routing.generate import TrainingSet
    from tools.routing.tier_router import TierRouter
    from tools.sql.database import ReadOnlyDatabase

log = logging.getLogger("switchboard")


def provider_secrets(settings: Settings, specs: Mapping[str, ModelSpec]) -> dict[str, str]:
    """Provider credentials by variable name: the settings' own (environment or ``.env``), then
    any other variable a registry entry names in ``requires_env`` (a vLLM server's key, say)."""
    found = {"OPENAI_API_KEY": settings.openai_api_key, "ANTHROPIC_API_KEY": settings.anthropic_api_key}
    secrets = {k: v.get_secret_value() for k, v in found.items() if v is not None and v.get_secret_value()}
    for spec in specs.values():
        name = spec.requires_env
        if name and name not in secrets and os.environ.get(name):
            secrets[name] = os.environ[name]
    return secrets


@dataclass
class Services:
    settings: Settings
    kb_report: str = ""  # what opening the knowledge base synced from the help center folder
    _hook_ran: bool = False

    def __post_init__(self) -> None:
        s = self.settings
        telemetry.configure(s.otel_exporter, s.otel_endpoint, s.otel_service_name)  # once per process

    # --- models ----------------------------------------------------------------------------
    @cached_property
    def registry(self) -> ModelRegistry:
        s = self.settings
        specs, policies, challengers = read_registry_file(s.models_file)
        secrets = provider_secrets(s, specs)
        providers = ProviderConfig(
            local=LocalRuntimeConfig(model_cache_dir=s.model_cache_dir, gguf=s.local_gguf, threads=s.local_threads,
                                     ctx=s.local_ctx, check_timeout_s=s.local_check_timeout_s),
            timeout_s=s.model_timeout_s, max_retries=s.model_max_retries, openai_base_url=s.openai_base_url,
            secrets=secrets,
        )
        registry = ModelRegistry(
            specs=specs, policies=policies, challengers=challengers, default_policy=s.routing_policy,
            secrets=secrets, build_chat=lambda spec, role: build_chat(spec, role, providers),
            load_tier_router=lambda: self.tier_router, cassette=self.cassette, record_mode=s.record_mode,
        )
        ledger = Ledger(ledger_url(s.checkpoint_url, s.data_dir))
        registry.gateway = ModelGateway(registry, ledger, self.audit, GatewayConfig(
            cache_ttl_s=s.cache_ttl_s, local_ctx=s.local_ctx, breaker_failures=s.breaker_failures,
            breaker_cooldown_s=s.breaker_cooldown_s, budget_conversation_usd=s.budget_conversation_usd,
            budget_day_usd=s.budget_day_usd, review_cost_usd=s.review_cost_usd,
        ))
        return registry

    @property
    def gateway(self) -> ModelGateway:
        gateway = self.registry.gateway
        assert gateway is not None  # bound in ``registry``
        return cast(ModelGateway, gateway)  # the registry types it as its Caller protocol

    @cached_property
    def cassette(self) -> Cassette | None:
        s = self.settings
        if s.record_mode == "off":
            return None
        if s.cassette_path is None:
            raise RegistryError("record/replay mode needs SWITCHBOARD_CASSETTE_PATH")
        return Cassette.load(s.cassette_path)

    @cached_property
    def tier_router(self) -> TierRouter:
        from tools.routing.tier_router import TierRouter

        return TierRouter.load(self.settings.tier_router_file)

    @cached_property
    def embedder(self) -> MiniLMEmbedder:
        from tools.models.embeddings import get_embedder

        return get_embedder()

    # --- triage and the graph ----------------------------------------------------------------
    @cached_property
    def routes(self) -> RouteConfig:
        return RouteConfig.load(self.settings.routes_file)

    @cached_property
    def triage(self) -> Triage:
        from agents.triage import Triage
        from tools.models.knowledge_embeddings import knowledge_embedder_class
        from tools.routing.generate import load_or_train

        return Triage(
            self.routes,
            load_or_train(self.route_training, self.settings.triage_cache_dir, self.embedder),
            self.registry,
            threshold=self.settings.triage_threshold,
            use_llm=self.settings.triage_use_llm,
            voters=self.settings.triage_voters,
            max_chars=self.settings.triage_max_chars,
            max_parts=self.settings.triage_max_parts,
            profile=self.profile,
            relevance=self.help_center_match,
            relevance_floor=knowledge_embedder_class(self.settings.knowledge_embeddings).relevance_floor,
        )

    def help_center_match(self, text: str) -> float:
        """The knowledge base's best match for ``text`` (cosine similarity; 0 when it is empty)."""
        hits = self.kb.search(text, k=1)
        return hits[0].score if hits else 0.0

    @cached_property
    def route_training(self) -> TrainingSet:
        """Triage's training data: the routes file's examples, plus questions generated from the
        connected database's schema and the knowledge base's titles and headings (offline, no LLM),
        so routing follows the data. The classifier is cached by this set's fingerprint: a new
        database, changed docs in the help center folder, or an edited routes file retrains it."""
        from knowledge.ingest import chunk_metadata
        from tools.routing.generate import knowledge_examples, outline_from_metadata, schema_examples, training_set

        # the help center folder's titles and headings as ingestion splits them (no embedding, and
        # no need to open the knowledge base first); documents ingested from elsewhere do not count
        outline = outline_from_metadata(chunk_metadata([self.settings.helpcenter_dir]))
        return training_set(self.routes, sql_examples=schema_examples(self.db),
                            knowledge_examples=knowledge_examples(outline))

    @cached_property
    def profile(self) -> BusinessProfile:
        """The business every prompt names: yours after `switchboard init`, else the demo store."""
        from agents.profile import BusinessProfile

        return BusinessProfile.load(self.settings.business_profile_path)

    @cached_property
    def agent_config(self) -> AgentConfig:
        s = self.settings
        return AgentConfig(
            uploads_dir=uploads_dir(s.data_dir), helpcenter_dir=s.helpcenter_dir,
            sensitive_columns=tuple(s.sensitive_columns), sensitive_from_profile=s.sensitive_from_profile,
            validate_agents=tuple(s.validate_agents), validator_model=s.validator_model, profile=self.profile,
        )

    @cached_property
    def graph_config(self) -> GraphConfig:
        from graphs.support import GraphConfig

        return GraphConfig(default_policy=self.settings.routing_policy,
                           summary_max_chars=self.settings.summary_max_chars)

    @cached_property
    def access(self) -> Access:
        """Who owns which conversation (one per process: it remembers owners it has looked up)."""
        return Access(self.audit)

    @cached_property
    def turn_locks(self) -> TurnLocks:
        """One turn at a time per conversation, for every door and replica of this process's stores."""
        s = self.settings
        return turn_locks_for(s.checkpoint_url, s.data_dir, s.turn_wait_s)

    def run_setup_hook(self) -> None:
        """Call ``Settings.setup_hook`` (``module:function``) with these services, once."""
        if not self.settings.setup_hook or self._hook_ran:
            return
        import importlib

        module, _, name = self.settings.setup_hook.partition(":")
        try:
            hook = getattr(importlib.import_module(module), name or "setup")
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"SWITCHBOARD_SETUP_HOOK={self.settings.setup_hook!r} cannot be loaded: {exc}") from exc
        hook(self)
        self._hook_ran = True

    # --- stores ------------------------------------------------------------------------------
    @cached_property
    def audit(self) -> AuditTrail:
        """One trail per process: turns, and shadow calls from the gateway."""
        return AuditTrail(audit_url(self.settings.checkpoint_url, self.settings.data_dir))

    @cached_property
    def db(self) -> ReadOnlyDatabase:
        from tools.sql.database import ReadOnlyDatabase

        return ReadOnlyDatabase.from_url(self.settings.database_url, max_cell_bytes=self.settings.sql_max_cell_bytes,
                                         max_result_bytes=self.settings.sql_max_result_bytes)

    def check_knowledge_base(self) -> None:
        """Refuse a knowledge base whose vectors another model made (``knowledge.store.OtherModelsVectors``,
        which says how to re-embed) before a server takes traffic; cheap, nothing is loaded. One
        that cannot be reached now is only logged: a help-center part then fails alone."""
        from knowledge.store import KnowledgeStoreError, OtherModelsVectors, check_embeddings

        s = self.settings
        try:
            check_embeddings(*s.chroma_location, s.collection, s.knowledge_embeddings)
        except OtherModelsVectors:
            raise
        except (KnowledgeStoreError, ValueError, OSError) as exc:  # chromadb raises ValueError when unreachable
            log.warning("knowledge base: not checked at start (%s); help-center parts fail until it answers", exc)

    @cached_property
    def kb(self) -> KnowledgeStore:
        from knowledge.ingest import ensure_demo_ingested
        from knowledge.store import KnowledgeStore

        s = self.settings
        s.ensure_dirs()
        chroma_dir, chroma_url = s.chroma_location
        store = KnowledgeStore.open(chroma_dir=chroma_dir, chroma_url=chroma_url, name=s.collection,
                                    embeddings=s.knowledge_embeddings, model_cache=s.model_cache_dir)
        report = ensure_demo_ingested(store, s.helpcenter_dir)
        self.kb_report = report.summary()
        log.info("help center %s: %s", s.helpcenter_dir, self.kb_report)
        return store
