"""What one orchestrator step wants done, as typed values: the step plans on a snapshot with
no transaction open, and ``podium.lifecycle.runs.apply_step`` writes the plan in one short
transaction, if the run is still at the version the step planned on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from podium.decisions import Decision, DecisionOutcome
from podium.store import EventKind, RunStatus


@dataclass(frozen=True)
class ThreadMessage:
    """An event the step appends to a thread: an answer made without an agent call, or a
    marker (a handoff, a delegation)."""

    thread_id: str
    kind: EventKind
    role: str
    content: str
    agent: str | None = None
    call_id: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class SubThread:
    """A clean thread opened for one call (a team member, a delegated sub-task), whose first
    message is the task."""

    id: str
    title: str
    task: str


@dataclass(frozen=True)
class NewCall:
    id: str
    agent: str
    pool: str
    role: str
    step_index: int
    decision_seq: int
    # Exactly what the call runs with: provider, model, temperature, max_output_tokens,
    # tools, control_tools, instructions, budget_tokens, budget_cost_usd.
    params: dict[str, Any]
    thread_id: str
    task: str | None = None
    context_mode: str = "thread"
    depth: int = 0
    parent_call_id: str | None = None
    sub_thread: SubThread | None = None
    # Its success is the run's answer: its worker ends the run (``agent_calls.ends_run``).
    ends_run: bool = False


@dataclass(frozen=True)
class Question:
    text: str
    decision_seq: int


@dataclass(frozen=True)
class RunEnd:
    status: RunStatus
    output: str | None = None
    error: dict[str, Any] | None = None
    note: str | None = None
    # Appended to the thread as this agent's answer (answers made without an agent call).
    answer_as: str | None = None


@dataclass(frozen=True)
class ContextChange:
    cursor_seq: int | None = None
    tokens_added: int = 0
    summary: str | None = None
    summarized_through_seq: int | None = None


@dataclass
class StepPlan:
    run_id: str
    tenant_id: str
    thread_id: str
    version: int
    context_id: str
    # queued -> running, taking the thread.
    start: bool = False
    # awaiting_input -> running with the user's answer.
    answer: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    # Outcomes of decisions recorded earlier, by seq.
    outcomes: dict[int, DecisionOutcome] = field(default_factory=dict)
    pattern: str | None = None
    step: str | None = None
    request_class: str | None = None
    guards: list[dict[str, Any]] = field(default_factory=list)
    context: ContextChange = field(default_factory=ContextChange)
    messages: list[ThreadMessage] = field(default_factory=list)
    calls: list[NewCall] = field(default_factory=list)
    tenant_call_cap: int = 0
    question: Question | None = None
    hold: bool = False
    end: RunEnd | None = None
    # Run events for the stream, published after the commit: (type, data).
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def emit(self, type_: str, **data: Any) -> None:
        self.events.append((type_, data))

    @property
    def writes(self) -> bool:
        return bool(
            self.start
            or self.answer is not None
            or self.decisions
            or self.outcomes
            or self.pattern
            or self.step
            or self.guards
            or self.context != ContextChange()
            or self.messages
            or self.calls
            or self.question
            or self.hold
            or self.end
        )
