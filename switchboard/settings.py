"""One typed settings object for the whole process.

Values come from (highest first) explicit keyword arguments, ``SWITCHBOARD_*`` environment
variables, a ``.env`` file, the data dir's ``settings.yaml`` (what ``switchboard init`` chose for
your own business: :data:`INIT_KEYS`), then the defaults below. Only the edges (CLI, Chainlit app, HTTP
server) build a ``Settings``; nodes receive it through the graph's runtime context.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from tools.models.values import DEFAULT_POLICY, RoutingPolicy, default_model_cache

REPO_ROOT = Path(__file__).resolve().parent.parent

RecordMode = Literal["off", "record", "replay"]
DEMO_PROFILE = REPO_ROOT / "switchboard" / "config" / "profile.yaml"
DEFAULT_DATA_DIR = REPO_ROOT / ".switchboard"
# What `switchboard init` may write to <data dir>/settings.yaml: what to connect to, no secrets.
INIT_KEYS = ("database_url", "helpcenter_dir", "collection", "routes_file", "profile_file")
MAX_INIT_FILE_BYTES = 16_000


class InitFileSource(PydanticBaseSettingsSource):
    """``<data dir>/settings.yaml``, written by ``switchboard init``: below the environment and
    ``.env``, above the defaults. The data dir is the one the higher sources give, else the default."""

    def __init__(self, settings_cls: type[BaseSettings], *higher: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.higher = higher

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data_dir: Any = None
        for source in self.higher:
            data_dir = data_dir or source().get("data_dir")
        path = Path(data_dir or DEFAULT_DATA_DIR) / "settings.yaml"
        return read_init_file(path)


def read_init_file(path: Path) -> dict[str, Any]:
    """The settings ``switchboard init`` wrote (only :data:`INIT_KEYS`); {} when there is none."""
    from tools.yaml_files import read_small_yaml

    try:
        raw = read_small_yaml(path, MAX_INIT_FILE_BYTES, what="the settings file",
                              hint="fix it or run `switchboard init` again") or {}
    except FileNotFoundError:
        return {}
    if not isinstance(raw, dict) or (unknown := sorted(set(raw) - set(INIT_KEYS))):
        raise ValueError(f"{path} may only set {', '.join(INIT_KEYS)}"
                         + (f"; it also sets {unknown}" if isinstance(raw, dict) else ""))
    return {k: v for k, v in raw.items() if v not in (None, "")}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", env_file=".env", extra="ignore", frozen=True
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings,
                InitFileSource(settings_cls, init_settings, env_settings, dotenv_settings), file_secret_settings)

    # Where runtime state lives: checkpoints, Chroma, caches, ledgers.
    data_dir: Path = Field(default=DEFAULT_DATA_DIR)
    # The SQL specialist's database (read-only). SQLite demo by default.
    database_url: str = f"sqlite:///{REPO_ROOT / 'data' / 'chinook' / 'chinook.sqlite'}"
    # Conversation persistence: empty means a SQLite file under data_dir; or a postgresql:// URL.
    checkpoint_url: str = ""
    # PostgreSQL connections per process for the checkpointer (a pool; turns in flight share them).
    checkpoint_pool_size: int = Field(default=10, ge=1, le=100)
    # The business every prompt names (agents/profile.py): unset = <data dir>/profile.yaml when
    # `switchboard init` wrote one, else the demo store's (switchboard/config/profile.yaml).
    profile_file: Path | None = None
    # Model registry file and route definitions.
    models_file: Path = REPO_ROOT / "switchboard" / "config" / "models.yaml"
    routes_file: Path = REPO_ROOT / "switchboard" / "config" / "routes.yaml"
    # The knowledge base: Chroma persistent folder by default, a server when chroma_url is set.
    chroma_url: str = ""
    collection: str = "helpcenter"
    helpcenter_dir: Path = REPO_ROOT / "knowledge" / "helpcenter"
    # The knowledge base's embedding model: all-mpnet-base-v2 (8-bit ONNX, built once into
    # model_cache_dir from the knowledge-model wheels) or the lighter MiniLM. A collection keeps
    # the model it was made with: switching needs `switchboard ingest --reembed`.
    knowledge_embeddings: Literal["mpnet", "minilm"] = "mpnet"
    # Where the assembled local GGUF (and the built embedding graph) is cached (defaults to ~/.cache/switchboard/models).
    model_cache_dir: Path = Field(default_factory=default_model_cache)
    # Path to any GGUF: overrides the packaged Qwen2.5-Coder-1.5B-Instruct.
    local_gguf: Path | None = None
    local_threads: int = 2
    local_ctx: int = 4096
    # The local runtime's self-check (a child process loads the model and writes two tokens before
    # this process first uses it; cached per build): how long it may take.
    local_check_timeout_s: float = 180.0

    # Record/replay of model calls (tests): off in production.
    record_mode: RecordMode = "off"
    cassette_path: Path | None = None

    routing_policy: RoutingPolicy = DEFAULT_POLICY
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

    # Checks before an answer leaves: these agents' answers are validated against their evidence
    # by a second model (registry name; empty = the light tier), e.g. '["sql", "rag"]'. Each check
    # is one more model call per subtask.
    validate_agents: list[str] = Field(default_factory=list)
    validator_model: str = ""
    # Triage ensemble: when the classifier is unsure, these registry models each vote on the route
    # (with the classifier's own guess); the majority wins. Empty = one LLM call, no vote.
    triage_voters: list[str] = Field(default_factory=list)

    # Human review (tools/review.py): a turn pauses (a LangGraph interrupt, kept in the checkpoint)
    # until someone approves, edits or rejects it -- `switchboard resume`, the HTTP API's
    # /v1/threads/{id}/review, or the chat UI's buttons. review_cost_usd: before a heavy-tier model
    # call that would take the conversation's spend past this (unset = never; reject = the light
    # tier answers). sensitive_columns: before a SQL query that reads any of these "Table.Column"
    # or "Table.*" entries (case-insensitive; '[]' = never). sensitive_from_profile: also every
    # column the connected database's own profile shows to hold contact data -- named like one
    # (email, phone, fax, mobile, address, street, postal/zip code), with sampled values that are
    # mostly e-mails/phones/cards/IBANs (tools/observability/redaction.py's detectors), or copying the values of
    # such a column (Invoice.BillingAddress beside Customer.Address) -- computed once per database
    # (ReadOnlyDatabase.personal_columns) and merged with the list above.
    # A graph run without a checkpointer (no interrupt possible, e.g. a bare graph.ainvoke)
    # refuses such a query instead of running it, and a cost review there is a reject.
    review_cost_usd: float | None = None
    sensitive_columns: list[str] = Field(default_factory=lambda: [
        "Customer.Email", "Customer.Phone", "Customer.Fax", "Customer.Address",
        "Employee.Email", "Employee.Phone", "Employee.Fax", "Employee.Address",
    ])
    sensitive_from_profile: bool = True

    # Bounds on what a SQL result may carry into answers, graph state and checkpoints: each cell
    # (longer text is cut, a blob is only a "<BLOB n bytes>" placeholder) and the whole result
    # (rows stop there); the answer says when it was cut.
    sql_max_cell_bytes: int = 4 * 1024
    sql_max_result_bytes: int = 256 * 1024
    # Bounds on one message: triage refuses a message longer than triage_max_chars (with a clear
    # answer, before splitting it), and answers at most triage_max_parts parts of a message; the
    # parts past that are refused by name in the answer ("send them separately"), not merged.
    triage_max_chars: int = 4000
    triage_max_parts: int = 8

    # Who may do what (switchboard/access.py). Every conversation has an owner: the HTTP API key's
    # principal, the chat UI's user, or this process's local principal for the CLI and the Python
    # API (`principal`). A conversation owned by someone else is "not found" at every door.
    # reviewers: principals (UI user names, API key names, the local principal) who may decide
    # human reviews of other people's conversations, comma-separated ("carol,ops-key"). admins:
    # principals who may read every conversation (history, pending reviews), comma-separated.
    # single_user: the one user is their own reviewer (may decide reviews on their own
    # conversations); unset = derived per door: the CLI/Python API when no reviewers are configured,
    # the chat UI when SWITCHBOARD_UI_USERS is unset, never the HTTP API.
    principal: str = "local"
    reviewers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    single_user: bool | None = None

    @field_validator("reviewers", "admins", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """``"carol,ops-key"`` (or a JSON list) -> ["carol", "ops-key"]."""
        if isinstance(value, str):
            raw = value.strip()
            items = json.loads(raw) if raw.startswith("[") else raw.split(",")
            return [str(v).strip() for v in items if str(v).strip()]
        return value

    # One turn at a time per conversation, across processes and replicas (switchboard/turn_locks.py):
    # a message for a conversation that is busy with another turn waits this long, then is refused
    # ("conversation busy", HTTP 409).
    turn_wait_s: float = 60.0
    # A module:function called with the Services once a Switchboard opens (switchboard/api.py), to
    # register your own LangChain chat models (services.registry.use_chat_model) or tools. The
    # benchmarks and the cluster test use it to serve fake models with a fixed latency.
    setup_hook: str = ""

    # Conversation summary is kept under this many characters.
    summary_max_chars: int = 1500

    # Tracing (OpenTelemetry spans per turn, graph node and model call; tools/observability/telemetry.py):
    # "off" sends nothing (spans go to the process's global provider, a no-op unless the host
    # installed one), "console" prints spans to stderr, "otlp" exports over OTLP/HTTP to
    # otel_endpoint, a base URL such as http://localhost:4318 (empty: the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables).
    otel_exporter: Literal["off", "console", "otlp"] = "off"
    otel_endpoint: str = ""
    otel_service_name: str = "switchboard"

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")

    @property
    def business_profile_path(self) -> Path:
        if self.profile_file is not None:
            return self.profile_file
        own = self.data_dir / "profile.yaml"
        return own if own.exists() else DEMO_PROFILE

    @property
    def triage_cache_dir(self) -> Path:
        """Trained triage classifiers, by the fingerprint of what they learned from: shared by data
        dirs (and test runs) that connect the same database, docs and routes."""
        return self.model_cache_dir / "triage"

    @cached_property
    def checkpoint_sqlite_path(self) -> Path:
        return self.data_dir / "checkpoints.sqlite"

    @cached_property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @cached_property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def chroma_location(self) -> tuple[Path | None, str | None]:
        """(folder, server URL) of the knowledge base: the server when one is set, else the folder."""
        return (None, self.chroma_url) if self.chroma_url else (self.chroma_dir, None)

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
