"""Queue and task names, defined once for every service (docs/architecture.md, "Services and
queues")."""

from __future__ import annotations

from enum import StrEnum

AGENTS_QUEUE_PREFIX = "agents."


class Queue(StrEnum):
    ORCHESTRATOR = "orchestrator"
    LEARNER = "learner"
    AGENTS_DEFAULT = "agents.default"


class TaskName(StrEnum):
    ADVANCE_RUN = "podium.orchestrator.advance_run"
    EXECUTE_AGENT_CALL = "podium.agent_worker.execute_call"
    # Not a queue's task: the outbox hands these to the fair dispatcher (podium.call_queue).
    SUBMIT_AGENT_CALL = "podium.fair_dispatch.submit_call"
    RUN_COMPLETED = "podium.learner.run_completed"
    FEEDBACK_RECEIVED = "podium.learner.feedback_received"
    APPLY_RETENTION = "podium.learner.apply_retention"


def agents_queue(pool: str) -> str:
    """The queue of one agent-worker pool (``agents.default``, ``agents.heavy``...)."""
    if not pool or not all(c.isalnum() or c in "-_" for c in pool):
        raise ValueError(f"invalid agent pool name: {pool!r}")
    return f"{AGENTS_QUEUE_PREFIX}{pool}"
