"""The reads a step makes besides its snapshot: the tenant's agents and call cap, the thread
events a decision sees, the user's answer, and the learner's record. Each is a short read of
its own, so no transaction stays open while the Orchestrator agent thinks. Unit tests hand the
step an in-memory ``World`` instead."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from podium.decisions import AgentParameters
from podium.quotas import load_limits
from podium.runtime import Runtime
from podium.store import Agent, EventKind, LearningStat, PostMortem, RunOutcome, Tenant, ThreadEvent
from podium_orchestrator.decision_context import (
    DELTA_EVENTS,
    FIRST_CONTEXT_EVENTS,
    SHOWN_KINDS,
    EventView,
)
from podium_orchestrator.policy import Stat, guidance_text

# Older delta events loaded to be summarised, beyond the DELTA_EVENTS shown in full.
DELTA_SUMMARISED = 60


@dataclass(frozen=True)
class AgentSpec:
    name: str
    description: str
    instructions: str
    provider: str | None
    model: str | None
    temperature: float
    max_output_tokens: int
    tools: tuple[str, ...]
    pool: str

    @property
    def defaults(self) -> AgentParameters:
        return AgentParameters(
            model=self.model,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            tools=self.tools,
        )


@dataclass(frozen=True)
class Roster:
    agents: dict[str, AgentSpec]
    default_agent: str

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.agents)

    @property
    def descriptions(self) -> dict[str, str]:
        return {n: a.description for n, a in self.agents.items()}


class World(Protocol):
    def release(self) -> None:
        """Give back whatever connection the reads hold: called before the Orchestrator
        agent is consulted, and when the step's planning ends."""
        ...

    def roster(self, tenant_id: str) -> Roster: ...

    def call_cap(self, tenant_id: str) -> int:
        """The tenant's concurrent agent calls limit (0: none)."""
        ...

    def thread_before(self, thread_id: str, seq: int) -> list[EventView]:
        """The shown events before ``seq``, oldest first (at most FIRST_CONTEXT_EVENTS)."""
        ...

    def delta(self, thread_id: str, after_seq: int) -> tuple[list[EventView], int]:
        """The newest shown events after ``after_seq``, oldest first, and how many there are
        in all."""
        ...

    def answer_after(self, thread_id: str, seq: int) -> str | None:
        """The first user message after ``seq``."""
        ...

    def stats(self, tenant_id: str, request_class: str) -> list[Stat]: ...

    def lessons(self, tenant_id: str, request_class: str) -> list[str]: ...


def guidance(world: World, tenant_id: str, request_class: str, stats: list[Stat]) -> str:
    if not stats:
        return ""
    return guidance_text(request_class, stats, world.lessons(tenant_id, request_class))


def _event(row: ThreadEvent) -> EventView:
    return EventView(row.seq, row.kind, row.agent, row.content)


class _Ttl:
    """A per-process memo with a time to live: a PATCH of a tenant's limit applies within it."""

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


_CALL_CAPS = _Ttl(5.0)


