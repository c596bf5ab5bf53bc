"""The leases this worker process holds on the calls it runs (``podium.events.CallLeases``),
renewed by one heartbeat thread. A redelivered message of a call whose lease is alive is left
to the worker running it; a call whose lease lapsed was lost with its worker and may be taken
over."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import signals

from podium.runtime import Runtime
from podium.store import new_id

log = logging.getLogger(__name__)


class LeaseHolder:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._held: dict[str, str] = {}  # call_id -> token
        self._lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        signals.worker_shutdown.connect(self._release_all, weak=False)

    def holds(self, call_id: str) -> bool:
        with self._lock:
            return call_id in self._held

    def alive_elsewhere(self, call_id: str) -> bool:
        if self.holds(call_id):
            return True
        try:
            return call_id in self.runtime.leases.alive([call_id])
        except Exception as exc:  # Redis down: cannot tell, so the call may be taken over
            log.warning("lease check of call %s failed: %s", call_id, exc)
            return False

    def hold(self, call_id: str) -> None:
        token = new_id()
        with self._lock:
            self._held[call_id] = token
        self._ensure_heartbeat()
        try:
            self.runtime.leases.acquire(call_id, token)
        except Exception as exc:  # the heartbeat re-creates it once Redis is back
            log.warning("lease of call %s not taken: %s", call_id, exc)

    def drop(self, call_id: str) -> None:
        with self._lock:
            token = self._held.pop(call_id, None)
        if token is None:
            return
        try:
            self.runtime.leases.release(call_id, token)
        except Exception as exc:  # it expires by itself
            log.debug("lease of call %s not released: %s", call_id, exc)

    def _release_all(self, **_: Any) -> None:
        """Worker shutting down: whatever it still holds was cancelled and requeued."""
        for call_id in list(self._held):
            self.drop(call_id)

    def _ensure_heartbeat(self) -> None:
        # One thread per process (a prefork child starts its own).
        if self._heartbeat_pid == os.getpid():
            return
        self._heartbeat_pid = os.getpid()
        threading.Thread(target=self._heartbeat, name="podium-lease-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        interval = self.runtime.settings.call_lease_s / 3
        while True:
            time.sleep(interval)
            with self._lock:
                held = dict(self._held)
            try:
                self.runtime.leases.renew(held)
            except Exception as exc:
                log.warning("lease heartbeat failed (%d calls): %s", len(held), exc)
