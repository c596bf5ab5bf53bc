"""Batching token deltas into the run's event stream (one event per flush, not per token)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from podium.events import EventStream

log = logging.getLogger(__name__)


class DeltaBatcher:
    def __init__(
        self,
        events: EventStream,
        run_id: str,
        call_id: str,
        agent: str,
        flush_ms: float,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.events = events
        self.run_id = run_id
        self.call_id = call_id
        self.agent = agent
        self.flush_s = flush_ms / 1000
        self.on_flush = on_flush
        self._buffer: list[str] = []
        self._last = time.monotonic()
        self.flushes = 0

    def __call__(self, delta: str) -> None:
        self._buffer.append(delta)
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if self._buffer:
            text, self._buffer = "".join(self._buffer), []
            try:
                self.events.publish(
                    self.run_id,
                    "agent_call.delta",
                    {
                        "run_id": self.run_id,
                        "call_id": self.call_id,
                        "agent": self.agent,
                        "text": text,
                    },
                )
                self.flushes += 1
            except Exception as exc:  # a lost delta must not fail the call
                log.warning("delta publish failed for call %s: %s", self.call_id, exc)
        if self.on_flush is not None:
            self.on_flush()