class StoreWorld:
    """Reads through one read-only session, opened on the first read and given back by
    ``release`` (the step releases it before every LLM call), so a step's reads cost one
    connection checkout between two decisions instead of one each."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.db = runtime.db
        self._session: Session | None = None
        self._scope: AbstractContextManager[Session] | None = None
        self._roster: tuple[str, Roster] | None = None

    def session(self) -> Session:
        if self._session is None:
            self._scope = self.db.read()
            self._session = self._scope.__enter__()
        return self._session

    def release(self) -> None:
        scope, self._scope, self._session = self._scope, None, None
        if scope is not None:
            scope.__exit__(None, None, None)

    def roster(self, tenant_id: str) -> Roster:
        if self._roster is not None and self._roster[0] == tenant_id:
            return self._roster[1]
        session = self.session()
        # The tenant's default agent and its agents in one query (a tenant with no agents
        # still gives one row, with no agent).
        rows = session.execute(
            select(
                Tenant.default_agent,
                Agent.name,
                Agent.description,
                Agent.instructions,
                Agent.provider,
                Agent.model,
                Agent.temperature,
                Agent.max_output_tokens,
                Agent.tools,
                Agent.pool,
            )
            .select_from(Tenant)
            .outerjoin(Agent, Agent.tenant_id == Tenant.id)
            .where(Tenant.id == tenant_id)
        ).all()
        agents = {
            r.name: AgentSpec(
                name=r.name,
                description=r.description,
                instructions=r.instructions,
                provider=r.provider,
                model=r.model,
                temperature=r.temperature,
                max_output_tokens=r.max_output_tokens,
                tools=tuple(r.tools or ()),
                pool=r.pool,
            )
            for r in rows
            if r.name is not None
        }
        default = rows[0].default_agent if rows else None
        roster = Roster(agents, default or "assistant")
        # Kept for this step only (its retries included): a changed agent applies next step.
        self._roster = (tenant_id, roster)
        return roster

    def call_cap(self, tenant_id: str) -> int:
        cap = _CALL_CAPS.get(tenant_id)
        if cap is None:
            session = self.session()
            cap = load_limits(session, self.runtime.settings, tenant_id).concurrent_calls
            _CALL_CAPS.put(tenant_id, cap)
        return cap

    def thread_before(self, thread_id: str, seq: int) -> list[EventView]:
        session = self.session()
        rows = session.scalars(
            select(ThreadEvent)
            .where(
                ThreadEvent.thread_id == thread_id,
                ThreadEvent.seq < seq,
                ThreadEvent.kind.in_([k.value for k in SHOWN_KINDS]),
            )
            .order_by(ThreadEvent.seq.desc())
            .limit(FIRST_CONTEXT_EVENTS)
        ).all()
        return [_event(r) for r in reversed(rows)]

    def delta(self, thread_id: str, after_seq: int) -> tuple[list[EventView], int]:
        shown = [
            ThreadEvent.thread_id == thread_id,
            ThreadEvent.seq > after_seq,
            ThreadEvent.kind.in_([k.value for k in SHOWN_KINDS]),
        ]
        session = self.session()
        rows = session.scalars(
            select(ThreadEvent)
            .where(*shown)
            .order_by(ThreadEvent.seq.desc())
            .limit(DELTA_EVENTS + DELTA_SUMMARISED)
        ).all()
        total = len(rows)
        if total == DELTA_EVENTS + DELTA_SUMMARISED:
            total = int(session.scalar(select(func.count()).where(*shown)) or total)
        return [_event(r) for r in reversed(rows)], total

    def answer_after(self, thread_id: str, seq: int) -> str | None:
        session = self.session()
        return session.scalars(
            select(ThreadEvent.content)
            .where(
                ThreadEvent.thread_id == thread_id,
                ThreadEvent.seq > seq,
                ThreadEvent.kind == EventKind.USER_MESSAGE.value,
            )
            .order_by(ThreadEvent.seq)
            .limit(1)
        ).first()

    def stats(self, tenant_id: str, request_class: str) -> list[Stat]:
        session = self.session()
        rows = session.scalars(
            select(LearningStat)
            .where(
                LearningStat.tenant_id == tenant_id,
                LearningStat.request_class == request_class,
            )
            .order_by(LearningStat.dimension, LearningStat.value)
        ).all()
        return [Stat(r.dimension, r.value, r.good, r.samples, r.mean_rating) for r in rows]

    def lessons(self, tenant_id: str, request_class: str) -> list[str]:
        session = self.session()
        reviews = session.scalars(
            select(PostMortem.review)
            .join(RunOutcome, RunOutcome.run_id == PostMortem.run_id)
            .where(RunOutcome.tenant_id == tenant_id, RunOutcome.request_class == request_class)
            .order_by(PostMortem.created_at.desc())
            .limit(10)
        ).all()
        seen: list[str] = []
        for review in reviews:
            for lesson in (review or {}).get("lessons", []) or []:
                if str(lesson) not in seen:
                    seen.append(str(lesson))
        return seen
