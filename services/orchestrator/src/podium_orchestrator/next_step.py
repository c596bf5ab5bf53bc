"""Planning one step of a run: from its snapshot to the ``StepPlan`` the lifecycle applies.

No transaction is open here: the snapshot was read before, the world's reads are short reads
of their own, and the Orchestrator agent is consulted in between. The plan is applied only if
the run is still at the snapshot's version (see step.py).

The order of a step: a cancelled run ends; a run past its deadline fails; a held run waits; a
queued run takes its thread, gets its first decision and starts its pattern; a run waiting
for the user continues once answered; then open delegations are resolved, and the pattern
says what comes next (consulting the Orchestrator agent at its checkpoints), within the caps.
"""

from __future__ import annotations

from podium.decisions import (
    Decision,
    DecisionKind,
    DecisionOutcome,
    current_plan,
)
from podium.lifecycle import (
    ContextChange,
    Question,
    RunEnd,
    RunSnapshot,
    StepPlan,
    ThreadMessage,
)
from podium.patterns import PatternSpec
from podium.settings import Settings
from podium.store import EventKind, RunStatus
from podium_orchestrator import decider as make
from podium_orchestrator.decider import Decider
from podium_orchestrator.delegation import effective, resolve
from podium_orchestrator.guards import caps_exceeded, deadline_passed
from podium_orchestrator.new_calls import new_call, remaining
from podium_orchestrator.patterns import (
    Action,
    Complete,
    Consult,
    Dispatch,
    Fail,
    GuardHit,
    Redirect,
    RunView,
    Wait,
)
from podium_orchestrator.step_decisions import StepDecisions
from podium_orchestrator.step_state import Patterns, seq_range
from podium_orchestrator.world import World

MAX_CONSULTS_PER_STEP = 4
MAX_QUESTIONS = 3


