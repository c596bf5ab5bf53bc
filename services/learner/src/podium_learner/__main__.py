"""``podium-learner``: the learner as its own process. Extra arguments go to Celery.

It runs Celery beat embedded (``--beat``) for the retention schedule: run exactly one learner
with it, and set ``PODIUM_LEARNER_BEAT=false`` on any extra replica."""

import os
import sys
import tempfile

from podium.settings import get_settings
from podium.worker_main import run_worker
from podium_learner.embedded import SERVICE


def main() -> None:
    settings = get_settings()
    schedule = os.path.join(tempfile.gettempdir(), f"podium-learner-beat-{os.getpid()}")
    beat = ["--beat", "--schedule", schedule] if settings.learner_beat else []
    run_worker(
        SERVICE,
        concurrency=settings.learner_concurrency,
        settings=settings,
        db_pool_size=4,
        argv=[*beat, *sys.argv[1:]],
    )


if __name__ == "__main__":
    main()
