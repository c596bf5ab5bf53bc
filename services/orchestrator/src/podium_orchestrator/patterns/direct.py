"""``direct``: one agent answers in one call."""

from __future__ import annotations

from podium.store import CallStatus
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    RunView,
    Wait,
    failure_of,
    is_failed,
)


class DirectPattern:
    name = "direct"
    control_tools: tuple[str, ...] = ()

    def next_actions(self, view: RunView) -> list[Action]:
        if not view.calls:
            return [Dispatch(view.agent, control_tools=self.control_tools)]
        call = view.calls[-1]
        if call.status == CallStatus.SUCCEEDED:
            return [Complete(call.output or "")]
        if is_failed(call):
            return [failure_of(call)]
        return [Wait()]
