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

from typing import Any

from podium.decisions import (
    Decision,
    DecisionKind,
    DecisionOutcome,
    DecisionSource,
    DecisionUsage,
    current_plan,
    governing,
)
from podium.learning import classify
from podium.lifecycle import (
    CallView,
    ContextChange,
    Question,
    RunEnd,
    RunSnapshot,
    StepPlan,
    ThreadMessage,
)
from podium.patterns import DEFAULT_PATTERN, PatternSpec
from podium.settings import Settings
from podium.store import EventKind, RunStatus
from podium_orchestrator import decider as make
from podium_orchestrator.agent import DecisionInput, DecisionResult
from podium_orchestrator.decider import Decider
from podium_orchestrator.decision_context import delta_context, first_context, history
from podium_orchestrator.delegation import effective, resolve
from podium_orchestrator.guards import caps_exceeded, deadline_passed, guard_record
from podium_orchestrator.new_calls import new_call, remaining
from podium_orchestrator.patterns import (
    Action,
    Complete,
    Consult,
    Dispatch,
    Fail,
    GuardHit,
    Pattern,
    Redirect,
    RunView,
    Wait,
)
from podium_orchestrator.policy import overrule
from podium_orchestrator.selection import Selection, select_agent
from podium_orchestrator.world import Roster, World, guidance

MAX_CONSULTS_PER_STEP = 4
MAX_QUESTIONS = 3

Patterns = dict[str, tuple[PatternSpec, Pattern]]


