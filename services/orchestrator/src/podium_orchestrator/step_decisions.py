"""The decisions a step makes: the first one of a run (forced, the Orchestrator agent's, a
fallback or a rejection, then the learned policy's check), and later ones (after the user
answered, at a pattern's checkpoints), each seeing what it should of the thread and of the
earlier decisions."""

from __future__ import annotations

from podium.decisions import (
    Decision,
    DecisionKind,
    DecisionSource,
    DecisionUsage,
)
from podium.learning import classify
from podium.lifecycle import (
    ContextChange,
)
from podium_orchestrator import decider as make
from podium_orchestrator.agent import DecisionInput, DecisionResult
from podium_orchestrator.decision_context import delta_context, first_context, history
from podium_orchestrator.policy import overrule
from podium_orchestrator.selection import Selection
from podium_orchestrator.step_state import StepState, seq_range
from podium_orchestrator.world import guidance


class StepDecisions(StepState):
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
            return self.record(decision.model_copy(update=seq_range(from_seq, to_seq)))
        stats = self.world.stats(run.tenant_id, rule_class)
        advice = guidance(self.world, run.tenant_id, rule_class, stats)
        asked = DecisionInput(
            phase="first",
            request=run.input,
            context=first_context(self.world.thread_before(run.thread_id, to_seq)),
            agents=self.roster.descriptions,
            patterns=self.descriptions(),
            default_agent=selection.agent,
            guidance=advice,
        )
        self.world.release()  # no connection held while the Orchestrator agent thinks
        result = self.decider.consult("first", asked, tokens_left=self.tokens_left(), run_id=run.id)
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
        recorded = [self.record(d.model_copy(update=seq_range(from_seq, to_seq))) for d in built]
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
        return self.record(learned.model_copy(update=seq_range(from_seq, to_seq)))

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
        asked = DecisionInput(
            phase="later",
            request=run.input,
            context=delta.messages,
            agents=self.roster.descriptions,
            patterns=self.descriptions(),
            default_agent=selection.agent,
            history=folded.text,
            question=question,
        )
        self.world.release()  # no connection held while the Orchestrator agent thinks
        result = self.decider.consult(key, asked, tokens_left=self.tokens_left(), run_id=run.id)
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
        recorded = [self.record(d.model_copy(update=seq_range(from_seq, to_seq))) for d in built]
        return recorded[-1]
