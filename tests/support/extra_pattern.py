"""A seventh pattern, added by configuration plus this one small class (the pattern protocol
in podium_orchestrator.patterns.base)."""

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


class SecondOpinionPattern:
    name = "second_opinion"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        return no_team(self.name, agent, team)

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        return f"'{agent}' answers and '{options.get('second')}' gives a second opinion"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        failed = next((c for c in view.calls if c.failed), None)
        if failed is not None:
            return [failure_of(failed)]
        first = view.by_role("answer")
        if not first:
            return [Dispatch(view.agent, role="answer")]
        second = view.by_role("opinion")
        if not second:
            return [
                Dispatch(
                    str(view.options["second"]),
                    role="opinion",
                    task="Give an independent second opinion on the answer above.",
                )
            ]
        return [Complete(f"{first[0].output}\n\nSecond opinion:\n{second[0].output}")]