class Planner(StepDecisions):
    def end(self, end: RunEnd) -> StepPlan:
        self.plan.end = end
        plan = current_plan(self.decisions)
        for d in self.decisions:
            if d.outcome is not None or d.seq in self.plan.outcomes:
                continue
            mine = sum(1 for c in self.calls if c.decision_seq == d.seq)
            is_plan = plan is not None and d.seq == plan.seq
            outcome = DecisionOutcome(
                status=end.status.value,
                agent_calls=len(effective(self.calls)) if is_plan else mine,
                note=end.note if is_plan else None,
                error=(end.error or {}).get("code") if is_plan and end.error else None,
            )
            if d in self.plan.decisions:
                index = self.plan.decisions.index(d)
                self.plan.decisions[index] = d.with_outcome(outcome)
            else:
                self.plan.outcomes[d.seq] = outcome
        return self.finish_plan()

    def finish_plan(self) -> StepPlan:
        change = self._fold or ContextChange()
        self.plan.context = ContextChange(
            cursor_seq=self.cursor if self.cursor != self.snap.context.cursor_seq else None,
            tokens_added=self.tokens_used - self.snap.context.tokens_used,
            summary=change.summary,
            summarized_through_seq=change.summarized_through_seq,
        )
        return self.plan

    # --- the step -------------------------------------------------------------------------
    def plan_step(self) -> StepPlan:
        run = self.run
        if run.terminal:
            return self.plan
        if run.cancel_requested:
            return self.end(RunEnd(RunStatus.CANCELLED))
        if deadline_passed(run):
            assert run.deadline_at is not None
            self.guard("deadline", f"deadline {run.deadline_at:%H:%M:%S} passed")
            return self.end(
                RunEnd(
                    RunStatus.FAILED,
                    error={
                        "code": "deadline_exceeded",
                        "message": "the run passed its wall-clock deadline",
                    },
                )
            )
        if run.status == RunStatus.BUDGET_HOLD:
            return self.plan  # waits for POST /v1/runs/{id}/resume
        if run.status == RunStatus.QUEUED:
            if not self.snap.thread_free:
                return self.plan  # another run has the thread; it hands over when it ends
            self.plan.start = True
            self.plan.emit("run.started", thread_id=run.thread_id)
            if not self.follow(self.first_decision()):
                return self.finish_plan()
        elif run.status == RunStatus.AWAITING_INPUT:
            asked = int((run.awaiting or {}).get("asked_seq", 0))
            answer = self.world.answer_after(run.thread_id, asked)
            if answer is None:
                return self.plan
            self.plan.answer = self.answer = answer
            question = (run.awaiting or {}).get("question")
            decision = self.later(
                DecisionKind.PLAN,
                f"answer:{asked}",
                f"You asked the user: {question}\nThe user answered (above). Decide how to "
                "execute the request now: choose_pattern, and route_to_agent or compose_team as "
                "needed.",
            )
            if not self.follow(decision):
                return self.finish_plan()
        return self.progress()

    def follow(self, decision: Decision) -> bool:
        """Act on a plan decision; False if the run stops here (a question, a finish)."""
        dims = decision.dimensions
        if dims.question:
            asked = len((self.run.awaiting or {}).get("history", []))
            if asked < MAX_QUESTIONS:
                self.plan.question = Question(dims.question, decision.seq)
                self.plan.emit("run.awaiting_input", question=dims.question)
                return False
            self.guard("question_cap", f"{asked} questions already asked")
        if dims.finish and dims.answer:
            self.end(RunEnd(RunStatus.COMPLETED, output=dims.answer, answer_as="orchestrator"))
            return False
        self.pattern = dims.pattern
        if dims.pattern != self.run.pattern:
            self.plan.pattern = dims.pattern
        return True

    # --- decisions ------------------------------------------------------------------------
    def view(self, spec: PatternSpec) -> RunView:
        request = self.run.input
        if self.answer:
            request += f"\n\n(The user clarified: {self.answer})"
        return RunView(
            run_id=self.run.id,
            input=request,
            plan=self.current(),
            options=spec.options,
            calls=effective(self.calls),
            history=tuple(self.calls),
            checkpoints={
                str(d.dimensions.checkpoint): d
                for d in self.decisions
                if d.kind == DecisionKind.CHECKPOINT and d.dimensions.checkpoint
            },
            agents=self.roster.names,
        )

    def progress(self) -> StepPlan:
        spec, pattern = self.patterns[self.pattern]
        open_work = resolve(self.calls, self.roster.names, self.settings.max_delegation_depth)
        if open_work.open:
            self.plan.messages += open_work.markers
            return self.act(list(open_work.actions))
        for _ in range(MAX_CONSULTS_PER_STEP):
            actions = pattern.next_actions(self.view(spec))
            consult = next((a for a in actions if isinstance(a, Consult)), None)
            if consult is None:
                return self.act(actions)
            self.later(
                DecisionKind.CHECKPOINT,
                f"checkpoint:{consult.checkpoint}",
                consult.question,
                consult.checkpoint,
            )
        raise RuntimeError(f"run {self.run.id}: pattern {self.pattern} kept consulting")

    def act(self, actions: list[Action]) -> StepPlan:
        starts = [a for a in actions if isinstance(a, Dispatch | Redirect)]
        if starts:
            spent = sum(c.input_tokens + c.output_tokens for c in self.calls if c.finished)
            cost = sum(c.cost_usd for c in self.calls if c.finished)
            hit = caps_exceeded(
                self.run, spent + self.tokens_used, cost, len(self.calls) + len(starts)
            )
            if hit is not None:
                self.guard(*hit)
                self.plan.hold = True
                self.plan.emit(
                    "run.budget_hold", guard=hit[0], detail=hit[1], limits=self.run.limits
                )
                return self.finish_plan()
        left = remaining(self.snap, self.tokens_used)
        share = {k: v / max(len(starts), 1) for k, v in left.items()}
        for action in actions:
            if isinstance(action, GuardHit):
                self.guard(action.guard, action.detail)
            elif isinstance(action, Redirect):
                handoff = self.record(
                    make.handoff(
                        action.from_call.agent,
                        action.agent,
                        action.rationale,
                        self._governing(action.from_call.decision_seq),
                        self.pattern,
                    ).model_copy(
                        update=seq_range(self.run.input_event_seq, self.run.input_event_seq)
                    )
                )
                self.plan.messages.append(
                    ThreadMessage(
                        thread_id=action.from_call.thread_id,
                        kind=EventKind.DELEGATION,
                        role="system",
                        agent=action.from_call.agent,
                        content=(
                            f"{action.from_call.agent} hands the request to {action.agent}: "
                            f"{action.rationale}"
                        ),
                        call_id=action.from_call.id,
                    )
                )
                call = action.from_call
                failed = self.start(
                    Dispatch(
                        action.agent,
                        role=call.role,
                        step_index=call.step_index,
                        task=call.task,
                        context_mode=call.context_mode,
                        control_tools=action.control_tools,
                        decision_seq=handoff.seq,
                        parent_call_id=call.id,
                        depth=call.depth,
                        thread_id=call.thread_id,
                    ),
                    share,
                )
                if failed is not None:
                    return failed
            elif isinstance(action, Dispatch):
                failed = self.start(action, share)
                if failed is not None:
                    return failed
            elif isinstance(action, Complete):
                return self.end(
                    RunEnd(
                        RunStatus.COMPLETED,
                        output=action.output,
                        note=action.note,
                        answer_as=action.append_as,
                    )
                )
            elif isinstance(action, Fail):
                return self.end(
                    RunEnd(RunStatus.FAILED, error={"code": action.code, "message": action.message})
                )
            elif isinstance(action, Wait):
                pass
        return self.finish_plan()

    def start(self, action: Dispatch, budget: dict[str, float]) -> StepPlan | None:
        """A new call; or, for an agent the tenant does not have, the run's end."""
        decision = self._governing(action.decision_seq)
        agent = self.roster.agents.get(action.agent)
        if agent is None:
            message = f"agent {action.agent!r} is not defined for this tenant"
            return self.end(
                RunEnd(RunStatus.FAILED, error={"code": "unknown_agent", "message": message})
            )
        call, markers = new_call(self.snap, action, agent, decision, budget)
        self.plan.messages += markers
        self.plan.calls.append(call)
        self.plan.step = f"{call.role}:{call.agent}"
        self.plan.tenant_call_cap = self.world.call_cap(self.run.tenant_id)
        self.plan.emit(
            "agent_call.queued",
            call_id=call.id,
            agent=call.agent,
            role=call.role,
            step=call.step_index,
            pool=call.pool,
            decision_seq=decision.seq,
        )
        return None


def plan_step(
    snap: RunSnapshot,
    world: World,
    decider: Decider,
    patterns: Patterns,
    settings: Settings,
) -> tuple[StepPlan, int]:
    """The plan for one step, and the next free decision seq."""
    planner = Planner(snap, world, decider, patterns, settings)
    return planner.plan_step(), planner.next_seq
