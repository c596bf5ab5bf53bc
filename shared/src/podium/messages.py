"""Versioned message schemas for everything that crosses a queue.

Each message carries ``schema_version`` and a unique ``id`` (consumers deduplicate by it).
A consumer accepts the versions it knows and rejects the rest with ``MessageError``, so a
message from a newer producer is dead-lettered instead of being misread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from podium.queues import Queue, TaskName
from podium.store.models import new_id, utcnow


class MessageError(ValueError):
    """A payload that is not a valid message of the expected kind and version."""


def summary(payload: Any) -> str:
    """What a task's arguments show in Celery's monitoring (``argsrepr``): the message's type
    and run, instead of Celery's repr of the whole payload, which costs more to build than
    publishing the task does."""
    if not isinstance(payload, dict):
        return "(not a message)"
    return f"{payload.get('type', '?')} run={payload.get('run_id', '?')}"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    TASK: ClassVar[TaskName]
    QUEUE: ClassVar[str | None] = None

    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class AdvanceRun(Message):
    """Ask the orchestrator to take the next step of a run."""

    TASK: ClassVar[TaskName] = TaskName.ADVANCE_RUN
    QUEUE: ClassVar[str | None] = Queue.ORCHESTRATOR.value

    type: Literal["advance_run"] = "advance_run"
    schema_version: Literal[1] = 1
    run_id: str
    reason: Literal[
        "run.created",
        "call.finished",
        "run.cancel",
        "run.resumed",
        "user.answered",
        "thread.released",
        "deadline",
    ]
    call_id: str | None = None


class ExecuteAgentCall(Message):
    """Ask an agent-worker pool to execute one AgentCall."""

    TASK: ClassVar[TaskName] = TaskName.EXECUTE_AGENT_CALL
    # The queue is the agent's pool (agents.<pool>), chosen at dispatch.

    type: Literal["execute_agent_call"] = "execute_agent_call"
    schema_version: Literal[1] = 1
    call_id: str
    run_id: str


class SubmitAgentCall(Message):
    """A new agent call for the fair dispatcher, which releases it to its pool (as
    ExecuteAgentCall) in its tenant's turn. Staged in the outbox with the call and relayed to
    the dispatcher, never to a queue."""

    TASK: ClassVar[TaskName] = TaskName.SUBMIT_AGENT_CALL

    type: Literal["submit_agent_call"] = "submit_agent_call"
    schema_version: Literal[1] = 1
    call_id: str
    run_id: str
    tenant_id: str
    pool: str
    # The tenant's concurrent calls cap (0: none) when the call was made.
    tenant_cap: int = Field(ge=0)


class RunCompleted(Message):
    """A run reached a terminal state; the learner writes its post-mortem."""

    TASK: ClassVar[TaskName] = TaskName.RUN_COMPLETED
    QUEUE: ClassVar[str | None] = Queue.LEARNER.value

    type: Literal["run.completed"] = "run.completed"
    schema_version: Literal[1] = 1
    run_id: str
    tenant_id: str
    status: Literal["completed", "failed", "cancelled"]


class FeedbackReceived(Message):
    """A user rated a run (or one of its messages); the learner updates its statistics."""

    TASK: ClassVar[TaskName] = TaskName.FEEDBACK_RECEIVED
    QUEUE: ClassVar[str | None] = Queue.LEARNER.value

    type: Literal["feedback.received"] = "feedback.received"
    schema_version: Literal[1] = 1
    run_id: str
    tenant_id: str
    feedback_id: str
    rating: int = Field(ge=1, le=5)


M = TypeVar("M", bound=Message)


def parse_message(model: type[M], payload: Any) -> M:
    """Validate a received payload, with an error that names what was wrong."""
    if not isinstance(payload, dict):
        raise MessageError(
            f"{model.__name__}: expected a JSON object, got {type(payload).__name__}"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MessageError(f"{model.__name__}: {problems}") from exc