class Planner:
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
        self.plan = StepPlan(snap.run.id, snap.run.tenant_id, snap.run.thread_id, snap.version)
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
    def tokens_left(self) -> int:
        return self.snap.context.token_budget - self.tokens_used

    def first_decision(self) -> Decision:
        run = self.run
        selection = self.selection()
        from_seq, to_seq = self.cursor + 1, run.input_event_seq
        self.cursor = run.input_event_seq
        rule_class = classify(run.input)
        if run.requested_pattern:
            decision = make.forced(
                run.requested_pattern,
                selection,
                self.implementations,
                self.options.get(run.requested_pattern, {}),
            )
            decision = self.classified(decision, rule_class)
            return self.record(decision.model_copy(update=_range(from_seq, to_seq)))
        stats = self.world.stats(run.tenant_id, rule_class)
        advice = guidance(self.world, run.tenant_id, rule_class, stats)
        result = self.decider.consult(
            "first",
            DecisionInput(
                phase="first",
                request=run.input,
                context=first_context(self.world.thread_before(run.thread_id, to_seq)),
                agents=self.roster.descriptions,
                patterns=self.descriptions(),
                default_agent=selection.agent,
                guidance=advice,
            ),
            tokens_left=self.tokens_left(),
            run_id=run.id,
        )
        built = [self.proposed(result, selection)]
        if advice and built[-1].source == DecisionSource.ORCHESTRATOR:
            built[-1] = built[-1].model_copy(
                update={"dimensions": built[-1].dimensions.model_copy(update={"guidance": advice})}
            )
        decision = built[-1]
        if decision.outcome is not None:  # rejected: the fallback follows it
            built.append(self.fallback(selection, f"rejected: {decision.outcome.reason}", None))
        built = [self.classified(d, rule_class) for d in built]
        self.decider.built("first", built)
        recorded = [self.record(d.model_copy(update=_range(from_seq, to_seq))) for d in built]
        decision = recorded[-1]
        dims = decision.dimensions
        if dims.question or dims.finish or decision.source != DecisionSource.ORCHESTRATOR:
            return decision
        if dims.request_class != rule_class:
            stats = self.world.stats(run.tenant_id, str(dims.request_class))
        verdict = overrule(
            stats,
            dims.pattern,
            list(self.patterns),
            min_samples=self.settings.policy_min_samples,
            threshold=self.settings.policy_threshold,
        )
        if verdict is None:
            return decision
        learned = make.overruled(
            decision,
            verdict.to_pattern,
            verdict.rationale,
            self.implementations,
            self.options.get(verdict.to_pattern, {}),
        )
        return self.record(learned.model_copy(update=_range(from_seq, to_seq)))

    def classified(self, decision: Decision, rule_class: str) -> Decision:
        dims = decision.dimensions
        if dims.request_class:
            self.plan.request_class = dims.request_class
            return decision
        self.plan.request_class = rule_class
        return decision.model_copy(
            update={
                "dimensions": dims.model_copy(
                    update={"request_class": rule_class, "class_source": "rules"}
                )
            }
        )

    def proposed(self, result: DecisionResult, selection: Selection) -> Decision:
        """A plan decision from the Orchestrator agent's answer: the proposal, or a fallback;
        a proposal whose team its pattern cannot run is rejected (recorded so)."""
        if result.proposal is None:
            return self.fallback(selection, result.fallback_reason or "invalid_output", result)
        decision = make.planned(
            result.proposal,
            selection,
            self.run.requested_agent,
            result.usage,
            self.implementations,
            self.options,
        )
        dims = decision.dimensions
        reason = self.implementations[dims.pattern].accepts(
            dims.agent, dims.team, self.options.get(dims.pattern, {})
        )
        if reason is not None:
            return make.rejected(decision, reason)
        note = make.tools_note(
            dims.parameters,
            [dims.agent, *dims.team],
            lambda a: self.roster.agents[a].tools if a in self.roster.agents else (),
        )
        if note:
            decision = decision.model_copy(
                update={"dimensions": dims.model_copy(update={"note": note})}
            )
        return decision

    def fallback(
        self,
        selection: Selection,
        reason: str,
        result: DecisionResult | None,
        kind: DecisionKind = DecisionKind.PLAN,
    ) -> Decision:
        usage = result.usage if result is not None else DecisionUsage()
        return make.fallback(selection, reason, usage, self.implementations, kind=kind)

    def descriptions(self) -> dict[str, str]:
        return {name: spec.description for name, (spec, _) in self.patterns.items()}

    def later(
        self, kind: DecisionKind, key: str, question: str, checkpoint: str | None = None
    ) -> Decision:
        """A later decision: it sees the decision history (within its budget) and the delta
        since the cursor."""
        run = self.run
        selection = self.selection()
        events, total = self.world.delta(run.thread_id, self.cursor)
        delta = delta_context(events, total)
        from_seq, to_seq = self.cursor + 1, max(delta.newest, self.cursor)
        folded = history(
            self.snap.context.summary if self._fold is None else self._fold.summary,
            self.snap.context.summarized_through_seq
            if self._fold is None
            else int(self._fold.summarized_through_seq or 0),
            self.decisions,
            self.calls,
            self.settings.orchestrator_history_tokens,
        )
        if folded.summarized_through_seq is not None:
            self._fold = ContextChange(
                summary=folded.summary, summarized_through_seq=folded.summarized_through_seq
            )
        self.cursor = to_seq
        result = self.decider.consult(
            key,
            DecisionInput(
                phase="later",
                request=run.input,
                context=delta.messages,
                agents=self.roster.descriptions,
                patterns=self.descriptions(),
                default_agent=selection.agent,
                history=folded.text,
                question=question,
            ),
            tokens_left=self.tokens_left(),
            run_id=run.id,
        )
        if kind == DecisionKind.CHECKPOINT:
            current = self.current()
            built = [make.checkpoint(result, str(checkpoint), current, self.pattern)]
        else:
            built = [self.proposed(result, selection)]
            if built[-1].outcome is not None:
                built.append(
                    self.fallback(selection, f"rejected: {built[-1].outcome.reason}", None)
                )
        self.decider.built(key, built)
        recorded = [self.record(d.model_copy(update=_range(from_seq, to_seq))) for d in built]
        return recorded[-1]

    def current(self) -> Decision:
        plan = current_plan(self.decisions)
        assert plan is not None, "a running run has a plan decision"
        return plan

    # --- the pattern ----------------------------------------------------------------------
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
                    ).model_copy(update=_range(self.run.input_event_seq, self.run.input_event_seq))
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

    def _governing(self, seq: int | None) -> Decision:
        if seq is None:
            return self.current()
        return governing(self.decisions, seq) or self.current()

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


def _range(from_seq: int, to_seq: int) -> dict[str, int]:
    return {"input_from_seq": from_seq, "input_to_seq": to_seq}


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
