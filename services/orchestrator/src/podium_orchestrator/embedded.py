"""The orchestrator as a pluggable service (see podium.service)."""

from podium.queues import Queue
from podium.service import ServiceSpec
from podium_orchestrator.tasks import (
    deadline_sweep_loop,
    outbox_sweep_loop,
    reaper_loop,
    register_tasks,
)

SERVICE = ServiceSpec(
    name="orchestrator",
    queues=(Queue.ORCHESTRATOR.value,),
    register_tasks=register_tasks,
    background=(outbox_sweep_loop, deadline_sweep_loop, reaper_loop),
)
