"""Per-run event streams (DESIGN §2): Redis Streams in production, in-memory when embedded.

Events are replayable from any id (``Last-Event-ID``) until ``event_retention_s`` after the
run's last event. Ids are Redis stream ids (``<ms>-<n>``), opaque to clients.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from podium.settings import Settings

TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


class RunEvent(BaseModel):
    id: str
    type: str
    data: dict[str, Any]


class EventStream(Protocol):
    def publish(self, run_id: str, type_: str, data: dict[str, Any]) -> str: ...

    async def read(self, run_id: str, after: str, block_ms: int) -> list[RunEvent]:
        """Events after id ``after`` ("0" from the start), waiting up to ``block_ms``."""
        ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def _valid_after(after: str) -> str:
    # Anything that is not a stream id replays from the start rather than erroring.
    head, _, tail = after.partition("-")
    if head.isdigit() and (tail == "" or tail.isdigit()):
        return after
    return "0"


class RedisEventStream:
    def __init__(self, settings: Settings) -> None:
        self._prefix = settings.redis_key_prefix
        self._retention = settings.event_retention_s
        self._maxlen = settings.event_stream_maxlen
        # A blocking pool waits for a free connection instead of failing at the cap.
        self._pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=max(settings.worker_concurrency, 16) * 2,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._url = settings.redis_url
        self._aclients: dict[int, aioredis.Redis] = {}

    def key(self, run_id: str) -> str:
        return f"{self._prefix}podium:run:{run_id}:events"

    def publish(self, run_id: str, type_: str, data: dict[str, Any]) -> str:
        key = self.key(run_id)
        fields = {"type": type_, "data": json.dumps(data, default=str)}
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.expire(key, self._retention)
        event_id, _ = pipe.execute()
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def _aclient(self) -> aioredis.Redis:
        # One async client per event loop: connections cannot cross loops.
        loop_id = id(asyncio.get_running_loop())
        client = self._aclients.get(loop_id)
        if client is None:
            client = aioredis.Redis.from_url(
                self._url, max_connections=1000, socket_connect_timeout=2
            )
            self._aclients[loop_id] = client
        return client

    async def read(self, run_id: str, after: str, block_ms: int) -> list[RunEvent]:
        result: Any = await self._aclient().xread(
            {self.key(run_id): _valid_after(after)}, count=500, block=block_ms
        )
        events: list[RunEvent] = []
        for _key, entries in result or []:
            for raw_id, fields in entries:
                events.append(
                    RunEvent(
                        id=raw_id.decode(),
                        type=fields[b"type"].decode(),
                        data=json.loads(fields[b"data"]),
                    )
                )
        return events

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()
        self._pool.disconnect()


class MemoryEventStream:
    """In-process streams for the embedded mode; same id format and semantics as Redis."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, list[RunEvent]] = defaultdict(list)
        self._touched: dict[str, float] = {}
        self._retention = settings.event_retention_s
        self._last_ms = 0
        self._seq = 0

    def _next_id(self) -> str:
        now = int(time.time() * 1000)
        if now <= self._last_ms:
            self._seq += 1
        else:
            self._last_ms, self._seq = now, 0
        return f"{self._last_ms}-{self._seq}"

    def publish(self, run_id: str, type_: str, data: dict[str, Any]) -> str:
        with self._lock:
            event = RunEvent(
                id=self._next_id(), type=type_, data=json.loads(json.dumps(data, default=str))
            )
            self._streams[run_id].append(event)
            now = time.monotonic()
            self._touched[run_id] = now
            self._expire(now)
            return event.id

    def _expire(self, now: float) -> None:
        stale = [r for r, t in self._touched.items() if now - t > self._retention]
        for run_id in stale:
            self._streams.pop(run_id, None)
            self._touched.pop(run_id, None)

    @staticmethod
    def _key(event_id: str) -> tuple[int, int]:
        head, _, tail = event_id.partition("-")
        return int(head), int(tail or 0)

    def _after(self, run_id: str, after: str) -> list[RunEvent]:
        bound = self._key(_valid_after(after))
        with self._lock:
            return [e for e in self._streams.get(run_id, []) if self._key(e.id) > bound]

    async def read(self, run_id: str, after: str, block_ms: int) -> list[RunEvent]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            events = self._after(run_id, after)
            if events or time.monotonic() >= deadline:
                return events
            await asyncio.sleep(0.01)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def make_event_stream(settings: Settings) -> EventStream:
    if settings.mode == "embedded":
        return MemoryEventStream(settings)
    return RedisEventStream(settings)
