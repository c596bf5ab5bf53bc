"""``direct``: one agent answers in one call."""

from __future__ import annotations

from podium.store import CallStatus
from podium_orchestrator.patterns.base import Action, Complete, Dispatch, Fail, RunView, Wait


class DirectPattern:
    name = "direct"

    def next_actions(self, view: RunView) -> list[Action]:
        if not view.calls:
            return [Dispatch(view.agent, view.parameters)]
        call = view.calls[-1]
        if call.status == CallStatus.SUCCEEDED:
            return [Complete(call.output or "")]
        if call.status in (CallStatus.FAILED, CallStatus.CANCELLED):
            error = call.error or {}
            return [
                Fail(
                    str(error.get("code", "agent_call_failed")),
                    str(error.get("message", f"agent call {call.id} {call.status}")),
                )
            ]
        return [Wait()]
