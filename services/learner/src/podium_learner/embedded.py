"""The learner as a pluggable service (see podium.service)."""

from podium.queues import Queue
from podium.service import ServiceSpec
from podium_learner.tasks import register_tasks

SERVICE = ServiceSpec(name="learner", queues=(Queue.LEARNER.value,), register_tasks=register_tasks)
