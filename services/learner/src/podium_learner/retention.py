"""Retention of orchestration contexts (docs/architecture.md, "Layers" and "Learning"): a rolling
window, plus selective archiving — contexts with feedback or of failed runs are archived and kept
longer, because they are what delayed learning needs. Post-mortems, outcomes and statistics are
kept."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from podium.runtime import Runtime
from podium.store import OrchestrationContext, Run, RunStatus, utcnow

log = logging.getLogger(__name__)

BATCH = 500


@dataclass(frozen=True)
class RetentionResult:
    archived: int
    deleted: int
    expired_archives: int


def apply_retention(runtime: Runtime) -> RetentionResult:
    settings = runtime.settings
    now = utcnow()
    window = now - timedelta(days=settings.retention_days)
    archive_window = now - timedelta(days=settings.archive_days)
    with runtime.db.session() as session:
        old = session.execute(
            select(OrchestrationContext.id, OrchestrationContext.has_feedback, Run.status)
            .join(Run, Run.id == OrchestrationContext.run_id)
            .where(
                OrchestrationContext.archived.is_(False),
                OrchestrationContext.created_at < window,
                Run.status.in_(
                    [s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)]
                ),
            )
            .limit(BATCH)
        ).all()
        keep = [r.id for r in old if r.has_feedback or r.status == RunStatus.FAILED]
        drop = [r.id for r in old if r.id not in set(keep)]
        if keep:
            session.execute(
                update(OrchestrationContext)
                .where(OrchestrationContext.id.in_(keep))
                .values(archived=True)
            )
        if drop:
            session.execute(delete(OrchestrationContext).where(OrchestrationContext.id.in_(drop)))
        expired = session.execute(
            delete(OrchestrationContext).where(
                OrchestrationContext.archived.is_(True),
                OrchestrationContext.created_at < archive_window,
            )
        ).rowcount  # type: ignore[attr-defined]
    result = RetentionResult(len(keep), len(drop), int(expired or 0))
    if any((result.archived, result.deleted, result.expired_archives)):
        log.info("retention: %s", result)
    return result
