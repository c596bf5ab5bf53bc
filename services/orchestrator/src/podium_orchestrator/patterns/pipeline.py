"""``pipeline``: a fixed sequence of agents, each given the request and the previous output.
The decided team is the sequence, whatever its length; without one, the configured
``default_sequence``, else the lead agent alone."""

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
)


def sequence_of(agent: str, team: Sequence[str], options: dict[str, Any]) -> list[str]:
    if team:
        return list(team)
    default = [str(a) for a in options.get("default_sequence", [])]
    return default or [agent]


def stage_task(request: str, previous_agent: str | None, previous_output: str | None) -> str:
    if previous_agent is None:
        return f"Request:\n{request}"
    return (
        f"Request:\n{request}\n\nOutput of the previous stage ({previous_agent}):\n"
        f"{previous_output or ''}\n\nDo your part of the work on it and give your complete output."
    )


class PipelinePattern:
    name = "pipeline"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        return None

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        who = ", ".join(sequence_of(agent, team, options))
        return f"{who} process the request in sequence"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        stages = view.by_role("stage")
        if stages and stages[-1].failed:
            return [failure_of(stages[-1])]
        sequence = sequence_of(view.agent, view.team, view.options)
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
