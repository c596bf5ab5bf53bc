"""Runs: admission (202), state, cancel, the event stream and the orchestration context."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from podium.events import TERMINAL_EVENT_TYPES, RunEvent
from podium.messages import AdvanceRun
from podium.metrics import TENANT_RUNS, tenant_label
from podium.patterns import cached_patterns
from podium.runtime import Runtime, Tx
from podium.store import (
    TERMINAL_RUN_STATUSES,
    Agent,
    AgentCall,
    EventKind,
    OrchestrationContext,
    OrchestrationDecision,
    PostMortem,
    Run,
    RunStatus,
    Thread,
    new_id,
    tenant_session,
    utcnow,
)
from podium.store.threads import append_event
from podium_gateway.admission import extend_run, release_run, reserve_run
from podium_gateway.auth import Principal, RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS, ApiError, error_responses, not_found
from podium_gateway.routes.health import Available
from podium_gateway.schemas import (
    DecisionOut,
    OrchestrationOut,
    RunAccepted,
    RunCreate,
    RunOut,
    Usage,
)

router = APIRouter(tags=["runs"], responses=API_ERRORS)
log = logging.getLogger(__name__)

KEEPALIVE_S = 15


def _request_hash(thread_id: str, body: RunCreate) -> str:
    canonical = json.dumps({"thread_id": thread_id, **body.model_dump()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing_for_key(
    runtime: Runtime, principal: Principal, key: str, request_hash: str
) -> RunAccepted | None:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        run = session.scalars(select(Run).where(Run.idempotency_key == key)).one_or_none()
        if run is None:
            return None
        if run.request_hash != request_hash:
            raise ApiError(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was already used with a different request body",
                run_id=run.id,
            )
        return RunAccepted(id=run.id, status=run.status, thread_id=run.thread_id)


@router.post(
    "/v1/threads/{thread_id}/runs",
    status_code=202,
    response_model=RunAccepted,
    responses=error_responses(409, 429),
)
def create_run(
    _available: Available,
    thread_id: str,
    body: RunCreate,
    principal: TenantDep,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> RunAccepted:
    """Start a run on a thread. The work happens asynchronously; follow /events."""
    patterns = cached_patterns(runtime.settings.patterns_file)
    if body.pattern is not None and body.pattern not in patterns:
        raise ApiError(
            422,
            "unknown_pattern",
            f"pattern {body.pattern!r} is not available; choose one of {sorted(patterns)}",
        )
    request_hash = _request_hash(thread_id, body)
    if idempotency_key:
        existing = _existing_for_key(runtime, principal, idempotency_key, request_hash)
        if existing is not None:
            return existing
    try:
        return _admit(runtime, principal, thread_id, body, idempotency_key, request_hash)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        if idempotency_key:
            existing = _existing_for_key(runtime, principal, idempotency_key, request_hash)
            if existing is not None:
                return existing
        raise


def _admit(
    runtime: Runtime,
    principal: Principal,
    thread_id: str,
    body: RunCreate,
    idempotency_key: str | None,
    request_hash: str,
) -> RunAccepted:
    run_id = new_id()
    reserved = False
    try:
        accepted = _admit_tx(
            runtime, principal, thread_id, body, idempotency_key, request_hash, run_id
        )
        reserved = accepted.id == run_id
    except BaseException:
        # Nothing was written: give back the quota this attempt may have taken.
        release_run(runtime, principal, run_id)
        raise
    if reserved:
        TENANT_RUNS.labels(tenant_label(principal.tenant_id)).inc()
        _publish(runtime, run_id, "run.queued", {"run_id": run_id, "thread_id": thread_id})
    return accepted


def _admit_tx(
    runtime: Runtime,
    principal: Principal,
    thread_id: str,
    body: RunCreate,
    idempotency_key: str | None,
    request_hash: str,
    run_id: str,
) -> RunAccepted:
    settings = runtime.settings
    with runtime.transaction(principal.tenant_id) as tx:
        session = tx.session
        thread = session.scalars(select(Thread).where(Thread.id == thread_id)).one_or_none()
        if thread is None:
            raise not_found("thread", thread_id)
        if body.agent is not None:
            known = session.scalars(select(Agent.id).where(Agent.name == body.agent)).first()
            if known is None:
                raise ApiError(422, "unknown_agent", f"agent {body.agent!r} is not defined")
        active = _active_run(session, thread)
        if active is not None and active.status == RunStatus.AWAITING_INPUT:
            # The thread's next user message answers the run's question (DESIGN §3, ask_user).
            return _answer(tx, principal, active, body)
        if active is not None and body.multitask == "reject":
            raise ApiError(
                409,
                "thread_busy",
                "the thread has an unfinished run; retry later or use multitask=enqueue",
                active_run_id=active.id,
            )
        event = append_event(
            session,
            tenant_id=principal.tenant_id,
            thread_id=thread_id,
            kind=EventKind.USER_MESSAGE,
            role="user",
            content=body.input,
        )
        # The run reserves its own token and cost caps from the tenant's budgets (or what
        # is left, if less): its caps are then what it may spend, so bursts cannot overshoot.
        admission = reserve_run(
            runtime,
            principal,
            run_id,
            int(_capped(body.max_tokens, settings.run_max_tokens)),
            _capped(body.max_cost_usd, settings.run_max_cost_usd),
        )
        run = Run(
            id=run_id,
            tenant_id=principal.tenant_id,
            thread_id=thread_id,
            status=RunStatus.QUEUED,
            input=body.input,
            input_event_seq=event.seq,
            requested_agent=body.agent,
            requested_pattern=body.pattern,
            multitask=body.multitask,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            deadline_at=utcnow()
            + timedelta(seconds=_capped(body.deadline_s, settings.run_deadline_s)),
            limits={
                "tokens": admission.tokens,
                "cost_usd": admission.cost_usd,
                "iterations": int(_capped(body.max_iterations, settings.run_max_iterations)),
            },
        )
        session.add(run)
        session.flush()
        event.run_id = run.id
        session.add(OrchestrationContext(tenant_id=principal.tenant_id, run_id=run.id))
        if active is not None and body.multitask == "interrupt":
            active.cancel_requested = True
            tx.send(AdvanceRun(run_id=active.id, reason="run.cancel"))
        tx.send(AdvanceRun(run_id=run.id, reason="run.created"))
        return RunAccepted(id=run.id, status=run.status, thread_id=thread_id)


def _capped(requested: float | None, deployment_max: float) -> float:
    return deployment_max if requested is None else min(requested, deployment_max)


def _answer(tx: Tx, principal: Principal, run: Run, body: RunCreate) -> RunAccepted:
    append_event(
        tx.session,
        tenant_id=principal.tenant_id,
        thread_id=run.thread_id,
        kind=EventKind.USER_MESSAGE,
        role="user",
        content=body.input,
        run_id=run.id,
        data={"answers": (run.awaiting or {}).get("question")},
    )
    tx.send(AdvanceRun(run_id=run.id, reason="user.answered"))
    return RunAccepted(id=run.id, status=run.status, thread_id=run.thread_id)


def _active_run(session: Session, thread: Thread) -> Run | None:
    return session.scalars(
        select(Run)
        .where(
            Run.thread_id == thread.id,
            Run.status.not_in([s.value for s in TERMINAL_RUN_STATUSES]),
        )
        .order_by(Run.created_at)
        .limit(1)
    ).first()


def _publish(runtime: Runtime, run_id: str, type_: str, data: dict[str, object]) -> None:
    try:
        runtime.events.publish(run_id, type_, data)
    except Exception:  # the stream is a view; the store is the source of truth
        log.warning("event publish failed for run %s", run_id)


def _load_run(runtime: Runtime, principal: Principal, run_id: str) -> tuple[Run, Usage]:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        run = session.scalars(select(Run).where(Run.id == run_id)).one_or_none()
        if run is None:
            raise not_found("run", run_id)
        calls = session.scalar(
            select(func.count()).select_from(AgentCall).where(AgentCall.run_id == run_id)
        )
        usage = Usage(
            input_tokens=int(run.usage.get("input_tokens", 0)),
            output_tokens=int(run.usage.get("output_tokens", 0)),
            orchestrator_tokens=int(run.usage.get("orchestrator_tokens", 0)),
            cost_usd=float(run.usage.get("cost_usd", run.cost_usd or 0.0)),
            agent_calls=int(calls or 0),
        )
        return run, usage


@router.get("/v1/runs/{run_id}", response_model=RunOut)
def get_run(run_id: str, principal: TenantDep, runtime: RuntimeDep) -> RunOut:
    run, usage = _load_run(runtime, principal, run_id)
    return RunOut(
        id=run.id,
        thread_id=run.thread_id,
        status=run.status,
        pattern=run.pattern,
        step=run.step,
        output=run.output,
        usage=usage,
        error=run.error,
        limits=run.limits,
        guards=run.guards,
        question=(run.awaiting or {}).get("question")
        if run.status == RunStatus.AWAITING_INPUT
        else None,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


@router.post(
    "/v1/runs/{run_id}/cancel",
    status_code=202,
    response_model=RunAccepted,
    responses=error_responses(409),
)
def cancel_run(
    _available: Available, run_id: str, principal: TenantDep, runtime: RuntimeDep
) -> RunAccepted:
    """Ask a run to stop; in-flight calls stop at their next step."""
    with runtime.transaction(principal.tenant_id) as tx:
        run = tx.session.scalars(select(Run).where(Run.id == run_id)).one_or_none()
        if run is None:
            raise not_found("run", run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            raise ApiError(
                409,
                "run_finished",
                f"run already finished with status {run.status}",
                run_status=run.status,
            )
        if not run.cancel_requested:
            run.cancel_requested = True
            tx.send(AdvanceRun(run_id=run.id, reason="run.cancel"))
        accepted = RunAccepted(id=run.id, status=run.status, thread_id=run.thread_id)
    _publish(runtime, run_id, "run.cancel_requested", {"run_id": run_id})
    return accepted


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=RunAccepted,
    responses=error_responses(409, 429),
)
def resume_run(
    _available: Available, run_id: str, principal: TenantDep, runtime: RuntimeDep
) -> RunAccepted:
    """Continue a run held by its token, cost or iteration cap; the caps are doubled."""
    try:
        with runtime.transaction(principal.tenant_id) as tx:
            run = tx.session.scalars(select(Run).where(Run.id == run_id)).one_or_none()
            if run is None:
                raise not_found("run", run_id)
            if run.status != RunStatus.BUDGET_HOLD:
                raise ApiError(
                    409,
                    "not_on_hold",
                    f"only a run in budget_hold can be resumed; this one is {run.status}",
                    run_status=run.status,
                )
            limits = dict(run.limits or {})
            # The doubled caps are reserved from the tenant's budgets first (429 if not).
            extend_run(
                runtime,
                principal,
                run.id,
                int(limits.get("tokens") or 0),
                float(limits.get("cost_usd") or 0.0),
            )
            for key in ("tokens", "cost_usd", "iterations"):
                if limits.get(key) is not None:
                    limits[key] = limits[key] * 2
            limits["tokens"] = int(limits.get("tokens", 0)) or None
            limits["iterations"] = int(limits.get("iterations", 0)) or None
            run.limits = limits
            run.status = RunStatus.RUNNING
            run.step = None
            tx.send(AdvanceRun(run_id=run.id, reason="run.resumed"))
            accepted = RunAccepted(id=run.id, status=run.status, thread_id=run.thread_id)
    except StaleDataError:
        raise ApiError(
            409, "conflict", "the run changed while resuming; retry", headers={"Retry-After": "1"}
        ) from None
    _publish(runtime, run_id, "run.resumed", {"run_id": run_id, "limits": limits})
    return accepted


def _sse(event: RunEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


@router.get(
    "/v1/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
def run_events(
    run_id: str,
    request: Request,
    principal: TenantDep,
    runtime: RuntimeDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[str | None, Query(max_length=40, description="Same as Last-Event-ID")] = None,
) -> StreamingResponse:
    """Decisions, agent-call start and end, token deltas and the final status, as SSE.
    Resumable with Last-Event-ID, and replayable after the run ends."""
    _load_run(runtime, principal, run_id)
    cursor = last_event_id or after or "0"

    async def stream() -> AsyncIterator[str]:
        position = cursor
        idle = 0.0
        while True:
            if await request.is_disconnected():
                return
            events = await runtime.events.read(run_id, position, block_ms=1000)
            for event in events:
                position = event.id
                yield _sse(event)
                if event.type in TERMINAL_EVENT_TYPES:
                    return
            if events:
                idle = 0.0
                continue
            idle += 1.0
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield ": keepalive\n\n"
                # The stream may have expired or missed its last event: the store decides.
                run, _ = _load_run(runtime, principal, run_id)
                if run.status in TERMINAL_RUN_STATUSES:
                    yield _sse(
                        RunEvent(
                            id=position,
                            type=f"run.{run.status}",
                            data={"run_id": run_id, "status": run.status, "output": run.output},
                        )
                    )
                    return

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/runs/{run_id}/orchestration", response_model=OrchestrationOut)
def get_orchestration(run_id: str, principal: TenantDep, runtime: RuntimeDep) -> OrchestrationOut:
    """The run's OrchestrationContext: decisions with rationale, budget, outcome, post-mortem."""
    with tenant_session(runtime.db, principal.tenant_id) as session:
        context = session.scalars(
            select(OrchestrationContext).where(OrchestrationContext.run_id == run_id)
        ).one_or_none()
        if context is None:
            raise not_found("run", run_id)
        decisions = session.scalars(
            select(OrchestrationDecision)
            .where(OrchestrationDecision.context_id == context.id)
            .order_by(OrchestrationDecision.seq)
        ).all()
        postmortem = session.scalars(
            select(PostMortem).where(PostMortem.run_id == run_id)
        ).one_or_none()
        return OrchestrationOut(
            run_id=run_id,
            decisions=[
                DecisionOut(
                    seq=d.seq,
                    dimensions=d.dimensions,
                    rationale=d.rationale,
                    source=d.source,
                    fallback=d.fallback_reason,
                    input_range={"from_seq": d.input_from_seq, "to_seq": d.input_to_seq},
                    expected_outcome=d.expected_outcome,
                    outcome=d.actual_outcome,
                    input_tokens=d.input_tokens,
                    output_tokens=d.output_tokens,
                    latency_ms=d.latency_ms,
                    created_at=d.created_at,
                )
                for d in decisions
            ],
            cursor=context.cursor_seq,
            budget={"token_budget": context.token_budget, "tokens_used": context.tokens_used},
            summary=context.summary,
            outcome=context.outcome,
            postmortem=(
                {
                    "facts": postmortem.facts,
                    "review": postmortem.review,
                    "created_at": postmortem.created_at.isoformat(),
                }
                if postmortem
                else None
            ),
        )
