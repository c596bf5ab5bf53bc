"""Start the agent-worker on Celery's gevent pool: monkey-patch first, as Celery's own
``celery`` command does (``celery.maybe_patch_concurrency``), then run the service's entry
point. ``python -m podium_agent_worker --pool gevent`` alone would leave the standard library
unpatched, so every blocking call would stop all greenlets.

    python -m bench.gevent_worker --pool gevent --concurrency 400
"""

from gevent import monkey

monkey.patch_all()

import runpy  # noqa: E402

runpy.run_module("podium_agent_worker", run_name="__main__", alter_sys=True)
