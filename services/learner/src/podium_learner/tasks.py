"""The learner's Celery tasks and its periodic retention job (Celery beat)."""

from __future__ import annotations

from podium.consumers import register_consumer
from podium.messages import FeedbackReceived, RunCompleted
from podium.queues import Queue, TaskName
from podium.runtime import Runtime
from podium_learner.postmortem import apply_feedback, record_postmortem
from podium_learner.retention import apply_retention


def register_tasks(runtime: Runtime) -> None:
    register_consumer(
        runtime,
        name=TaskName.RUN_COMPLETED.value,
        model=RunCompleted,
        handler=lambda message: record_postmortem(runtime, message),
    )
    register_consumer(
        runtime,
        name=TaskName.FEEDBACK_RECEIVED.value,
        model=FeedbackReceived,
        handler=lambda message: apply_feedback(runtime, message),
    )

    def retention() -> None:
        apply_retention(runtime)

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=TaskName.APPLY_RETENTION.value)(retention)
    runtime.celery.conf.beat_schedule = {
        "podium-retention": {
            "task": TaskName.APPLY_RETENTION.value,
            "schedule": runtime.settings.retention_interval_s,
            "options": {"queue": Queue.LEARNER.value},
        }
    }
