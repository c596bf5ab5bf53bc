"""The worker announces its slots to the fair dispatcher, which sizes the pool's window
(agent calls in flight) from the live workers: scaling workers out widens it, a worker that
dies drops out when its announcement expires."""

from __future__ import annotations

import logging
import os
import socket
import threading

from podium.call_queue import send_released
from podium.runtime import Runtime

log = logging.getLogger(__name__)

ANNOUNCE_EVERY_S = 10.0
ANNOUNCE_TTL_S = 30.0


def capacity_loop(runtime: Runtime, stop: threading.Event) -> None:
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    pool = runtime.settings.agents_pool
    while True:
        if runtime.slots > 0:
            try:
                released = runtime.fair.register_worker(
                    pool, worker_id, runtime.slots, ANNOUNCE_TTL_S
                )
                send_released(runtime.celery, pool, released)
            except Exception as exc:  # Redis down: the window falls back to the default
                log.warning("could not announce worker capacity: %s", exc)
        if stop.wait(ANNOUNCE_EVERY_S):
            return
