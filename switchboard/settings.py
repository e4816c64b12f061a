"""One typed settings object for the whole process.

Values come from (highest first) explicit keyword arguments, ``SWITCHBOARD_*`` environment
variables, a ``.env`` file, then the defaults below. Only the edges (CLI, Chainlit app, HTTP
server) build a ``Settings``; nodes receive it through the graph's runtime context.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

RecordMode = Literal["off", "record", "replay"]
RoutingPolicy = Literal["cost-saver", "balanced", "best-quality"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", env_file=".env", extra="ignore", frozen=True
    )

    # Where runtime state lives: checkpoints, Chroma, caches, ledgers.
    data_dir: Path = Field(default=REPO_ROOT / ".switchboard")
    # The SQL specialist's database (read-only). SQLite demo by default.
    database_url: str = f"sqlite:///{REPO_ROOT / 'data' / 'chinook' / 'chinook.sqlite'}"
    # Conversation persistence: empty means a SQLite file under data_dir; or a postgresql:// URL.
    checkpoint_url: str = ""
    # Model registry file and route definitions.
    models_file: Path = REPO_ROOT / "switchboard" / "config" / "models.yaml"
    routes_file: Path = REPO_ROOT / "switchboard" / "config" / "routes.yaml"
    # The knowledge base: Chroma persistent folder by default, a server when chroma_url is set.
    chroma_url: str = ""
    collection: str = "helpcenter"
    helpcenter_dir: Path = REPO_ROOT / "knowledge" / "helpcenter"
    # Where the assembled local GGUF is cached (defaults to ~/.cache/switchboard/models).
    model_cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "switchboard" / "models")
    # Path to any GGUF: overrides the packaged Qwen2.5-Coder-1.5B-Instruct.
    local_gguf: Path | None = None
    local_threads: int = 2
    local_ctx: int = 4096

    # Record/replay of model calls (tests): off in production.
    record_mode: RecordMode = "off"
    cassette_path: Path | None = None

    routing_policy: RoutingPolicy = "balanced"
    # The light/heavy tier router used by "auto" policy rules (`switchboard train-router` writes one).
    tier_router_file: Path = REPO_ROOT / "switchboard" / "config" / "tier_router.json"
    # Triage: below this classifier confidence a clause is "unsure".
    triage_threshold: float | None = None
    triage_use_llm: bool = True

    # Money: budgets in USD (unset = unlimited), per conversation and per UTC day.
    budget_conversation_usd: float | None = None
    budget_day_usd: float | None = None
    # Identical model requests are answered from a SQLite cache for this long (0 = off).
    cache_ttl_s: int = 86_400
    # Provider resilience: client retries (with backoff) per call, request timeout, and the
    # circuit breaker (consecutive failures before a provider is cooled down, and for how long).
    model_max_retries: int = 2
    model_timeout_s: float = 60.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 60.0

    # Conversation summary is kept under this many characters.
    summary_max_chars: int = 1500

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")

    @cached_property
    def checkpoint_sqlite_path(self) -> Path:
        return self.data_dir / "checkpoints.sqlite"

    @cached_property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @cached_property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
