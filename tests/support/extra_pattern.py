"""A seventh pattern, added by configuration plus this one small class (DESIGN §3)."""

from __future__ import annotations

from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    RunView,
    Wait,
    failure_of,
    is_failed,
)


class SecondOpinionPattern:
    name = "second_opinion"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        failed = next((c for c in view.calls if is_failed(c)), None)
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
