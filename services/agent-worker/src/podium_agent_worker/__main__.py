"""``podium-agent-worker``: one agent-worker pool as its own process.

The pool's queue is ``agents.<PODIUM_AGENTS_POOL>``; extra arguments go to Celery."""

from podium.queues import agents_queue
from podium.settings import get_settings
from podium.worker_main import run_worker
from podium_agent_worker.embedded import SERVICE


def main() -> None:
    settings = get_settings()
    run_worker(
        SERVICE,
        concurrency=settings.worker_concurrency,
        queues=(agents_queue(settings.agents_pool),),
        settings=settings,
    )


if __name__ == "__main__":
    main()
