"""What the agents use, as a protocol: they depend on this, not on ``switchboard/``.

The composition root (``switchboard/services.py``) satisfies it; a test or an embedding
application may pass anything with these attributes. Expensive pieces (the database, the
knowledge base, the embedder) are properties so that the root can open them on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agents.profile import BusinessProfile

if TYPE_CHECKING:
    from knowledge.store import KnowledgeStore
    from tools.models.embeddings import MiniLMEmbedder
    from tools.models.registry import ModelRegistry
    from tools.sql.database import ReadOnlyDatabase


@dataclass(frozen=True)
class AgentConfig:
    """The plain values the specialists read."""

    uploads_dir: Path  # vision: images are opened only inside this directory
    helpcenter_dir: Path  # rag: citations name documents relative to it
    sensitive_columns: tuple[str, ...]  # sql: "Table.Column" entries a reviewer must approve
    sensitive_from_profile: bool  # sql: plus the columns the database profile shows hold contact data
    validate_agents: tuple[str, ...]  # these agents' answers are checked by a second model
    validator_model: str  # registry name of that model ("" = the light tier)
    profile: BusinessProfile  # the business every prompt names (agents/profile.py)
    extra: dict[str, object] = field(default_factory=dict)  # a new specialist's own settings


class AgentServices(Protocol):
    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def embedder(self) -> MiniLMEmbedder: ...

    @property
    def db(self) -> ReadOnlyDatabase: ...

    @property
    def kb(self) -> KnowledgeStore: ...

    @property
    def agent_config(self) -> AgentConfig: ...
