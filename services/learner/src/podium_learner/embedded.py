"""The learner as a pluggable service (see podium.service)."""

import logging
import threading

from podium.queues import Queue
from podium.runtime import Runtime
from podium.service import ServiceSpec
from podium_learner.retention import apply_retention
from podium_learner.tasks import register_tasks


def retention_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Embedded mode's stand-in for the Celery beat schedule."""
    while not stop.wait(runtime.settings.retention_interval_s):
        try:
            apply_retention(runtime)
        except Exception as exc:  # keep the loop alive; the next round retries
            logging.getLogger(__name__).warning("retention failed: %s", exc)


SERVICE = ServiceSpec(
    name="learner",
    queues=(Queue.LEARNER.value,),
    register_tasks=register_tasks,
    embedded_background=(retention_loop,),
)
