"""``direct``: one agent answers in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    RunView,
    Wait,
    failure_of,
    no_team,
)


class DirectPattern:
    name = "direct"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        return no_team(self.name, agent, team)

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        return f"'{agent}' answers the request in one call"

    def next_actions(self, view: RunView) -> list[Action]:
        if not view.calls:
            return [Dispatch(view.agent, control_tools=self.control_tools, ends_run=True)]
        call = view.calls[-1]
        if call.in_flight:
            return [Wait()]
        if call.failed:
            return [failure_of(call)]
        return [Complete(call.output or "")]
