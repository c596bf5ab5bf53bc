"""The pattern interface: a pure function from a run's state to its next actions.

Patterns never touch the store or the broker; the step turns their actions into a plan that
the run lifecycle applies. The state is the run's agent calls and decisions, so the same state
always gives the same actions and a duplicated trigger does no harm. A new pattern is an entry
in patterns.yaml plus one small class implementing this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from podium.decisions import Decision, MergeMode
from podium.lifecycle import CallView


@dataclass(frozen=True)
class RunView:
    run_id: str
    input: str
    # The plan the run follows; its dimensions say the lead agent, parameters and team.
    plan: Decision
    options: dict[str, Any]
    # The run's effective calls, oldest first: a call that handed control back is replaced by
    # its continuation, and delegated sub-calls are internal to the call that delegated.
    calls: Sequence[CallView]
    # Every call of the run, oldest first (hand-backs included).
    history: Sequence[CallView] = ()
    # Decisions taken at checkpoints, by checkpoint name; a Consult happens once per name.
    checkpoints: dict[str, Decision] = field(default_factory=dict)
    # The tenant's agents.
    agents: frozenset[str] = frozenset()

    @property
    def agent(self) -> str:
        return self.plan.dimensions.agent

    @property
    def team(self) -> tuple[str, ...]:
        return self.plan.dimensions.team

    @property
    def merge(self) -> MergeMode | None:
        return self.plan.dimensions.merge

    def by_role(self, role: str) -> list[CallView]:
        return [c for c in self.calls if c.role == role]

    def in_flight(self) -> bool:
        return any(c.in_flight for c in self.calls)


@dataclass(frozen=True)
class Dispatch:
    agent: str
    role: str = "answer"
    step_index: int = 0
    task: str | None = None
    context_mode: str = "thread"  # "thread" or "clean"
    sub_thread: bool = False  # work in a fresh sub-thread (parallel team members)
    control_tools: tuple[str, ...] = ()
    # The decision this call executes (its parameters apply); None: the run's plan.
    decision_seq: int | None = None
    # A continuation of a call that handed control back.
    parent_call_id: str | None = None
    depth: int = 0
    # Work in this existing thread (a continuation in its sub-thread); default: the run's.
    thread_id: str | None = None
    # This call's success, without handing control back, is the run's answer as it stands
    # (what ``Complete(call.output)`` would say next): its worker ends the run in the same
    # transaction as the call, and the orchestrator is not woken. Anything else (a failure,
    # a cancellation, a deadline passed, a handed-back call) still wakes the orchestrator.
    ends_run: bool = False


@dataclass(frozen=True)
class Redirect:
    """An agent handed the request to ``agent``: record it as a decision and let the target
    continue the work of ``from_call``."""

    agent: str
    rationale: str
    from_call: CallView
    control_tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardHit:
    """A guard stopped something (recorded on the run and counted); the pattern says what
    happens instead in its other actions."""

    guard: str
    detail: str


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


Action = Dispatch | Redirect | GuardHit | Wait | Complete | Fail | Consult


class Pattern(Protocol):
    name: str
    # Tools for handing control back that the pattern offers its calls (e.g. handoff).
    control_tools: tuple[str, ...]

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        """Why this pattern cannot run the decided team (None: it can, exactly)."""
        ...

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        """The outcome a decision for this pattern expects, in a sentence."""
        ...

    def next_actions(self, view: RunView) -> list[Action]: ...


def failure_of(call: CallView) -> Fail:
    error = call.error or {}
    return Fail(
        str(error.get("code", "agent_call_failed")),
        str(error.get("message", f"agent call {call.id} ({call.agent}) {call.status}")),
    )


def no_team(pattern: str, agent: str, team: Sequence[str]) -> str | None:
    """For patterns with one lead agent: a team is honoured only if it is that agent."""
    if not team or list(team) == [agent]:
        return None
    return f"{pattern} runs one lead agent ({agent}); it cannot run the team {list(team)}"
