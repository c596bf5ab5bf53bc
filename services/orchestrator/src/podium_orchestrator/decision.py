"""Making and recording decisions: the first one of a run (forced, Orchestrator agent, or
fallback), later ones at checkpoints and after the user answered, and the ones the step
function records itself (agent handoffs, guards).

Every decision records its four dimensions (agent, pattern, parameters, team), a rationale,
its source, the input range it saw (thread seqs) and the outcome it expects; the fallback
reason is recorded, never silent."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.learning import classify
from podium.llm import build_provider
from podium.metrics import (
    DECISION_FALLBACKS,
    DECISION_LATENCY,
    DECISION_TOKENS,
    DECISIONS,
    POLICY_OVERRULES,
)
from podium.patterns import DEFAULT_PATTERN, cached_patterns
from podium.runtime import Runtime
from podium.store import Agent, OrchestrationContext, OrchestrationDecision, Run, Tenant, Thread
from podium_orchestrator.agent import (
    AgentDecision,
    DecisionInput,
    DecisionResult,
    OrchestratorAgent,
)
from podium_orchestrator.context import delta_context, first_context, history
from podium_orchestrator.policy import class_stats, guidance, overrule
from podium_orchestrator.selection import Selection, select_agent

log = logging.getLogger(__name__)

_agents: dict[int, OrchestratorAgent] = {}
_lock = threading.Lock()


def orchestrator_agent(runtime: Runtime) -> OrchestratorAgent:
    """One Orchestrator agent per process (providers are thread-safe and reused)."""
    with _lock:
        agent = _agents.get(id(runtime))
        if agent is None:
            s = runtime.settings
            agent = OrchestratorAgent(
                build_provider(s, s.orchestrator_provider or s.llm_provider),
                s.orchestrator_model or s.llm_model,
                timeout_s=s.orchestrator_timeout_s,
                max_tokens=s.orchestrator_max_output_tokens,
                tool_choice=s.orchestrator_tool_choice,
            )
            _agents[id(runtime)] = agent
        return agent


@dataclass
class Roster:
    agents: dict[str, Agent]
    default_agent: str

    @property
    def descriptions(self) -> dict[str, str]:
        return {n: a.description for n, a in self.agents.items()}


def load_roster(session: Session, tenant_id: str) -> Roster:
    agents = {a.name: a for a in session.scalars(select(Agent).where(Agent.tenant_id == tenant_id))}
    tenant = session.get(Tenant, tenant_id)
    return Roster(agents, tenant.default_agent if tenant else "assistant")


def agent_parameters(agent: Agent) -> dict[str, Any]:
    """The parameters an agent call runs with, snapshotted at dispatch time."""
    return {
        "provider": agent.provider,
        "model": agent.model,
        "temperature": agent.temperature,
        "max_output_tokens": agent.max_output_tokens,
        "tools": list(agent.tools),
    }


@dataclass
class Choice:
    """A decision before it is recorded."""

    kind: str  # "plan", "checkpoint", "handoff", "guard"
    source: str
    rationale: str
    pattern: str | None = None
    agent: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    team: list[str] = field(default_factory=list)
    merge: str | None = None
    question: str | None = None
    finish: bool = False
    answer: str | None = None
    action: str | None = None
    checkpoint: str | None = None
    fallback_reason: str | None = None
    expected_outcome: str | None = None
    request_class: str | None = None
    class_source: str | None = None
    guidance: str | None = None
    overruled: str | None = None
    result: DecisionResult | None = None


def record(
    session: Session,
    run: Run,
    context: OrchestrationContext,
    choice: Choice,
    *,
    from_seq: int,
    to_seq: int,
    phase: str,
) -> OrchestrationDecision:
    last = session.scalar(
        select(OrchestrationDecision.seq)
        .where(OrchestrationDecision.context_id == context.id)
        .order_by(OrchestrationDecision.seq.desc())
        .limit(1)
    )
    dimensions: dict[str, Any] = {
        "kind": choice.kind,
        "agent": choice.agent,
        "pattern": choice.pattern,
        "parameters": choice.parameters,
        "team": choice.team,
    }
    for key in (
        "merge",
        "question",
        "action",
        "checkpoint",
        "answer",
        "request_class",
        "class_source",
        "guidance",
        "overruled",
    ):
        if getattr(choice, key):
            dimensions[key] = getattr(choice, key)
    if choice.finish:
        dimensions["finish"] = True
    res = choice.result
    decision = OrchestrationDecision(
        tenant_id=run.tenant_id,
        context_id=context.id,
        run_id=run.id,
        seq=(last or 0) + 1,
        dimensions=dimensions,
        rationale=choice.rationale,
        source=choice.source,
        fallback_reason=choice.fallback_reason,
        input_from_seq=from_seq,
        input_to_seq=to_seq,
        expected_outcome=choice.expected_outcome,
        input_tokens=res.input_tokens if res else 0,
        output_tokens=res.output_tokens if res else 0,
        latency_ms=round(res.latency_ms, 2) if res else 0.0,
        provider=res.provider if res else None,
        model=res.model if res else None,
    )
    session.add(decision)
    if res is not None:
        context.tokens_used += res.input_tokens + res.output_tokens
        DECISION_LATENCY.labels(phase).observe(res.latency_ms / 1000)
        DECISION_TOKENS.labels(phase, "input").inc(res.input_tokens)
        DECISION_TOKENS.labels(phase, "output").inc(res.output_tokens)
    DECISIONS.labels(choice.pattern or "none", choice.source).inc()
    if choice.fallback_reason:
        DECISION_FALLBACKS.labels(choice.fallback_reason.split(":")[0]).inc()
    session.flush()
    return decision


def _expected(pattern: str, agent: str, team: list[str]) -> str:
    who = ", ".join(team) if team else agent
    return {
        "direct": f"'{agent}' answers the request in one call",
        "handoff": f"'{agent}' answers, or hands the request to a better-suited agent",
        "plan_execute": f"a plan is written, then executed step by step by {who}",
        "critic_loop": f"'{agent}' drafts an answer that a critic approves within the round limit",
        "parallel_team": f"{who} answer in parallel and their answers are merged",
        "pipeline": f"{who} process the request in sequence",
    }.get(pattern, f"pattern {pattern} completes with {who}")


def _selection(session: Session, run: Run, roster: Roster) -> Selection:
    thread = session.get(Thread, run.thread_id)
    return select_agent(
        requested=run.requested_agent,
        text=run.input,
        last_agent=thread.last_agent if thread else None,
        default_agent=roster.default_agent,
        known=set(roster.agents),
    )


def fallback_choice(selection: Selection, reason: str, result: DecisionResult | None) -> Choice:
    return Choice(
        kind="plan",
        source="fallback",
        pattern=DEFAULT_PATTERN,
        agent=selection.agent,
        rationale=f"Fallback to '{DEFAULT_PATTERN}' ({reason}); {selection.reason}.",
        fallback_reason=reason,
        expected_outcome=_expected(DEFAULT_PATTERN, selection.agent, []),
        result=result,
    )


def from_agent(
    decision: AgentDecision, selection: Selection, run: Run, res: DecisionResult
) -> Choice:
    pattern = decision.pattern or DEFAULT_PATTERN
    agent = run.requested_agent or decision.agent or selection.agent
    rationale = decision.rationale
    if decision.agent is None:
        rationale += f" [agent] {selection.reason}."
    return Choice(
        kind="plan",
        source="orchestrator agent",
        request_class=decision.request_class,
        class_source="orchestrator agent" if decision.request_class else None,
        pattern=pattern,
        agent=agent,
        parameters=decision.parameters,
        team=decision.team,
        merge=decision.merge,
        question=decision.question,
        finish=decision.finish,
        answer=decision.answer,
        rationale=rationale.strip(),
        expected_outcome=(
            "the user answers the question"
            if decision.question
            else _expected(pattern, agent, decision.team)
        ),
        result=res,
    )


def decide_first(
    runtime: Runtime, session: Session, run: Run, context: OrchestrationContext
) -> OrchestrationDecision:
    """The first decision: forced by the request, or the Orchestrator agent's (fallback on
    failure), then checked by the learned policy. Returns the decision the run follows."""
    roster = load_roster(session, run.tenant_id)
    selection = _selection(session, run, roster)
    from_seq, to_seq = context.cursor_seq + 1, run.input_event_seq
    context.cursor_seq = run.input_event_seq
    rule_class = classify(run.input)
    if run.requested_pattern:
        choice = Choice(
            kind="plan",
            source="forced by request",
            pattern=run.requested_pattern,
            agent=selection.agent,
            rationale=(
                f"Pattern '{run.requested_pattern}' was forced by the request; {selection.reason}."
            ),
            expected_outcome=_expected(run.requested_pattern, selection.agent, []),
        )
        _classify(run, choice, rule_class)
        return record(
            session, run, context, choice, from_seq=from_seq, to_seq=to_seq, phase="first"
        )
    stats = class_stats(session, run.tenant_id, rule_class)
    advice = guidance(session, run.tenant_id, rule_class, stats)
    choice = _consult(
        runtime,
        context,
        selection,
        DecisionInput(
            phase="first",
            request=run.input,
            context=first_context(session, run.thread_id, run.input_event_seq),
            agents=roster.descriptions,
            patterns=_pattern_descriptions(runtime),
            default_agent=selection.agent,
            guidance=advice,
        ),
        run,
    )
    choice.guidance = advice or None
    _classify(run, choice, rule_class)
    decision = record(
        session, run, context, choice, from_seq=from_seq, to_seq=to_seq, phase="first"
    )
    if choice.question or choice.finish:
        return decision
    if choice.request_class != rule_class:
        stats = class_stats(session, run.tenant_id, str(choice.request_class))
    settings = runtime.settings
    verdict = overrule(
        stats,
        str(choice.pattern),
        list(_pattern_descriptions(runtime)),
        min_samples=settings.policy_min_samples,
        threshold=settings.policy_threshold,
    )
    if verdict is None:
        return decision
    POLICY_OVERRULES.labels(verdict.from_pattern, verdict.to_pattern).inc()
    learned = Choice(
        kind="plan",
        source="learned policy",
        pattern=verdict.to_pattern,
        agent=choice.agent,
        parameters=choice.parameters,
        team=choice.team if verdict.to_pattern in ("parallel_team", "pipeline") else [],
        merge=choice.merge,
        rationale=verdict.rationale,
        expected_outcome=_expected(verdict.to_pattern, str(choice.agent), []),
        request_class=choice.request_class,
        class_source=choice.class_source,
        overruled=verdict.from_pattern,
    )
    return record(session, run, context, learned, from_seq=from_seq, to_seq=to_seq, phase="policy")


def _classify(run: Run, choice: Choice, rule_class: str) -> None:
    if not choice.request_class:
        choice.request_class, choice.class_source = rule_class, "rules"
    run.request_class = choice.request_class


def decide_later(
    runtime: Runtime,
    session: Session,
    run: Run,
    context: OrchestrationContext,
    *,
    question: str,
    kind: str,
    checkpoint: str | None = None,
) -> OrchestrationDecision:
    """A later decision: it sees the decision history (within its budget) and the delta."""
    roster = load_roster(session, run.tenant_id)
    selection = _selection(session, run, roster)
    decisions = list(
        session.scalars(
            select(OrchestrationDecision)
            .where(OrchestrationDecision.context_id == context.id)
            .order_by(OrchestrationDecision.seq)
        )
    )
    messages, newest = delta_context(session, run.thread_id, context.cursor_seq)
    from_seq, to_seq = context.cursor_seq + 1, newest
    context.cursor_seq = newest
    inp = DecisionInput(
        phase="later",
        request=run.input,
        context=messages,
        agents=roster.descriptions,
        patterns=_pattern_descriptions(runtime),
        default_agent=selection.agent,
        history=history(context, decisions, runtime.settings.orchestrator_history_tokens),
        question=question,
    )
    choice = _consult(runtime, context, selection, inp, run)
    choice.kind = kind
    choice.checkpoint = checkpoint
    if kind == "checkpoint":
        routed = (
            choice.result is not None
            and choice.result.decision is not None
            and bool(choice.result.decision.agent)
        )
        if choice.source == "fallback":
            choice.action = "continue"
            choice.rationale = f"Fallback: continue the current pattern ({choice.fallback_reason})."
        else:
            choice.action = "finish" if choice.finish else ("reroute" if routed else "continue")
    return record(session, run, context, choice, from_seq=from_seq, to_seq=to_seq, phase="later")


def _consult(
    runtime: Runtime,
    context: OrchestrationContext,
    selection: Selection,
    inp: DecisionInput,
    run: Run,
) -> Choice:
    budget = runtime.settings.orchestrator_token_budget
    if context.tokens_used >= budget:
        return fallback_choice(
            selection, f"budget_exhausted: {context.tokens_used} of {budget} tokens used", None
        )
    res = orchestrator_agent(runtime).decide(inp, metadata={"run_id": run.id})
    if res.decision is None:
        return fallback_choice(selection, res.fallback_reason or "invalid_output", res)
    return from_agent(res.decision, selection, run, res)


def _pattern_descriptions(runtime: Runtime) -> dict[str, str]:
    return {n: s.description for n, s in cached_patterns(runtime.settings.patterns_file).items()}
