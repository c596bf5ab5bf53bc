"""Which of the calls this worker process runs should stop (their run was cancelled, or the
call itself was ended elsewhere), known without a query per call: one thread asks the store
about every call in flight here, in one query, every ``CHECK_S``. A call's own check is then
a set lookup."""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy import select

from podium.consumers import is_outage
from podium.runtime import Runtime
from podium.store import AgentCall, CallStatus, Run

log = logging.getLogger(__name__)

CHECK_S = 0.25
CHUNK = 500


class StopWatch:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._watched: set[str] = set()
        self._stop: set[str] = set()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def watch(self, call_id: str) -> None:
        with self._lock:
            self._watched.add(call_id)
            self._stop.discard(call_id)
        self._ensure_thread()

    def forget(self, call_id: str) -> None:
        with self._lock:
            self._watched.discard(call_id)
            self._stop.discard(call_id)

    def stopped(self, call_id: str) -> bool:
        return call_id in self._stop

    def check(self) -> None:
        """One pass: the calls among those watched that should stop."""
        with self._lock:
            watched = list(self._watched)
        if not watched:
            return
        stop: set[str] = set()
        with self.runtime.db.read() as session:
            for start in range(0, len(watched), CHUNK):
                ids = watched[start : start + CHUNK]
                rows = session.execute(
                    select(AgentCall.id, AgentCall.status, Run.cancel_requested)
                    .join(Run, Run.id == AgentCall.run_id)
                    .where(AgentCall.id.in_(ids))
                ).all()
                found = {r[0] for r in rows}
                stop.update(i for i in ids if i not in found)
                stop.update(r[0] for r in rows if r[1] != CallStatus.RUNNING or r[2])
        with self._lock:
            self._stop = {c for c in stop if c in self._watched}

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():  # one per process (a prefork child starts its own)
            return
        self._pid = os.getpid()
        threading.Thread(target=self._loop, name="podium-stop-watch", daemon=True).start()

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(CHECK_S):
            try:
                self.check()
            except Exception as exc:
                # The store is down: calls go on; their commit waits for it.
                level = logging.DEBUG if is_outage(exc) else logging.WARNING
                log.log(level, "cancellation check failed: %s", exc)
