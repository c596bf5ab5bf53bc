"""Per-run event streams (docs/architecture.md, "Services and queues"): Redis Streams in production,
in-memory when embedded.

Events are replayable from any id (``Last-Event-ID``) until ``event_retention_s`` after the
run's last event. Ids are Redis stream ids (``<ms>-<n>``), opaque to clients.

Also here, since they live in the same Redis: the leases of running agent calls. A worker
holds a lease on each call it executes and renews it while alive; a call whose lease lapsed
was lost with its worker (the orchestrator's reaper re-sends it), and a redelivered message
of a call whose lease is alive is left to the worker executing it.
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
        # Stream key -> when this process last set its TTL (monotonic).
        self._ttl_set: dict[str, float] = {}

    def key(self, run_id: str) -> str:
        return f"{self._prefix}podium:run:{run_id}:events"

    def publish(self, run_id: str, type_: str, data: dict[str, Any]) -> str:
        key = self.key(run_id)
        fields = {"type": type_, "data": json.dumps(data, default=str)}
        if not self._needs_ttl(key, type_):
            # Most events (token deltas above all): one command.
            added = self._client.xadd(key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            return added.decode() if isinstance(added, bytes) else str(added)
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.expire(key, self._retention)
        event_id, _ = pipe.execute()
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def _needs_ttl(self, key: str, type_: str) -> bool:
        """The stream's TTL is set by a process's first event on it, refreshed at half its
        life, and set again by the run's terminal event, so a stream stays replayable for
        ``event_retention_s`` after the run ends without an EXPIRE per event."""
        now = time.monotonic()
        if type_ not in TERMINAL_EVENT_TYPES:
            since = self._ttl_set.get(key)
            if since is not None and now - since < self._retention / 2:
                return False
        if len(self._ttl_set) > 50_000:
            self._ttl_set.clear()
        self._ttl_set[key] = now
        return True

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


class CallLeases(Protocol):
    """Leases on running agent calls, ``call_lease_s`` long, renewed by their worker."""

    def acquire(self, call_id: str, token: str) -> None: ...

    def renew(self, held: dict[str, str]) -> None:
        """Extend (or re-create, after a Redis restart) the leases ``{call_id: token}``
        still held by their token; a lease taken over by another token is left alone."""
        ...

    def release(self, call_id: str, token: str) -> None: ...

    def alive(self, call_ids: list[str]) -> set[str]:
        """The calls among ``call_ids`` whose lease is held."""
        ...

    def close(self) -> None: ...


# SET the lease if it is ours or free; a lease another token took over is not overwritten.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisCallLeases:
    def __init__(self, settings: Settings) -> None:
        self._prefix = settings.redis_key_prefix
        self._ttl_ms = int(settings.call_lease_s * 1000)
        self._pool = redis.ConnectionPool.from_url(
            settings.redis_url, max_connections=32, socket_timeout=2, socket_connect_timeout=2
        )
        self._client = redis.Redis(connection_pool=self._pool)

    def key(self, call_id: str) -> str:
        return f"{self._prefix}podium:lease:call:{call_id}"

    def acquire(self, call_id: str, token: str) -> None:
        self._client.set(self.key(call_id), token, px=self._ttl_ms)

    def renew(self, held: dict[str, str]) -> None:
        if not held:
            return
        pipe = self._client.pipeline(transaction=False)
        for call_id, token in held.items():
            pipe.eval(_RENEW, 1, self.key(call_id), token, self._ttl_ms)
        pipe.execute()

    def release(self, call_id: str, token: str) -> None:
        self._client.eval(_RELEASE, 1, self.key(call_id), token)

    def alive(self, call_ids: list[str]) -> set[str]:
        if not call_ids:
            return set()
        values = self._client.mget([self.key(c) for c in call_ids])
        return {c for c, v in zip(call_ids, values, strict=True) if v is not None}

    def close(self) -> None:
        self._client.close()
        self._pool.disconnect()


class MemoryCallLeases:
    """In-process leases for the embedded mode (one process: a lease dies with it)."""

    def __init__(self, settings: Settings) -> None:
        self._ttl = settings.call_lease_s
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}

    def acquire(self, call_id: str, token: str) -> None:
        with self._lock:
            self._leases[call_id] = (token, time.monotonic() + self._ttl)

    def renew(self, held: dict[str, str]) -> None:
        now = time.monotonic()
        with self._lock:
            for call_id, token in held.items():
                current = self._leases.get(call_id)
                if current is None or current[0] == token or current[1] < now:
                    self._leases[call_id] = (token, now + self._ttl)

    def release(self, call_id: str, token: str) -> None:
        with self._lock:
            if self._leases.get(call_id, ("", 0.0))[0] == token:
                del self._leases[call_id]

    def alive(self, call_ids: list[str]) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {c for c in call_ids if self._leases.get(c, ("", 0.0))[1] > now}

    def close(self) -> None:
        pass


def call_lost_error(attempts: int) -> dict[str, Any]:
    """The error of a call given up after its worker was lost ``attempts`` times."""
    return {
        "code": "call_lost",
        "message": (
            f"the agent call was started {attempts} time(s) and its worker was lost each time "
            "(killed or unreachable); it was not retried again"
        ),
        "attempts": attempts,
    }


def make_call_leases(settings: Settings) -> CallLeases:
    if settings.mode == "embedded":
        return MemoryCallLeases(settings)
    return RedisCallLeases(settings)


def make_event_stream(settings: Settings) -> EventStream:
    if settings.mode == "embedded":
        return MemoryEventStream(settings)
    return RedisEventStream(settings)
