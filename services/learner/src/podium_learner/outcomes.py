"""Run outcomes and the statistics recomputed from them (DESIGN §4).

Statistics are recomputed from the outcomes of a tenant x class rather than incremented, so a
redelivered or replayed event cannot count twice."""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from podium.learning import classify, is_good
from podium.store import (
    AgentCall,
    Feedback,
    LearningStat,
    OrchestrationDecision,
    Run,
    RunOutcome,
)


def upsert_outcome(session: Session, run: Run) -> RunOutcome:
    """The run's outcome row, created or refreshed from the store (idempotent)."""
    outcome = session.get(RunOutcome, run.id)
    agents = sorted(
        {a for (a,) in session.execute(select(AgentCall.agent).where(AgentCall.run_id == run.id))}
    )
    count, mean = session.execute(
        select(func.count(Feedback.id), func.avg(Feedback.rating)).where(Feedback.run_id == run.id)
    ).one()
    overruled = session.scalars(
        select(OrchestrationDecision.dimensions).where(
            OrchestrationDecision.run_id == run.id,
            OrchestrationDecision.source == "learned policy",
        )
    ).first()
    latency = (run.finished_at - run.created_at).total_seconds() * 1000 if run.finished_at else 0.0
    values: dict[str, Any] = {
        "request_class": run.request_class or classify(run.input),
        "pattern": run.pattern or "direct",
        "agents": agents,
        "status": run.status,
        "feedback_count": int(count or 0),
        "mean_rating": float(mean) if mean is not None else None,
        "cost_usd": float(run.cost_usd or 0.0),
        "latency_ms": latency,
        "overruled_from": (overruled or {}).get("overruled"),
    }
    values["good"] = is_good(run.status, values["mean_rating"])
    if outcome is None:
        outcome = RunOutcome(run_id=run.id, tenant_id=run.tenant_id, **values)
        session.add(outcome)
    else:
        for key, value in values.items():
            setattr(outcome, key, value)
    session.flush()
    return outcome


def recompute_stats(session: Session, tenant_id: str, request_class: str) -> None:
    """Rebuild the tenant x class rows of learning_stats from run_outcomes."""
    outcomes = list(
        session.scalars(
            select(RunOutcome).where(
                RunOutcome.tenant_id == tenant_id, RunOutcome.request_class == request_class
            )
        )
    )
    groups: dict[tuple[str, str], list[RunOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[("pattern", o.pattern)].append(o)
        for agent in o.agents:
            groups[("agent", str(agent))].append(o)
    session.execute(
        delete(LearningStat).where(
            LearningStat.tenant_id == tenant_id, LearningStat.request_class == request_class
        )
    )
    for (dimension, value), rows in sorted(groups.items()):
        rated = [o.mean_rating for o in rows if o.mean_rating is not None]
        session.add(
            LearningStat(
                tenant_id=tenant_id,
                request_class=request_class,
                dimension=dimension,
                value=value,
                samples=len(rows),
                good=sum(1 for o in rows if o.good),
                completed=sum(1 for o in rows if o.status == "completed"),
                feedback_count=sum(o.feedback_count for o in rows),
                mean_rating=fmean(rated) if rated else None,
                mean_cost_usd=fmean(o.cost_usd for o in rows),
                mean_latency_ms=fmean(o.latency_ms for o in rows),
            )
        )
    session.flush()
