"""Orchestration decisions as typed values (docs/architecture.md, "Decisions").

One model travels the whole way: the orchestrator builds a ``Decision`` from the Orchestrator
agent's tool calls (or from a forced pattern, a fallback, the learned policy, an agent's
handoff), the run lifecycle stores it, and the gateway, the learner and the next step read it
back with ``Decision.from_row``. Nothing reads a decision by string key.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from podium.patterns import DEFAULT_PATTERN
from podium.store.models import OrchestrationDecision


class DecisionKind(StrEnum):
    PLAN = "plan"  # how the request is executed (first decision, or after the user answered)
    CHECKPOINT = "checkpoint"  # a pattern asked whether to continue, stop or re-route
    HANDOFF = "handoff"  # an agent redirected the request to another agent


class DecisionSource(StrEnum):
    ORCHESTRATOR = "orchestrator agent"
    FORCED = "forced by request"
    FALLBACK = "fallback"
    POLICY = "learned policy"
    HANDOFF = "agent handoff"


class CheckpointAction(StrEnum):
    CONTINUE = "continue"
    FINISH = "finish"
    REROUTE = "reroute"


class MergeMode(StrEnum):
    SYNTHESIZER = "synthesizer"
    VOTE = "vote"
    CONCAT = "concat"


class AgentParameters(BaseModel):
    """What ``set_agent_parameters`` decided. ``None`` keeps the agent's own setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, ge=16, le=32000)
    # An allow-list: the call may use only these of its agent's tools.
    tools: tuple[str, ...] | None = None

    def over(self, base: AgentParameters) -> AgentParameters:
        """These parameters, with ``base`` filling what these leave unset."""
        return AgentParameters(
            model=self.model if self.model is not None else base.model,
            temperature=self.temperature if self.temperature is not None else base.temperature,
            max_output_tokens=(
                self.max_output_tokens
                if self.max_output_tokens is not None
                else base.max_output_tokens
            ),
            tools=self.tools if self.tools is not None else base.tools,
        )

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Dimensions(BaseModel):
    """The four dimensions (agent, pattern, parameters, team) and what else a decision says."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: DecisionKind = DecisionKind.PLAN
    pattern: str
    agent: str
    parameters: AgentParameters = AgentParameters()
    team: tuple[str, ...] = ()
    merge: MergeMode | None = None
    # ask_user: the question put to the user (the run waits for the answer).
    question: str | None = None
    # finish: end the run now, with ``answer`` as its output when one is given.
    finish: bool = False
    answer: str | None = None
    checkpoint: str | None = None
    action: CheckpointAction | None = None
    request_class: str | None = None
    class_source: str | None = None
    # The learner's guidance that was in the Orchestrator agent's prompt.
    guidance: str | None = None
    # The pattern a learned policy overruled.
    overruled: str | None = None
    # Where what was decided could not be done exactly, the difference, said here.
    note: str | None = None


OutcomeStatus = Literal[
    "running",
    "completed",
    "failed",
    "cancelled",
    "awaiting_input",
    "budget_hold",
    "superseded",
    "rejected",
]


class DecisionOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    status: OutcomeStatus
    agent_calls: int | None = None
    note: str | None = None
    error: str | None = None
    # Why a superseded decision was not executed.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class DecisionUsage(BaseModel):
    """The Orchestrator agent's call behind a decision (zeros for rule-made decisions)."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    provider: str | None = None
    model: str | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = 0  # numbered when the lifecycle records it
    dimensions: Dimensions
    rationale: str
    source: DecisionSource
    fallback_reason: str | None = None
    expected_outcome: str | None = None
    # The thread events this decision saw.
    input_from_seq: int = 0
    input_to_seq: int = 0
    usage: DecisionUsage = DecisionUsage()
    outcome: DecisionOutcome | None = None
    created_at: datetime | None = None

    @property
    def kind(self) -> DecisionKind:
        return self.dimensions.kind

    @property
    def superseded(self) -> bool:
        return self.outcome is not None and self.outcome.status == "superseded"

    def numbered(self, seq: int) -> Decision:
        return self.model_copy(update={"seq": seq})

    def with_outcome(self, outcome: DecisionOutcome) -> Decision:
        return self.model_copy(update={"outcome": outcome})

    def dimensions_json(self) -> dict[str, Any]:
        dims = self.dimensions.model_dump(mode="json", exclude_none=True)
        dims["parameters"] = self.dimensions.parameters.as_dict()
        dims["team"] = list(self.dimensions.team)
        if not self.dimensions.finish:
            dims.pop("finish", None)
        return dims

    @classmethod
    def from_row(cls, row: OrchestrationDecision | Any) -> Decision:
        """From an ``OrchestrationDecision`` or a row of its table."""
        return cls(
            seq=row.seq,
            dimensions=Dimensions.model_validate(_legacy_dimensions(row.dimensions or {})),
            rationale=row.rationale,
            source=DecisionSource(row.source),
            fallback_reason=row.fallback_reason,
            expected_outcome=row.expected_outcome,
            input_from_seq=row.input_from_seq,
            input_to_seq=row.input_to_seq,
            usage=DecisionUsage(
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                latency_ms=row.latency_ms,
                provider=row.provider,
                model=row.model,
            ),
            outcome=(
                DecisionOutcome.model_validate(row.actual_outcome) if row.actual_outcome else None
            ),
            created_at=row.created_at,
        )

    def row_values(self) -> dict[str, Any]:
        """Column values of the ``orchestration_decisions`` row (without ids)."""
        return {
            "seq": self.seq,
            "dimensions": self.dimensions_json(),
            "rationale": self.rationale,
            "source": self.source.value,
            "fallback_reason": self.fallback_reason[:200] if self.fallback_reason else None,
            "input_from_seq": self.input_from_seq,
            "input_to_seq": self.input_to_seq,
            "expected_outcome": self.expected_outcome,
            "actual_outcome": self.outcome.as_dict() if self.outcome else None,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "latency_ms": round(self.usage.latency_ms, 2),
            "provider": self.usage.provider,
            "model": self.usage.model,
        }


def _legacy_dimensions(raw: dict[str, Any]) -> dict[str, Any]:
    """Rows written before decisions were typed may lack a pattern or agent, or hold an
    unknown parameter: read them as well as they can be."""
    dims = dict(raw)
    dims["pattern"] = dims.get("pattern") or DEFAULT_PATTERN
    dims["agent"] = dims.get("agent") or ""
    params = dims.get("parameters") or {}
    dims["parameters"] = {k: v for k, v in params.items() if k in AgentParameters.model_fields}
    dims["team"] = tuple(dims.get("team") or ())
    return dims


def current_plan(decisions: list[Decision] | tuple[Decision, ...]) -> Decision | None:
    """The plan the run follows: its newest plan decision that was not superseded."""
    for decision in reversed(decisions):
        if decision.kind == DecisionKind.PLAN and not decision.superseded:
            return decision
    return None


def governing(decisions: list[Decision] | tuple[Decision, ...], seq: int) -> Decision | None:
    """The decision numbered ``seq``."""
    return next((d for d in decisions if d.seq == seq), None)
