"""Bare Celery baselines measured once per benchmark run and shared by the scenarios."""

from __future__ import annotations

from typing import Any

from bench import baseline_celery
from bench.harness import BenchSession, Mode, log


class Baselines:
    def __init__(self, session: BenchSession, mode: Mode) -> None:
        self.session = session
        self.mode = mode
        self._broker: dict[str, dict[str, Any]] = {}
        self._inflight: dict[tuple[str, int, float], dict[str, Any]] = {}

    def broker(self, name: str) -> dict[str, Any]:
        """No-op drain rate and round trip of bare Celery on the broker ``name``."""
        if name not in self._broker:
            self._broker[name] = baseline_celery.measure(self.session, name, not self.mode.full)
        return self._broker[name]

    def inflight(
        self, pool: str, concurrency: int, latency_s: float, rounds: int
    ) -> dict[str, Any]:
        """Bare Celery sleeps of ``latency_s`` on one worker with ``concurrency`` slots."""
        key = (pool, concurrency, latency_s)
        if key not in self._inflight:
            base = baseline_celery.Baseline(self.session, "redis")
            try:
                log(f"bare Celery in-flight: {pool} c={concurrency}")
                self._inflight[key] = base.inflight(pool, concurrency, latency_s, rounds)
            finally:
                base.close()
        return self._inflight[key]

    def as_dict(self) -> dict[str, Any]:
        return {"brokers": self._broker}
