"""``advance(run_id)``: the orchestrator's step (docs/architecture.md, "The step").

Read, think, then write briefly: load a snapshot of the run (a short read), plan the step on
it with no transaction open (the Orchestrator agent may be consulted), then apply the plan
through the run lifecycle, which writes it only if the run is still at the snapshot's version.
A step whose run moved on meanwhile (cancelled, answered, interrupted, or stepped by another
trigger) plans again on the fresh state, reusing the answers it already paid for; decisions
that end up not applied are recorded as superseded, never executed. A step never waits for an
agent call, and a duplicated trigger finds nothing to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from podium.decisions import Decision, DecisionKind, DecisionOutcome
from podium.lifecycle import RunSnapshot, StepPlan
from podium.lifecycle import runs as lifecycle
from podium.lifecycle.snapshot import read_snapshot
from podium.messages import AdvanceRun
from podium.metrics import (
    BUDGET_HOLDS,
    DECISION_FALLBACKS,
    DECISION_LATENCY,
    DECISION_TOKENS,
    DECISIONS,
    GUARD_HITS,
    POLICY_OVERRULES,
    RUN_DURATION,
    RUN_QUEUE_WAIT,
    RUNS_FINISHED,
    RUNS_STARTED,
)
from podium.runtime import Runtime
from podium.store import utcnow
from podium_orchestrator.decider import Decider, orchestrator_agent
from podium_orchestrator.next_step import plan_step
from podium_orchestrator.patterns import registry
from podium_orchestrator.world import StoreWorld

log = logging.getLogger(__name__)

MAX_ROUNDS = 8


@dataclass
class StepOutcome:
    plan: StepPlan | None
    superseded: list[Decision]


def advance(runtime: Runtime, message: AdvanceRun) -> StepOutcome:
    settings = runtime.settings
    world = StoreWorld(runtime)
    decider = Decider(lambda: orchestrator_agent(settings))
    patterns = registry(settings.patterns_file)
    for _ in range(MAX_ROUNDS):
        try:
            snap = read_snapshot(world.session(), message.run_id)
            if snap is None:
                log.warning("advance: run %s does not exist; ignoring", message.run_id)
                return StepOutcome(None, [])
            decider.new_round()
            plan, next_seq = plan_step(snap, world, decider, patterns, settings)
        finally:
            world.release()
        leftovers = decider.unused()
        superseded: list[Decision] = []
        if leftovers and plan.writes:
            reason = _why_superseded(snap)
            superseded = [
                d.numbered(next_seq + i).with_outcome(
                    DecisionOutcome(status="superseded", reason=reason)
                )
                for i, d in enumerate(leftovers)
            ]
            plan.decisions += superseded
            spent = sum(d.usage.tokens for d in leftovers)
            plan.context = replace(plan.context, tokens_added=plan.context.tokens_added + spent)
        applied = lifecycle.apply_step(runtime, plan)
        if not applied.applied:
            log.info("run %s moved on during its step (%s); again", snap.run.id, applied.reason)
            continue
        decider.applied()
        if leftovers and not plan.writes:
            superseded = lifecycle.record_superseded(
                runtime, snap.run.id, snap.run.tenant_id, leftovers, _why_superseded(snap)
            )
        _after(runtime, snap, plan, applied, superseded)
        return StepOutcome(plan, superseded)
    raise RuntimeError(f"run {message.run_id}: its state kept moving during {MAX_ROUNDS} steps")


def _why_superseded(snap: RunSnapshot) -> str:
    run = snap.run
    if run.cancel_requested or run.status == "cancelled":
        return "the run was cancelled (or interrupted) while this decision was being made"
    if run.terminal:
        return f"the run ended ({run.status}) while this decision was being made"
    return "the run changed while this decision was being made; the next step decided anew"


def _after(
    runtime: Runtime,
    snap: RunSnapshot,
    plan: StepPlan,
    applied: lifecycle.StepApplied,
    superseded: list[Decision],
) -> None:
    """Publish the step's events and count it, once it is committed (a step planned again
    after a lost race must not count twice)."""
    run_id = snap.run.id
    for d in superseded:
        plan.emit("decision.superseded", seq=d.seq, reason=d.outcome.reason if d.outcome else None)
    for type_, data in plan.events:
        try:
            runtime.events.publish(run_id, type_, {"run_id": run_id, **data})
        except Exception as exc:  # the store is the truth; the stream is a view
            log.warning("event publish failed for run %s: %s", run_id, exc)
    for decision in plan.decisions:
        if decision.superseded:
            continue
        DECISIONS.labels(decision.dimensions.pattern, decision.source.value).inc()
        if decision.fallback_reason:
            DECISION_FALLBACKS.labels(decision.fallback_reason.split(":")[0]).inc()
        if decision.dimensions.overruled:
            POLICY_OVERRULES.labels(
                decision.dimensions.overruled, decision.dimensions.pattern
            ).inc()
        if decision.usage.tokens:
            first = plan.start and decision.kind == DecisionKind.PLAN
            phase = "first" if first else "later"
            DECISION_LATENCY.labels(phase).observe(decision.usage.latency_ms / 1000)
            DECISION_TOKENS.labels(phase, "input").inc(decision.usage.input_tokens)
            DECISION_TOKENS.labels(phase, "output").inc(decision.usage.output_tokens)
    for guard in plan.guards:
        GUARD_HITS.labels(str(guard["guard"])).inc()
    if plan.hold and plan.guards:
        BUDGET_HOLDS.labels(str(plan.guards[-1]["guard"])).inc()
    if plan.start:
        RUNS_STARTED.labels(plan.pattern or snap.run.pattern or "none").inc()
        RUN_QUEUE_WAIT.observe(max(0.0, (utcnow() - snap.run.created_at).total_seconds()))
    if applied.finished is not None:
        pattern = plan.pattern or snap.run.pattern or "none"
        RUNS_FINISHED.labels(applied.finished.value, pattern).inc()
        if applied.duration_s is not None:
            RUN_DURATION.labels(pattern).observe(applied.duration_s)
