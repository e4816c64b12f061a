"""The long-lived objects the graph's nodes use, built once per process from ``Settings``.

Expensive pieces (database connection, Chroma, the local model) are created on first use, so
``switchboard route`` never opens the knowledge base and replayed tests never load the GGUF.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from switchboard.settings import Settings
from tools.intent import IntentClassifier, RouteConfig
from tools.models import ModelRegistry

if TYPE_CHECKING:
    from agents.triage import Triage
    from knowledge.store import KnowledgeStore
    from tools.audit import AuditTrail
    from tools.database import ReadOnlyDatabase
    from tools.embeddings import MiniLMEmbedder

log = logging.getLogger("switchboard")


@dataclass
class Services:
    settings: Settings

    @cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry.from_settings(self.settings)

    @cached_property
    def embedder(self) -> MiniLMEmbedder:
        from tools.embeddings import get_embedder

        return get_embedder()

    @cached_property
    def routes(self) -> RouteConfig:
        return RouteConfig.load(self.settings.routes_file)

    @cached_property
    def triage(self) -> Triage:
        from agents.triage import Triage

        return Triage(
            self.routes,
            IntentClassifier.from_routes(self.routes),
            self.registry,
            threshold=self.settings.triage_threshold,
            use_llm=self.settings.triage_use_llm,
            voters=self.settings.triage_voters,
            max_chars=self.settings.triage_max_chars,
            max_parts=self.settings.triage_max_parts,
        )

    @property
    def audit(self) -> AuditTrail:
        return self.registry.audit  # one trail per process: turns, and shadow calls from the gateway

    @cached_property
    def db(self) -> ReadOnlyDatabase:
        from tools.database import ReadOnlyDatabase

        return ReadOnlyDatabase.from_url(self.settings.database_url, max_cell_bytes=self.settings.sql_max_cell_bytes,
                                         max_result_bytes=self.settings.sql_max_result_bytes)

    @cached_property
    def kb(self) -> KnowledgeStore:
        from knowledge.ingest import ensure_demo_ingested
        from knowledge.store import KnowledgeStore, open_collection

        s = self.settings
        s.ensure_dirs()
        store = KnowledgeStore(
            open_collection(
                chroma_dir=None if s.chroma_url else s.chroma_dir,
                chroma_url=s.chroma_url or None,
                name=s.collection,
            )
        )
        report = ensure_demo_ingested(store, s.helpcenter_dir)
        if report is not None:
            log.info("demo help center: %s", report.summary())
        return store
