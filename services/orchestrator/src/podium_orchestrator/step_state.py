"""What one step of a run works on while it plans: the snapshot, the decisions and calls
as they stand with this step's additions, the context's cursor and token use, and the plan
being built. Recording a decision or a guard goes through here, so the plan and the state
never disagree."""

from __future__ import annotations

from typing import Any

from podium.decisions import (
    Decision,
    current_plan,
    governing,
)
from podium.lifecycle import (
    CallView,
    ContextChange,
    RunSnapshot,
    StepPlan,
)
from podium.patterns import DEFAULT_PATTERN, PatternSpec
from podium.settings import Settings
from podium_orchestrator.decider import Decider
from podium_orchestrator.guards import guard_record
from podium_orchestrator.patterns import (
    Pattern,
)
from podium_orchestrator.selection import Selection, select_agent
from podium_orchestrator.world import Roster, World

Patterns = dict[str, tuple[PatternSpec, Pattern]]


class StepState:
    def __init__(
        self,
        snap: RunSnapshot,
        world: World,
        decider: Decider,
        patterns: Patterns,
        settings: Settings,
    ) -> None:
        self.snap = snap
        self.run = snap.run
        self.world = world
        self.decider = decider
        self.patterns = patterns
        self.settings = settings
        self.plan = StepPlan(
            snap.run.id, snap.run.tenant_id, snap.run.thread_id, snap.version, snap.context.id
        )
        self.decisions: list[Decision] = list(snap.decisions)
        self.calls: list[CallView] = list(snap.calls)
        self.next_seq = snap.last_seq + 1
        self.cursor = snap.context.cursor_seq
        self.tokens_used = snap.context.tokens_used
        self.pattern = snap.run.pattern or DEFAULT_PATTERN
        self.answer = (snap.run.awaiting or {}).get("answer")
        self._roster: Roster | None = None
        self._fold: ContextChange | None = None

    # --- helpers --------------------------------------------------------------------------
    @property
    def roster(self) -> Roster:
        if self._roster is None:
            self._roster = self.world.roster(self.run.tenant_id)
        return self._roster

    @property
    def implementations(self) -> dict[str, Pattern]:
        return {name: impl for name, (_, impl) in self.patterns.items()}

    @property
    def options(self) -> dict[str, dict[str, Any]]:
        return {name: spec.options for name, (spec, _) in self.patterns.items()}

    def selection(self) -> Selection:
        return select_agent(
            requested=self.run.requested_agent,
            text=self.run.input,
            last_agent=self.snap.last_agent,
            default_agent=self.roster.default_agent,
            known=set(self.roster.agents),
        )

    def record(self, decision: Decision, key: str | None = None) -> Decision:
        numbered = decision.numbered(self.next_seq)
        self.next_seq += 1
        self.decisions.append(numbered)
        self.plan.decisions.append(numbered)
        self.tokens_used += decision.usage.tokens
        self.plan.emit(
            "decision",
            seq=numbered.seq,
            dimensions=numbered.dimensions_json(),
            rationale=numbered.rationale,
            source=numbered.source.value,
            fallback=numbered.fallback_reason,
            outcome=numbered.outcome.as_dict() if numbered.outcome else None,
        )
        return numbered

    def guard(self, guard: str, detail: str) -> None:
        self.plan.guards.append(guard_record(guard, detail))
        self.plan.emit("guard", guard=guard, detail=detail)

    def descriptions(self) -> dict[str, str]:
        return {name: spec.description for name, (spec, _) in self.patterns.items()}

    def tokens_left(self) -> int:
        return self.snap.context.token_budget - self.tokens_used

    def current(self) -> Decision:
        plan = current_plan(self.decisions)
        assert plan is not None, "a running run has a plan decision"
        return plan

    # --- the pattern ----------------------------------------------------------------------
    def _governing(self, seq: int | None) -> Decision:
        if seq is None:
            return self.current()
        return governing(self.decisions, seq) or self.current()


def seq_range(from_seq: int, to_seq: int) -> dict[str, int]:
    return {"input_from_seq": from_seq, "input_to_seq": to_seq}
