"""``plan_execute``: a planner writes numbered steps; executors run them one by one; after each
step (but the last) the Orchestrator agent is consulted and may stop early or re-route the next
step. The decided team is the executors (taking turns); the planner is configured."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from podium.decisions import CheckpointAction
from podium.lifecycle import CallView
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Consult,
    Dispatch,
    RunView,
    Wait,
    failure_of,
)

STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$")


def parse_steps(plan: str, max_steps: int) -> list[str]:
    """Numbered or bulleted lines of the plan; the whole plan is one step if it has none."""
    steps = [m.group(1) for line in plan.splitlines() if (m := STEP_LINE.match(line))]
    if not steps:
        steps = [plan.strip() or "Answer the request."]
    return steps[:max_steps]


def step_task(plan: str, steps: list[str], index: int) -> str:
    return (
        f"The plan:\n{plan}\n\nExecute step {index + 1} of {len(steps)} only: {steps[index]}\n"
        "Give the complete result of this step."
    )


def executors_of(agent: str, team: Sequence[str], options: dict[str, Any]) -> list[str]:
    planner = str(options.get("planner", "planner"))
    return [a for a in team if a != planner] or [agent]


class PlanExecutePattern:
    name = "plan_execute"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        planner = str(options.get("planner", "planner"))
        if team and all(a == planner for a in team):
            return f"plan_execute needs an executor; the team {list(team)} is only the planner"
        return None

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        who = ", ".join(executors_of(agent, team, options))
        return f"a plan is written, then executed step by step by {who}"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        failed = next((c for c in view.calls if c.failed), None)
        if failed is not None:
            return [failure_of(failed)]
        planner = str(view.options.get("planner", "planner"))
        executors = executors_of(view.agent, view.team, view.options)
        plans = view.by_role("planner")
        if not plans:
            return [Dispatch(planner, role="planner", task="Write the plan for the request above.")]
        plan = plans[-1].output or ""
        steps = parse_steps(plan, int(view.options.get("max_steps", 6)))
        done = view.by_role("executor")
        verdict = view.checkpoints.get(f"after_step_{len(done)}") if done else None
        if done and verdict is None and len(done) < len(steps) and view.options.get("replan", True):
            return [
                Consult(
                    question=(
                        f"Step {len(done)} of {len(steps)} is done. Call finish if the request "
                        "is already fully answered, route_to_agent to give the next step to "
                        "another agent, or choose_pattern plan_execute to continue."
                    ),
                    checkpoint=f"after_step_{len(done)}",
                )
            ]
        if verdict is not None and verdict.dimensions.action == CheckpointAction.FINISH:
            return [Complete(combine(steps, done), note=f"stopped after step {len(done)}")]
        if len(done) >= len(steps):
            return [Complete(combine(steps, done))]
        executor = executors[len(done) % len(executors)]
        if verdict is not None and verdict.dimensions.action == CheckpointAction.REROUTE:
            executor = verdict.dimensions.agent
        return [
            Dispatch(
                executor,
                role="executor",
                step_index=len(done),
                task=step_task(plan, steps, len(done)),
                # After a checkpoint, its decision (and its parameters) govern the next step.
                decision_seq=verdict.seq if verdict is not None else None,
            )
        ]


def combine(steps: list[str], done: Sequence[CallView]) -> str:
    outputs = [call.output or "" for call in done]
    if len(outputs) == 1:
        return outputs[0]
    return "\n\n".join(
        f"Step {i + 1}: {steps[i] if i < len(steps) else ''}\n{out}"
        for i, out in enumerate(outputs)
    )
