"""The pattern interface: a pure function from the run's state to the next actions.

Patterns never touch the store or the broker; the step function applies their actions. That
keeps each pattern small and makes every step idempotent: the same state gives the same
actions, so a duplicated trigger does no harm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from podium.store import AgentCall


@dataclass(frozen=True)
class RunView:
    run_id: str
    input: str
    # The decision's chosen agents and parameters.
    agent: str
    parameters: dict[str, Any]
    calls: list[AgentCall]


@dataclass(frozen=True)
class Dispatch:
    agent: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Wait:
    """Calls are in flight: nothing to do until one finishes."""


@dataclass(frozen=True)
class Complete:
    output: str


@dataclass(frozen=True)
class Fail:
    code: str
    message: str


Action = Dispatch | Wait | Complete | Fail


class Pattern(Protocol):
    name: str

    def next_actions(self, view: RunView) -> list[Action]: ...
