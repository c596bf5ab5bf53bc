"""Turning a pattern's Dispatch into an AgentCall row and its queue message (same
transaction), including sub-threads for work done in clean context."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.call_dispatch import submit_call
from podium.quotas import load_limits
from podium.runtime import Runtime, Tx
from podium.store import (
    TERMINAL_CALL_STATUSES,
    Agent,
    AgentCall,
    CallStatus,
    EventKind,
    OrchestrationContext,
    Run,
    Thread,
)
from podium.store.threads import append_event
from podium.tools_catalog import CONTROL_TOOLS
from podium_orchestrator.decision import agent_parameters
from podium_orchestrator.patterns import Dispatch, RunView


class _TtlCache:
    """Per-process memo of a tenant's call cap: a PATCH of the limit applies within
    ``ttl_s``; saves a query on every dispatch."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, int]] = {}

    def get(self, key: str) -> int | None:
        hit = self._items.get(key)
        return hit[1] if hit and time.monotonic() - hit[0] < self.ttl_s else None

    def put(self, key: str, value: int) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[key] = (time.monotonic(), value)


_CALL_CAPS = _TtlCache(ttl_s=5.0)


class DispatchError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Dispatcher:
    def __init__(self, runtime: Runtime, tx: Tx, run: Run, emit: Callable[..., None]) -> None:
        self.runtime = runtime
        self.tx = tx
        self.session = tx.session
        self.run = run
        self.emit = emit
        self._call_cap: int | None = None
        self._share: dict[str, float] | None = None

    def split_budget(
        self,
        count: int,
        calls: list[AgentCall] | None = None,
        orchestrator_tokens: int | None = None,
    ) -> None:
        """The next ``count`` dispatches share what is left of the run's token and cost caps
        (a parallel team dispatches several at once). ``calls`` and ``orchestrator_tokens``,
        when the caller has them loaded, save the queries."""
        remaining = run_remaining(self.session, self.run, calls, orchestrator_tokens)
        self._share = {k: v / max(count, 1) for k, v in remaining.items()}

    def _call_budget(self) -> dict[str, float]:
        if self._share is None:
            self.split_budget(1)
        assert self._share is not None
        return self._share

    def tenant_call_cap(self) -> int:
        """The tenant's concurrent agent calls limit (0 = none)."""
        if self._call_cap is None:
            self._call_cap = _CALL_CAPS.get(self.run.tenant_id)
        if self._call_cap is None:
            limits = load_limits(self.session, self.runtime.settings, self.run.tenant_id)
            self._call_cap = limits.concurrent_calls
            _CALL_CAPS.put(self.run.tenant_id, self._call_cap)
        return self._call_cap

    def agent(self, name: str) -> Agent:
        agent = self.session.scalars(
            select(Agent).where(Agent.tenant_id == self.run.tenant_id, Agent.name == name)
        ).one_or_none()
        if agent is None:
            raise DispatchError("unknown_agent", f"agent {name!r} is not defined for this tenant")
        return agent

    def dispatch(
        self,
        action: Dispatch,
        view: RunView | None,
        decision_seq: int,
        *,
        parent: AgentCall | None = None,
        depth: int = 0,
    ) -> AgentCall:
        run = self.run
        agent = self.agent(action.agent)
        params: dict[str, Any] = agent_parameters(agent)
        if view is not None and action.agent == view.agent:
            params.update(view.parameters)  # the decision's parameters tune the lead agent
        params.update(action.parameters)
        params["instructions"] = agent.instructions
        # What this call may spend: the worker stops short of it, so the run never goes
        # over its caps, nor the tenant over what the run reserved (podium.quotas).
        budget = self._call_budget()
        if "tokens" in budget:
            params["budget_tokens"] = int(budget["tokens"])
        if "cost_usd" in budget:
            params["budget_cost_usd"] = budget["cost_usd"]
        own_control = [t for t in agent.tools if t in CONTROL_TOOLS]
        params["control_tools"] = sorted({*action.control_tools, *own_control})
        params["tools"] = [t for t in params.get("tools", []) if t not in CONTROL_TOOLS]
        thread_id, until_seq, task = run.thread_id, None, action.task
        if action.sub_thread:
            thread_id, until_seq = self._sub_thread(agent.name, action.task or run.input)
            task = None  # the task is the sub-thread's first message
        else:
            thread_id = action.thread_id or run.thread_id
            thread = self.session.get(Thread, thread_id)
            until_seq = thread.event_count if thread else run.input_event_seq
        call = AgentCall(
            tenant_id=run.tenant_id,
            run_id=run.id,
            thread_id=thread_id,
            decision_seq=decision_seq,
            agent=agent.name,
            pool=agent.pool,
            status=CallStatus.PENDING,
            role=action.role,
            step_index=action.step_index,
            parent_call_id=parent.id if parent else None,
            depth=depth,
            task=task,
            context_mode=action.context_mode,
            params=params,
            context_until_seq=until_seq,
        )
        self.session.add(call)
        self.session.flush()
        run.step = f"{action.role}:{agent.name}"
        # Not sent straight to the pool: the fair dispatcher releases it in its tenant's turn.
        self.tx.after_commit.append(
            partial(
                submit_call,
                self.runtime,
                agent.pool,
                run.tenant_id,
                call.id,
                run.id,
                self.tenant_call_cap(),
            )
        )
        self.emit(
            "agent_call.queued",
            call_id=call.id,
            agent=agent.name,
            role=action.role,
            step=action.step_index,
            pool=agent.pool,
        )
        return call

    def _sub_thread(self, agent: str, task: str) -> tuple[str, int]:
        run = self.run
        sub = Thread(
            tenant_id=run.tenant_id,
            parent_thread_id=run.thread_id,
            title=f"{agent} — sub-task of run {run.id}",
        )
        self.session.add(sub)
        self.session.flush()
        first = append_event(
            self.session,
            tenant_id=run.tenant_id,
            thread_id=sub.id,
            kind=EventKind.USER_MESSAGE,
            role="user",
            content=task,
            run_id=run.id,
        )
        append_event(
            self.session,
            tenant_id=run.tenant_id,
            thread_id=run.thread_id,
            kind=EventKind.DELEGATION,
            role="system",
            agent=agent,
            content=f"Sub-task handed to {agent} in sub-thread {sub.id}.",
            run_id=run.id,
            data={"sub_thread_id": sub.id},
        )
        return sub.id, first.seq


