"""The pattern interface: a pure function from a run's state to its next actions.

Patterns never touch the store or the broker; the step function applies their actions. The
state is the run's agent calls, so the same state always gives the same actions and a
duplicated trigger does no harm. A new pattern is an entry in patterns.yaml plus one small
class implementing ``next_actions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from podium.store import AgentCall, CallStatus


@dataclass(frozen=True)
class RunView:
    run_id: str
    input: str
    # The current decision: lead agent, parameters, team and merge mode.
    agent: str
    parameters: dict[str, Any]
    team: list[str]
    merge: str | None
    options: dict[str, Any]
    # The run's effective calls (control hand-backs and delegated sub-calls left out), oldest
    # first.
    calls: Sequence[AgentCall]
    # Later decisions taken at checkpoints, by checkpoint name ({"action": "continue" |
    # "finish" | "reroute", "agent": ...}); a Consult happens once per checkpoint.
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_role(self, role: str) -> list[AgentCall]:
        return [c for c in self.calls if c.role == role]

    def in_flight(self) -> bool:
        return any(c.status in (CallStatus.PENDING, CallStatus.RUNNING) for c in self.calls)


@dataclass(frozen=True)
class Dispatch:
    agent: str
    role: str = "answer"
    step_index: int = 0
    task: str | None = None
    context_mode: str = "thread"  # "thread" or "clean"
    sub_thread: bool = False  # work in a fresh sub-thread (parallel team members)
    control_tools: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    # Work in this existing thread (a continuation in its sub-thread); default: the run's.
    thread_id: str | None = None


@dataclass(frozen=True)
class Wait:
    """Calls are in flight: nothing to do until one finishes."""


@dataclass(frozen=True)
class Complete:
    output: str
    note: str | None = None
    # Append the output to the thread as this agent's message (merges without an LLM call).
    append_as: str | None = None


@dataclass(frozen=True)
class Fail:
    code: str
    message: str


@dataclass(frozen=True)
class Consult:
    """Ask the Orchestrator agent for a later decision (it sees only the delta)."""

    question: str
    checkpoint: str


Action = Dispatch | Wait | Complete | Fail | Consult


class Pattern(Protocol):
    name: str

    def next_actions(self, view: RunView) -> list[Action]: ...


def failure_of(call: AgentCall) -> Fail:
    error = call.error or {}
    return Fail(
        str(error.get("code", "agent_call_failed")),
        str(error.get("message", f"agent call {call.id} ({call.agent}) {call.status}")),
    )


def is_failed(call: AgentCall) -> bool:
    return call.status in (CallStatus.FAILED, CallStatus.CANCELLED)
