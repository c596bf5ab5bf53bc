"""Making and recording the first decision of a run (the skeleton's rule-based decider).

Every decision records its four dimensions (agent, pattern, parameters, team), a rationale,
its input range (thread seqs it saw) and the outcome it expects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.patterns import DEFAULT_PATTERN
from podium.store import Agent, OrchestrationContext, OrchestrationDecision, Run, Tenant, Thread
from podium_orchestrator.selection import select_agent


def agent_parameters(agent: Agent) -> dict[str, Any]:
    """The parameters an agent call runs with, snapshotted at decision time."""
    return {
        "provider": agent.provider,
        "model": agent.model,
        "temperature": agent.temperature,
        "max_output_tokens": agent.max_output_tokens,
        "tools": list(agent.tools),
        "instructions": agent.instructions,
        "pool": agent.pool,
    }


def decide_first(
    session: Session, run: Run, context: OrchestrationContext
) -> OrchestrationDecision:
    agents = {
        a.name: a for a in session.scalars(select(Agent).where(Agent.tenant_id == run.tenant_id))
    }
    tenant = session.get(Tenant, run.tenant_id)
    thread = session.get(Thread, run.thread_id)
    selection = select_agent(
        requested=run.requested_agent,
        text=run.input,
        last_agent=thread.last_agent if thread else None,
        default_agent=tenant.default_agent if tenant else "assistant",
        known=set(agents),
    )
    agent = agents[selection.agent]
    if run.requested_pattern:
        pattern, source = run.requested_pattern, "forced by request"
        pattern_reason = f"pattern '{pattern}' was forced by the request"
    else:
        pattern, source = DEFAULT_PATTERN, "rules"
        pattern_reason = f"'{pattern}': one agent can answer a single prompt in one call"
    parameters = agent_parameters(agent)
    decision = OrchestrationDecision(
        tenant_id=run.tenant_id,
        context_id=context.id,
        run_id=run.id,
        seq=1,
        dimensions={
            "agent": agent.name,
            "pattern": pattern,
            "parameters": {k: v for k, v in parameters.items() if k != "instructions"},
            "team": [agent.name],
        },
        rationale=f"{pattern_reason}; {selection.reason}.",
        source=source,
        input_from_seq=context.cursor_seq + 1,
        input_to_seq=run.input_event_seq,
        expected_outcome=f"'{agent.name}' answers the request in one call",
    )
    session.add(decision)
    context.cursor_seq = run.input_event_seq
    return decision
