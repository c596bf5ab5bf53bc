"""Delayed user feedback on runs, and the tenant's insights (docs/architecture.md, "Learning" and
"HTTP API")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from podium.learning import REQUEST_CLASSES, Posterior
from podium.messages import FeedbackReceived
from podium.metrics import LEARNER_FEEDBACK
from podium.store import (
    TERMINAL_RUN_STATUSES,
    EventKind,
    Feedback,
    LearningStat,
    OrchestrationDecision,
    PostMortem,
    Run,
    RunOutcome,
    ThreadEvent,
    tenant_session,
)
from podium_gateway.auth import RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS, ApiError, error_responses, not_found
from podium_gateway.schemas import RunId, Strict

router = APIRouter(tags=["learning"], responses=API_ERRORS)


class FeedbackIn(Strict):
    rating: int = Field(ge=1, le=5, description="1 (bad) to 5 (excellent).")
    comment: str | None = Field(default=None, max_length=4000)
    message_id: str | None = Field(
        default=None, max_length=32, description="Rate one agent message of the run."
    )


class FeedbackOut(BaseModel):
    id: str
    run_id: str
    rating: int
    comment: str | None
    message_id: str | None
    created_at: datetime


@router.post(
    "/v1/runs/{run_id}/feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses={
        200: {"model": FeedbackOut, "description": "The same feedback, given again."},
        **error_responses(409),
    },
)
def post_feedback(
    run_id: RunId, body: FeedbackIn, principal: TenantDep, runtime: RuntimeDep, response: Response
) -> FeedbackOut:
    """Rate a finished run, or one of its messages. One rating per run, API key and message:
    repeating it returns the same feedback (200); a different one for the same target is 409."""
    dedupe = f"{run_id}:{principal.key_id}:{body.message_id or '-'}"
    with runtime.transaction(principal.tenant_id) as tx:
        session = tx.session
        run = session.scalars(select(Run).where(Run.id == run_id)).one_or_none()
        if run is None:
            raise not_found("run", run_id)
        existing = session.scalars(select(Feedback).where(Feedback.dedupe_key == dedupe)).first()
        if existing is not None:
            if (existing.rating, existing.comment) != (body.rating, body.comment):
                raise ApiError(
                    409,
                    "feedback_exists",
                    "this key already rated this run (or message) differently",
                    feedback_id=existing.id,
                )
            response.status_code = 200
            return FeedbackOut.model_validate(existing, from_attributes=True)
        if run.status not in TERMINAL_RUN_STATUSES:
            raise ApiError(
                409, "run_not_finished", f"the run is still {run.status}; rate it when it ends"
            )
        if body.message_id is not None:
            message = session.scalars(
                select(ThreadEvent.id).where(
                    ThreadEvent.id == body.message_id,
                    ThreadEvent.run_id == run_id,
                    ThreadEvent.kind == EventKind.AGENT_MESSAGE.value,
                )
            ).first()
            if message is None:
                raise ApiError(
                    422,
                    "unknown_message",
                    f"message {body.message_id!r} is not an answer of this run",
                )
        feedback = Feedback(
            tenant_id=principal.tenant_id,
            run_id=run_id,
            message_id=body.message_id,
            api_key_id=principal.key_id,
            rating=body.rating,
            comment=body.comment,
            dedupe_key=dedupe,
        )
        session.add(feedback)
        session.flush()
        tx.send(
            FeedbackReceived(
                run_id=run_id,
                tenant_id=principal.tenant_id,
                feedback_id=feedback.id,
                rating=body.rating,
            )
        )
        out = FeedbackOut.model_validate(feedback, from_attributes=True)
    LEARNER_FEEDBACK.labels(str(body.rating)).inc()
    return out


def _stat(s: LearningStat) -> dict[str, Any]:
    post = Posterior(s.good, s.samples)
    return {
        "value": s.value,
        "samples": s.samples,
        "good": s.good,
        "completed": s.completed,
        "feedback_count": s.feedback_count,
        "mean_rating": s.mean_rating,
        "posterior_mean": round(post.mean, 4),
        "lower_bound": round(post.lower_bound, 4),
        "mean_cost_usd": round(s.mean_cost_usd, 6),
        "mean_latency_ms": round(s.mean_latency_ms, 1),
    }


@router.get("/v1/insights")
def insights(
    principal: TenantDep,
    runtime: RuntimeDep,
    request_class: Annotated[
        str | None, Query(description=f"One of {', '.join(REQUEST_CLASSES)}")
    ] = None,
) -> dict[str, Any]:
    """What the learner knows about this tenant: per request class, the record of each pattern
    and agent (with a Beta posterior), how often the learned policy overruled a choice, and
    the newest post-mortem lessons."""
    if request_class is not None and request_class not in REQUEST_CLASSES:
        raise ApiError(422, "unknown_request_class", f"choose one of {list(REQUEST_CLASSES)}")
    with tenant_session(runtime.db, principal.tenant_id) as session:
        query = select(LearningStat).order_by(
            LearningStat.request_class, LearningStat.dimension, LearningStat.value
        )
        if request_class:
            query = query.where(LearningStat.request_class == request_class)
        classes: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for s in session.scalars(query):
            entry = classes.setdefault(s.request_class, {"patterns": [], "agents": []})
            entry["patterns" if s.dimension == "pattern" else "agents"].append(_stat(s))
        overrules = session.scalar(
            select(func.count())
            .select_from(OrchestrationDecision)
            .where(OrchestrationDecision.source == "learned policy")
        )
        feedback = session.execute(select(func.count(Feedback.id), func.avg(Feedback.rating))).one()
        lessons = session.execute(
            select(PostMortem.run_id, PostMortem.review, RunOutcome.request_class)
            .join(RunOutcome, RunOutcome.run_id == PostMortem.run_id, isouter=True)
            .order_by(PostMortem.created_at.desc())
            .limit(10)
        ).all()
        postmortems = session.scalar(select(func.count()).select_from(PostMortem))
    return {
        "classes": [{"request_class": c, **v} for c, v in classes.items()],
        "policy": {"overrules": int(overrules or 0)},
        "feedback": {
            "count": int(feedback[0] or 0),
            "mean_rating": float(feedback[1]) if feedback[1] else None,
        },
        "postmortems": int(postmortems or 0),
        "lessons": [
            {
                "run_id": r.run_id,
                "request_class": r.request_class,
                "lessons": (r.review or {}).get("lessons", []),
            }
            for r in lessons
            if (r.review or {}).get("lessons")
        ],
    }
