"""``plan_execute``: a planner writes numbered steps; executors run them one by one; after each
step (but the last) the Orchestrator agent is consulted and may stop early or re-route."""

from __future__ import annotations

import re
from collections.abc import Sequence

from podium.store import AgentCall
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Consult,
    Dispatch,
    RunView,
    Wait,
    failure_of,
    is_failed,
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


class PlanExecutePattern:
    name = "plan_execute"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        failed = next((c for c in view.calls if is_failed(c)), None)
        if failed is not None:
            return [failure_of(failed)]
        planner = str(view.options.get("planner", "planner"))
        executors = [a for a in view.team if a != planner] or [view.agent]
        plans = view.by_role("planner")
        if not plans:
            return [Dispatch(planner, role="planner", task="Write the plan for the request above.")]
        plan = plans[-1].output or ""
        steps = parse_steps(plan, int(view.options.get("max_steps", 6)))
        done = view.by_role("executor")
        if done:
            checkpoint = f"after_step_{len(done)}"
            verdict = view.checkpoints.get(checkpoint)
            if len(done) < len(steps) and view.options.get("replan", True) and verdict is None:
                return [
                    Consult(
                        question=(
                            f"Step {len(done)} of {len(steps)} is done. Call finish if the request "
                            "is already fully answered, route_to_agent to give the next step to "
                            "another agent, or choose_pattern plan_execute to continue."
                        ),
                        checkpoint=checkpoint,
                    )
                ]
            if verdict is not None and verdict.get("action") == "finish":
                return [Complete(combine(steps, done), note=f"stopped after step {len(done)}")]
        if len(done) >= len(steps):
            return [Complete(combine(steps, done))]
        executor = executors[len(done) % len(executors)]
        verdict = view.checkpoints.get(f"after_step_{len(done)}") if done else None
        if verdict and verdict.get("action") == "reroute" and verdict.get("agent"):
            executor = str(verdict["agent"])
        return [
            Dispatch(
                executor,
                role="executor",
                step_index=len(done),
                task=step_task(plan, steps, len(done)),
            )
        ]


def combine(steps: list[str], done: Sequence[AgentCall]) -> str:
    outputs = [call.output or "" for call in done]
    if len(outputs) == 1:
        return outputs[0]
    return "\n\n".join(
        f"Step {i + 1}: {steps[i] if i < len(steps) else ''}\n{out}"
        for i, out in enumerate(outputs)
    )
