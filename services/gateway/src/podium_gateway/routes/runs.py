"""Runs: admission (202), state, cancel, resume, the event stream and the orchestration
context. Every state change goes through the run lifecycle (podium.lifecycle)."""

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

from podium.decisions import Decision
from podium.events import TERMINAL_EVENT_TYPES, RunEvent
from podium.lifecycle import runs as run_lifecycle
from podium.metrics import TENANT_RUNS, tenant_label
from podium.patterns import cached_patterns
from podium.runtime import Runtime
from podium.store import (
    TERMINAL_RUN_STATUSES,
    Agent,
    AgentCall,
    OrchestrationContext,
    OrchestrationDecision,
    PostMortem,
    Run,
    RunStatus,
    new_id,
    tenant_session,
    utcnow,
)
from podium_gateway.admission import extend_run, release_run, reserve_run
from podium_gateway.auth import Principal, RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS, ApiError, error_responses, not_found
from podium_gateway.routes.health import Available
from podium_gateway.schemas import (
    DecisionOut,
    OrchestrationOut,
    RunAccepted,
    RunCreate,
    RunId,
    RunOut,
    ThreadId,
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
    thread_id: ThreadId,
    body: RunCreate,
    principal: TenantDep,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
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
    settings = runtime.settings
    if body.agent is not None:
        with tenant_session(runtime.db, principal.tenant_id) as session:
            known = session.scalars(select(Agent.id).where(Agent.name == body.agent)).first()
        if known is None:
            raise ApiError(422, "unknown_agent", f"agent {body.agent!r} is not defined")
    run_id = new_id()
    # The run reserves its own token and cost caps from the tenant's budgets (or what is
    # left, if less), before its transaction: its caps are then what it may spend.
    admission = reserve_run(
        runtime,
        principal,
        run_id,
        int(_capped(body.max_tokens, settings.run_max_tokens)),
        _capped(body.max_cost_usd, settings.run_max_cost_usd),
    )
    request = run_lifecycle.RunRequest(
        input=body.input,
        agent=body.agent,
        pattern=body.pattern,
        multitask=body.multitask,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        deadline_at=utcnow() + timedelta(seconds=_capped(body.deadline_s, settings.run_deadline_s)),
        limits={
            "tokens": admission.tokens,
            "cost_usd": admission.cost_usd,
            "iterations": int(_capped(body.max_iterations, settings.run_max_iterations)),
        },
    )
    try:
        admitted = run_lifecycle.admit(
            runtime,
            principal.tenant_id,
            thread_id,
            request,
            run_id=run_id,
            token_budget=settings.orchestrator_token_budget,
        )
    except BaseException:
        # Nothing was written: give back the quota this attempt took.
        release_run(runtime, principal, run_id)
        raise
    if not admitted.created:
        release_run(runtime, principal, run_id)  # the input answered a waiting run
        return RunAccepted(id=admitted.run_id, status=admitted.status, thread_id=thread_id)
    TENANT_RUNS.labels(tenant_label(principal.tenant_id)).inc()
    _publish(runtime, run_id, "run.queued", {"run_id": run_id, "thread_id": thread_id})
    if admitted.interrupted_run_id:
        _publish(
            runtime,
            admitted.interrupted_run_id,
            "run.cancel_requested",
            {"run_id": admitted.interrupted_run_id, "by_run": run_id},
        )
    return RunAccepted(id=run_id, status=admitted.status, thread_id=thread_id)


def _capped(requested: float | None, deployment_max: float) -> float:
    return deployment_max if requested is None else min(requested, deployment_max)


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
def get_run(run_id: RunId, principal: TenantDep, runtime: RuntimeDep) -> RunOut:
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
    _available: Available, run_id: RunId, principal: TenantDep, runtime: RuntimeDep
) -> RunAccepted:
    """Ask a run to stop; in-flight calls stop at their next step. Idempotent; a decision
    being made meanwhile is recorded as superseded and not executed."""
    status = run_lifecycle.cancel(runtime, principal.tenant_id, run_id)
    with tenant_session(runtime.db, principal.tenant_id) as session:
        thread_id = session.scalar(select(Run.thread_id).where(Run.id == run_id))
    _publish(runtime, run_id, "run.cancel_requested", {"run_id": run_id})
    return RunAccepted(id=run_id, status=status, thread_id=str(thread_id))


@router.post(
    "/v1/runs/{run_id}/resume",
    status_code=202,
    response_model=RunAccepted,
    responses=error_responses(409, 429),
)
def resume_run(
    _available: Available, run_id: RunId, principal: TenantDep, runtime: RuntimeDep
) -> RunAccepted:
    """Continue a run held by its token, cost or iteration cap; the caps are doubled."""
    with tenant_session(runtime.db, principal.tenant_id) as session:
        row = session.execute(
            select(Run.status, Run.limits, Run.version, Run.thread_id).where(Run.id == run_id)
        ).first()
    if row is None:
        raise not_found("run", run_id)
    status, limits, version, thread_id = row
    if status != RunStatus.BUDGET_HOLD:
        raise ApiError(
            409,
            "not_on_hold",
            f"only a run in budget_hold can be resumed; this one is {status}",
            run_status=status,
        )
    limits = dict(limits or {})
    # The doubled caps are reserved from the tenant's budgets first (429 if not).
    extend_run(
        runtime,
        principal,
        run_id,
        int(limits.get("tokens") or 0),
        float(limits.get("cost_usd") or 0.0),
    )
    for key in ("tokens", "cost_usd", "iterations"):
        if limits.get(key) is not None:
            limits[key] = limits[key] * 2
    limits["tokens"] = int(limits.get("tokens", 0)) or None
    limits["iterations"] = int(limits.get("iterations", 0)) or None
    run_lifecycle.resume(runtime, principal.tenant_id, run_id, version=version, limits=limits)
    _publish(runtime, run_id, "run.resumed", {"run_id": run_id, "limits": limits})
    return RunAccepted(id=run_id, status=RunStatus.RUNNING, thread_id=thread_id)


def _sse(event: RunEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


@router.get(
    "/v1/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
def run_events(
    run_id: RunId,
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


def _decision_out(d: Decision) -> DecisionOut:
    assert d.created_at is not None  # read from the store
    return DecisionOut(
        seq=d.seq,
        dimensions=d.dimensions_json(),
        rationale=d.rationale,
        source=d.source.value,
        fallback=d.fallback_reason,
        input_range={"from_seq": d.input_from_seq, "to_seq": d.input_to_seq},
        expected_outcome=d.expected_outcome,
        outcome=d.outcome.as_dict() if d.outcome else None,
        input_tokens=d.usage.input_tokens,
        output_tokens=d.usage.output_tokens,
        latency_ms=d.usage.latency_ms,
        created_at=d.created_at,
    )


@router.get("/v1/runs/{run_id}/orchestration", response_model=OrchestrationOut)
def get_orchestration(run_id: RunId, principal: TenantDep, runtime: RuntimeDep) -> OrchestrationOut:
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
            decisions=[_decision_out(Decision.from_row(d)) for d in decisions],
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
