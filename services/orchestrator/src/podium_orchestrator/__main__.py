"""``podium-orchestrator``: the orchestrator as its own process. Extra arguments go to Celery."""

from podium.settings import get_settings
from podium.worker_main import run_worker
from podium_orchestrator.embedded import SERVICE


def main() -> None:
    settings = get_settings()
    run_worker(SERVICE, concurrency=settings.orchestrator_concurrency, settings=settings)


if __name__ == "__main__":
    main()
