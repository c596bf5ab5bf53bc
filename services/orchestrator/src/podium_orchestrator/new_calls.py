"""Turning a pattern's ``Dispatch`` into the ``NewCall`` the lifecycle creates: the agent's
definition, overridden by the parameters of the decision the call executes, its share of the
run's remaining budget, and the thread it works in.

What is decided is what runs: model, temperature and max_output_tokens come from the decision
where it set them, the tool allow-list restricts the agent's tools, and the call records all
of it in its ``params`` (the worker records in ``used`` what its request actually carried).
"""

from __future__ import annotations

from typing import Any

from podium.decisions import Decision
from podium.lifecycle import NewCall, RunSnapshot, SubThread, ThreadMessage
from podium.store import TERMINAL_CALL_STATUSES, EventKind, new_id
from podium.tools_catalog import CONTROL_TOOLS
from podium_orchestrator.patterns import Dispatch
from podium_orchestrator.world import AgentSpec

# Control tools an agent gets because its definition lists them (whatever the pattern).
AGENT_CONTROL_TOOLS = ("delegate",)


def call_params(
    agent: AgentSpec,
    decision: Decision,
    control_tools: tuple[str, ...],
    budget: dict[str, float],
) -> dict[str, Any]:
    """Exactly what the call runs with."""
    decided = decision.dimensions.parameters
    effective = decided.over(agent.defaults)
    own = [t for t in agent.tools if t not in CONTROL_TOOLS]
    tools = own if decided.tools is None else [t for t in own if t in decided.tools]
    params: dict[str, Any] = {
        "provider": agent.provider,
        "model": effective.model,
        "temperature": effective.temperature,
        "max_output_tokens": effective.max_output_tokens,
        "tools": tools,
        "control_tools": sorted(
            {*control_tools, *(t for t in agent.tools if t in AGENT_CONTROL_TOOLS)}
        ),
        "instructions": agent.instructions,
    }
    if decided.tools is not None:
        missing = [t for t in decided.tools if t not in own]
        if missing:
            params["tools_not_available"] = missing
    # What this call may spend: the worker stops short of it, so the run never goes over its
    # caps, nor the tenant over what the run reserved (podium.quotas).
    if "tokens" in budget:
        params["budget_tokens"] = int(budget["tokens"])
    if "cost_usd" in budget:
        params["budget_cost_usd"] = budget["cost_usd"]
    return params


def new_call(
    snap: RunSnapshot,
    action: Dispatch,
    agent: AgentSpec,
    decision: Decision,
    budget: dict[str, float],
) -> tuple[NewCall, list[ThreadMessage]]:
    """The call, and the markers it leaves in the run's thread."""
    run = snap.run
    call_id = new_id()
    markers: list[ThreadMessage] = []
    sub_thread = None
    thread_id = action.thread_id or run.thread_id
    if action.sub_thread:
        sub_thread = SubThread(
            id=new_id(),
            title=f"{agent.name} — sub-task of run {run.id}",
            task=action.task or run.input,
        )
        thread_id = sub_thread.id
        markers.append(
            ThreadMessage(
                thread_id=run.thread_id,
                kind=EventKind.DELEGATION,
                role="system",
                agent=agent.name,
                content=f"Sub-task handed to {agent.name} in sub-thread {sub_thread.id}.",
                data={"sub_thread_id": sub_thread.id},
            )
        )
    call = NewCall(
        id=call_id,
        agent=agent.name,
        pool=agent.pool,
        role=action.role,
        step_index=action.step_index,
        decision_seq=decision.seq,
        params=call_params(agent, decision, action.control_tools, budget),
        thread_id=thread_id,
        task=None if action.sub_thread else action.task,
        context_mode=action.context_mode,
        depth=action.depth,
        parent_call_id=action.parent_call_id,
        sub_thread=sub_thread,
        ends_run=action.ends_run,
    )
    return call, markers


def remaining(snap: RunSnapshot, tokens_used: int) -> dict[str, float]:
    """What is left of the run's caps: minus what finished calls and the Orchestrator spent,
    and minus the budgets still held by calls in flight."""
    limits = snap.run.limits
    tokens, cost = float(tokens_used), 0.0
    for c in snap.calls:
        if c.status in TERMINAL_CALL_STATUSES:
            tokens += c.input_tokens + c.output_tokens
            cost += c.cost_usd
        else:
            tokens += float(c.params.get("budget_tokens", 0))
            cost += float(c.params.get("budget_cost_usd", 0.0))
    out: dict[str, float] = {}
    if limits.get("tokens") is not None:
        out["tokens"] = max(0.0, float(limits["tokens"]) - tokens)
    if limits.get("cost_usd") is not None:
        out["cost_usd"] = max(0.0, float(limits["cost_usd"]) - cost)
    return out
