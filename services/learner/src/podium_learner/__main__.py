"""``podium-learner``: the learner as its own process. Extra arguments go to Celery."""

from podium.settings import get_settings
from podium.worker_main import run_worker
from podium_learner.embedded import SERVICE


def main() -> None:
    settings = get_settings()
    run_worker(SERVICE, concurrency=settings.learner_concurrency, settings=settings, db_pool_size=4)


if __name__ == "__main__":
    main()
