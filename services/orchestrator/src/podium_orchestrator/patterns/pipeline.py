"""``pipeline``: a fixed sequence of agents, each given the request and the previous output."""

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


def sequence_of(view: RunView) -> list[str]:
    if len(view.team) > 1:
        return list(view.team)
    default = [str(a) for a in view.options.get("default_sequence", [])]
    return default or [view.agent]


def stage_task(request: str, previous_agent: str | None, previous_output: str | None) -> str:
    if previous_agent is None:
        return f"Request:\n{request}"
    return (
        f"Request:\n{request}\n\nOutput of the previous stage ({previous_agent}):\n"
        f"{previous_output or ''}\n\nDo your part of the work on it and give your complete output."
    )


class PipelinePattern:
    name = "pipeline"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        stages = view.by_role("stage")
        if stages and is_failed(stages[-1]):
            return [failure_of(stages[-1])]
        sequence = sequence_of(view)
        if len(stages) >= len(sequence):
            return [Complete(stages[-1].output or "")]
        previous = stages[-1] if stages else None
        return [
            Dispatch(
                sequence[len(stages)],
                role="stage",
                step_index=len(stages),
                context_mode="clean",
                task=stage_task(
                    view.input,
                    previous.agent if previous else None,
                    previous.output if previous else None,
                ),
            )
        ]
