"""``handoff``: the lead agent may redirect the request to another agent, which sees the full
thread (Coday's redirect). Each redirect is recorded as a decision of its own; a redirect to an
unknown agent or to itself is refused, and ping-pong (a redirect the chain already made) or
more than ``max_handoffs`` redirects stop the chain: the agent asked last answers itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podium.lifecycle import CallView
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    GuardHit,
    Redirect,
    RunView,
    Wait,
    failure_of,
    no_team,
)

TOOL = "handoff"
ANSWER_YOURSELF = "Answer the request yourself now; handing it off or delegating is not possible."


class HandoffPattern:
    name = "handoff"
    control_tools: tuple[str, ...] = (TOOL,)

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        return no_team(self.name, agent, team)

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        return f"'{agent}' answers, or hands the request to a better-suited agent"

    def next_actions(self, view: RunView) -> list[Action]:
        if not view.calls:
            return [Dispatch(view.agent, control_tools=self.control_tools)]
        call = view.calls[-1]
        if call.in_flight:
            return [Wait()]
        if call.failed:
            return [failure_of(call)]
        if call.handed_back != TOOL:
            return [Complete(call.output or "")]
        return self._redirect(view, call)

    def _redirect(self, view: RunView, call: CallView) -> list[Action]:
        control = call.control or {}
        target = str(control.get("agent") or "")
        rationale = str(control.get("rationale") or "no reason given")
        chain = [c for c in view.history if c.handed_back == TOOL]
        earlier = [(c.agent, str((c.control or {}).get("agent"))) for c in chain if c != call]
        if target not in view.agents or target == call.agent:
            why = f"no agent named {target!r}" if target not in view.agents else "it is yourself"
            return [self._continue(call, call.agent, f"Your handoff to {target!r} failed: {why}.")]
        max_handoffs = int(view.options.get("max_handoffs", 4))
        if (call.agent, target) in earlier or len(chain) > max_handoffs:
            guard = "handoff_pingpong" if (call.agent, target) in earlier else "handoff_limit"
            path = " → ".join(
                [chain[0].agent, *[str((c.control or {}).get("agent")) for c in chain]]
            )
            return [
                GuardHit(guard, path),
                self._continue(call, target, "Handoffs were stopped to avoid a loop."),
            ]
        return [Redirect(target, rationale, call, control_tools=self.control_tools)]

    @staticmethod
    def _continue(call: CallView, agent: str, why: str) -> Dispatch:
        note = f"{why} {ANSWER_YOURSELF}"
        return Dispatch(
            agent,
            role=call.role,
            step_index=call.step_index,
            task=f"{call.task}\n\n{note}" if call.task else note,
            context_mode=call.context_mode,
            decision_seq=call.decision_seq,
            parent_call_id=call.id,
            depth=call.depth,
            thread_id=call.thread_id,
        )
