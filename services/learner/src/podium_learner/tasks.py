"""The learner's Celery tasks and its periodic retention job (Celery beat)."""

from __future__ import annotations

from collections.abc import Sequence

from podium.consumers import register_consumer
from podium.messages import FeedbackReceived, RunCompleted
from podium.queues import Queue, TaskName
from podium.runtime import Runtime
from podium_learner.batching import Batcher
from podium_learner.postmortem import (
    ReviewDue,
    add_review,
    apply_feedback,
    record_postmortems,
)
from podium_learner.retention import apply_retention


def register_tasks(runtime: Runtime) -> None:
    settings = runtime.settings

    def postmortems(messages: Sequence[RunCompleted]) -> list[ReviewDue | bool | None]:
        done = record_postmortems(runtime, messages)
        return [done[m.id] for m in messages]

    # As many events per batch as the process has consumer threads to hold them.
    batcher = Batcher(
        postmortems,
        max_items=settings.learner_concurrency,
        wait_s=settings.learner_batch_wait_s,
        name="podium-postmortems",
    )

    def run_completed(message: RunCompleted) -> bool:
        due = batcher.submit(message)
        if isinstance(due, ReviewDue):
            # In the task's own thread: reviews of a batch run side by side, and a slow LLM
            # never holds up the next batch's facts.
            add_review(runtime, due)
        return due is not None

    register_consumer(
        runtime,
        name=TaskName.RUN_COMPLETED.value,
        model=RunCompleted,
        handler=run_completed,
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
