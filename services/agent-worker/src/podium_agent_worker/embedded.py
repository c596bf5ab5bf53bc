"""The agent worker as a pluggable service (see podium.service)."""

from podium.queues import Queue
from podium.service import ServiceSpec
from podium_agent_worker.capacity import capacity_loop
from podium_agent_worker.tasks import register_tasks

SERVICE = ServiceSpec(
    name="agent-worker",
    queues=(Queue.AGENTS_DEFAULT.value,),
    register_tasks=register_tasks,
    background=(capacity_loop,),
)