def run_remaining(
    session: Session,
    run: Run,
    calls: list[AgentCall] | None = None,
    orchestrator_tokens: int | None = None,
) -> dict[str, float]:
    """What is left of the run's caps: minus what finished calls and the Orchestrator spent,
    and minus the budgets still held by calls in flight."""
    limits = run.limits or {}
    if calls is None:
        calls = list(session.scalars(select(AgentCall).where(AgentCall.run_id == run.id)))
    if orchestrator_tokens is None:
        orchestrator_tokens = session.scalar(
            select(OrchestrationContext.tokens_used).where(OrchestrationContext.run_id == run.id)
        )
    tokens, cost = float(orchestrator_tokens or 0), 0.0
    rows = [(c.status, c.input_tokens, c.output_tokens, c.cost_usd, c.params) for c in calls]
    for status, tin, tout, usd, params in rows:
        if status in TERMINAL_CALL_STATUSES:
            tokens += tin + tout
            cost += usd
        else:
            tokens += float((params or {}).get("budget_tokens", 0))
            cost += float((params or {}).get("budget_cost_usd", 0.0))
    out: dict[str, float] = {}
    if limits.get("tokens") is not None:
        out["tokens"] = max(0.0, float(limits["tokens"]) - tokens)
    if limits.get("cost_usd") is not None:
        out["cost_usd"] = max(0.0, float(limits["cost_usd"]) - cost)
    return out
