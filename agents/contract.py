"""The contract between the graph and its specialists: what a specialist receives (a
:class:`Handoff` for one :class:`Subtask`), what it returns (an :class:`AgentResult` with its
:class:`Evidence`), and the :class:`Specialist` protocol a new one implements.

Adding a specialist (docs/architecture.md): a route in ``switchboard/config/routes.yaml`` whose
``agents`` names it, a module in ``agents/`` with a class that satisfies :class:`Specialist`, and
one line of wiring, its class in ``graphs/support.py``'s ``SPECIALISTS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from agents.deps import AgentServices


class Subtask(BaseModel):
    """One piece of a user turn, routed to one specialist (the triage decision)."""

    id: str
    agent: str  # a specialist's name: the routes file names them, the graph checks they exist
    task: str
    route: str
    confidence: float = Field(ge=0.0, le=1.0)
    scores: dict[str, float] = Field(default_factory=dict)
    reason: str
    llm_asked: bool = False
    votes: dict[str, str] = Field(default_factory=dict)  # triage ensemble: voter -> route, when one ran
    depends_on: list[str] = Field(default_factory=list)
    # set when another subtask depends on this one: just gather evidence, the dependent answers
    extract_only: bool = False


class Evidence(TypedDict, total=False):
    """What every specialist's result may carry besides its answer; each specialist extends it
    with its own keys (``SQLEvidence`` in ``agents/sql.py``, ...), and readers (the chat UI, the
    audit trail, validation) read those types."""

    elapsed_ms: int
    error_code: str  # a failure the doors recognise (the local runtime's self-check, a prompt too long)
    error_ref: str  # the reference shown to the user for an internal error; the log has the detail
    model: str  # registry name of the model that answered
    tier: dict[str, Any]  # TierDecision.as_dict(): which tier, and why
    escalations: list[dict[str, Any]]  # light -> heavy retries, each with its reason
    validation: dict[str, Any]  # a second model's verdict on the answer
    challenger: dict[str, Any]  # an A/B or shadow trial's facts


class AgentResult(TypedDict):
    subtask_id: str
    agent: str
    task: str
    ok: bool
    answer: str
    error: str | None
    evidence: Evidence
    entities: dict[str, str]


class Handoff(TypedDict):
    """What a specialist receives: its subtask and the shared context, not the raw history."""

    subtask: dict[str, Any]
    summary: str
    entities: dict[str, str]
    evidence: list[AgentResult]  # results of the subtasks this one depends on
    image_path: str | None
    policy: str


class Specialist(Protocol):
    """A graph node for one kind of subtask. ``name`` is what routes and results call it,
    ``title`` how the chat UI names its step, ``label`` how a combined answer introduces its
    part when the same task was asked of two specialists."""

    name: ClassVar[str]
    title: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, services: AgentServices) -> None: ...

    async def __call__(self, handoff: Handoff) -> dict[str, Any]: ...


# Optional: a specialist whose answers can be validated by a second model (``validate_agents``)
# also defines ``checkable(evidence) -> (what it is, its text) | None``, the evidence to check
# the answer against (``SQLAgent.checkable``); without it, its answers are not validated.
