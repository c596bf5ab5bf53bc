"""Fair dispatch of agent calls across tenants.

Per agent pool, items ("call_id:run_id", opaque here) are queued per tenant and released
for dispatch under two limits: a global window (the summed capacity of the pool's live
workers, ``default_window`` while none has registered) and a per-tenant in-flight cap.
Across tenants, a free slot goes to the tenant with the fewest items in flight per unit of
weight (max-min fair shares of the window); ties go to the tenant that has waited longest
since it was last served or started waiting. Turns persist between calls, so equal tenants
alternate and no tenant gains from call order. Deficit round robin, which this replaced,
served a ring in turn whatever each tenant held: a noisy tenant one slot below its cap got
every other freed slot while quiet tenants' calls waited. On Redis the next tenant is the
head of a sorted set, so a pick costs O(log tenants), however many tenants wait.

Every operation that frees or adds work also picks, and returns the items the caller must
dispatch now; nothing else ever dispatches, so an item is handed out exactly once.

Two interchangeable backends: Redis (Lua scripts, atomic across the orchestrator and worker
processes, on the Redis server's clock) and memory (a lock; the embedded mode).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from podium.settings import Settings

# Most items plus fruitless tenant visits in one pick, so one script never holds Redis for
# long; the next pick resumes where this one stopped.
PICK_LIMIT = 1000


class FairDispatcher(Protocol):
    """Fair scheduler of one deployment's agent calls; every pool is independent."""

    def submit(
        self, pool: str, tenant_id: str, item: str, *, tenant_cap: int, weight: int = 1
    ) -> list[str]:
        """Queue ``item`` (a no-op if already queued or in flight), store the tenant's cap
        (0 = none) and weight, then pick. Returns the items to dispatch now, in order."""
        ...

    def complete(self, pool: str, item: str) -> list[str]:
        """The item finished or was cancelled: free its slot or drop it from its queue
        (idempotent), then pick. Returns the items to dispatch now."""
        ...

    def pick(self, pool: str) -> list[str]:
        """Release what the window and caps allow now (after a capacity or cap change)."""
        ...

    def state(self, pool: str, items: list[str]) -> dict[str, str]:
        """``"queued"``, ``"inflight"`` or ``"unknown"`` for each item."""
        ...

    def inflight_since(self, pool: str, item: str) -> float | None:
        """When the item was picked (epoch seconds, server clock), None if not in flight."""
        ...

    def inflight_items(self, pool: str) -> dict[str, float]:
        """Every item in flight and when it was picked (for the reaper: slots of calls that
        ended without completing them are freed)."""
        ...

    def register_worker(self, pool: str, worker_id: str, capacity: int, ttl_s: float) -> list[str]:
        """Announce ``capacity`` slots for ``ttl_s`` seconds (``ttl_s <= 0`` withdraws them),
        then pick. Returns the items to dispatch now."""
        ...

    def snapshot(self, pool: str) -> dict[str, Any]:
        """``{"window": n, "inflight": n, "tenants": {tenant: {"queued": n, "inflight": n,
        "cap": n, "weight": n}}}`` for tenants with anything queued or in flight."""
        ...

    def close(self) -> None: ...


def _check(tenant_cap: int, weight: int) -> None:
    if tenant_cap < 0:
        raise ValueError(f"tenant_cap must be >= 0, got {tenant_cap}")
    if weight < 1:
        raise ValueError(f"weight must be >= 1, got {weight}")


# --- Redis -------------------------------------------------------------------------------

# Shared by every script. ARGV[1] is the pool's key base, ARGV[2] the default window. Keys are
# built here from tenant ids, so this needs one Redis (not a cluster).
_LIB = """
local B = ARGV[1]
local DEFAULT_WINDOW = tonumber(ARGV[2])
local LIMIT = tonumber(ARGV[3])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Summed capacity of live workers; expired ones are dropped on the way.
local function window()
  local now = now_ms()
  local w = redis.call('HGETALL', B .. 'workers')
  local sum, alive = 0, false
  for i = 1, #w, 2 do
    local cap, exp = string.match(w[i + 1], '^(%d+)|(%d+)$')
    if cap and tonumber(exp) > now then
      sum = sum + tonumber(cap)
      alive = true
    else
      redis.call('HDEL', B .. 'workers', w[i])
    end
  end
  if alive then return sum end
  return DEFAULT_WINDOW
end

local function conf(tenant)
  local c = redis.call('HGET', B .. 'conf', tenant)
  if not c then return 0, 1 end
  local cap, weight = string.match(c, '^(%d+)|(%d+)$')
  return tonumber(cap), tonumber(weight)
end

-- A tenant with nothing queued or in flight is forgotten, so keys stay bounded.
local function forget_if_idle(tenant)
  if redis.call('LLEN', B .. 'q:' .. tenant) > 0 then return end
  if redis.call('HEXISTS', B .. 'tin', tenant) == 0 then redis.call('HDEL', B .. 'conf', tenant) end
end

-- Tenants with queued items have a turn (a counter value: lower = served longer ago). Those
-- that may take a slot now (below their cap) sit in the sorted set 'elig', scored by items in
-- flight per unit of weight; equal scores sort by member, '<16-digit turn>|tenant', so by
-- turn. The head of 'elig' is therefore the next tenant to serve, found in O(log n).
local function entry(turn, tenant)
  return string.format('%016d', tonumber(turn)) .. '|' .. tenant
end

-- File the tenant again after its queue, its items in flight or its limits changed.
local function refile(tenant)
  local turn = redis.call('HGET', B .. 'turn', tenant)
  if redis.call('LLEN', B .. 'q:' .. tenant) == 0 then
    if turn then
      redis.call('ZREM', B .. 'elig', entry(turn, tenant))
      redis.call('HDEL', B .. 'turn', tenant)
    end
    return
  end
  if not turn then
    -- joins behind every tenant already waiting
    turn = redis.call('INCR', B .. 'seq')
    redis.call('HSET', B .. 'turn', tenant, turn)
  end
  local cap, weight = conf(tenant)
  local tin = tonumber(redis.call('HGET', B .. 'tin', tenant) or '0')
  if cap == 0 or tin < cap then
    redis.call('ZADD', B .. 'elig', string.format('%.17g', tin / weight), entry(turn, tenant))
  else
    redis.call('ZREM', B .. 'elig', entry(turn, tenant))  -- at its cap: keeps its turn
  end
end

-- State left by the round-robin version (a 'ring' list of tenants) is converted once.
local function migrate()
  if redis.call('EXISTS', B .. 'ring') == 0 then return end
  local ring = redis.call('LRANGE', B .. 'ring', 0, -1)
  redis.call('DEL', B .. 'ring', B .. 'deficit')
  for _, tenant in ipairs(ring) do refile(tenant) end
end

local function pick()
  local out = {}
  local win = window()
  local inflight = redis.call('HLEN', B .. 'inflight')
  local t = redis.call('TIME')
  local stamp = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  while inflight < win and #out < LIMIT do
    local head = redis.call('ZRANGE', B .. 'elig', 0, 0)
    if #head == 0 then break end
    local tenant = string.match(head[1], '^%d+|(.*)$')
    redis.call('ZREM', B .. 'elig', head[1])
    local item = redis.call('LPOP', B .. 'q:' .. tenant)
    if item then
      redis.call('HDEL', B .. 'member', item)
      redis.call('HSET', B .. 'inflight', item, tenant .. '|' .. stamp)
      redis.call('HINCRBY', B .. 'tin', tenant, 1)
      -- served: behind every other waiting tenant for ties
      redis.call('HSET', B .. 'turn', tenant, redis.call('INCR', B .. 'seq'))
      out[#out + 1] = item
      inflight = inflight + 1
    end
    refile(tenant)
  end
  return out
end
"""

# ARGV[4..7]: tenant, item, cap, weight.
_SUBMIT = (
    _LIB
    + """
migrate()
local tenant, item = ARGV[4], ARGV[5]
redis.call('HSET', B .. 'conf', tenant, ARGV[6] .. '|' .. ARGV[7])
local known = redis.call('HEXISTS', B .. 'inflight', item)
known = known + redis.call('HEXISTS', B .. 'member', item)
if known == 0 then
  redis.call('HSET', B .. 'member', item, tenant)
  redis.call('RPUSH', B .. 'q:' .. tenant, item)
end
refile(tenant)  -- also when only the cap or weight changed
return pick()
"""
)

# ARGV[4]: item.
_COMPLETE = (
    _LIB
    + """
migrate()
local item = ARGV[4]
local v = redis.call('HGET', B .. 'inflight', item)
if v then
  local tenant = string.match(v, '^(.*)|[^|]*$')
  redis.call('HDEL', B .. 'inflight', item)
  if redis.call('HINCRBY', B .. 'tin', tenant, -1) <= 0 then
    redis.call('HDEL', B .. 'tin', tenant)
  end
  refile(tenant)
  forget_if_idle(tenant)
else
  local tenant = redis.call('HGET', B .. 'member', item)
  if tenant then
    redis.call('HDEL', B .. 'member', item)
    redis.call('LREM', B .. 'q:' .. tenant, 1, item)
    refile(tenant)
    forget_if_idle(tenant)
  end
end
return pick()
"""
)

_PICK = _LIB + "\nmigrate()\nreturn pick()\n"

# ARGV[4..6]: worker id, capacity, ttl in ms (<= 0 withdraws the worker).
_REGISTER = (
    _LIB
    + """
migrate()
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('HSET', B .. 'workers', ARGV[4], ARGV[5] .. '|' .. (now_ms() + ttl))
else
  redis.call('HDEL', B .. 'workers', ARGV[4])
end
return pick()
"""
)

# Flat reply: window, inflight, then tenant, queued, inflight, cap, weight per tenant.
_SNAPSHOT = (
    _LIB
    + """
migrate()
local out = {window(), redis.call('HLEN', B .. 'inflight')}
local seen = {}
local tenants = redis.call('HKEYS', B .. 'turn')
local tin = redis.call('HKEYS', B .. 'tin')
for i = 1, #tin do tenants[#tenants + 1] = tin[i] end
for _, tenant in ipairs(tenants) do
  if not seen[tenant] then
    seen[tenant] = true
    local cap, weight = conf(tenant)
    out[#out + 1] = tenant
    out[#out + 1] = redis.call('LLEN', B .. 'q:' .. tenant)
    out[#out + 1] = tonumber(redis.call('HGET', B .. 'tin', tenant) or '0')
    out[#out + 1] = cap
    out[#out + 1] = weight
  end
end
return out
"""
)


class RedisFairDispatcher:
    """Shared state in Redis; every change is one Lua script, atomic across processes."""

    def __init__(
        self, url: str, prefix: str = "", default_window: int = 256, *, max_connections: int = 64
    ) -> None:
        self._prefix = prefix
        self._default_window = default_window
        # A blocking pool waits for a free connection instead of failing at the cap.
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=2,
            # Connection options live on the pool: Redis(decode_responses=...) would be ignored.
            decode_responses=True,
        )
        self._r = redis.Redis(connection_pool=self._pool)
        self._submit = self._r.register_script(_SUBMIT)
        self._complete = self._r.register_script(_COMPLETE)
        self._pick = self._r.register_script(_PICK)
        self._register = self._r.register_script(_REGISTER)
        self._snapshot = self._r.register_script(_SNAPSHOT)

    def key(self, pool: str) -> str:
        """Base of every key of ``pool``."""
        return f"{self._prefix}podium:fair:{pool}:"

    def _run(self, script: Any, pool: str, *args: object) -> Any:
        return script(args=[self.key(pool), self._default_window, PICK_LIMIT, *args])

    def submit(
        self, pool: str, tenant_id: str, item: str, *, tenant_cap: int, weight: int = 1
    ) -> list[str]:
        _check(tenant_cap, weight)
        return list(self._run(self._submit, pool, tenant_id, item, tenant_cap, weight))

    def complete(self, pool: str, item: str) -> list[str]:
        return list(self._run(self._complete, pool, item))

    def pick(self, pool: str) -> list[str]:
        return list(self._run(self._pick, pool))

    def state(self, pool: str, items: list[str]) -> dict[str, str]:
        base = self.key(pool)
        # One transaction: an item picked between two reads would look "unknown".
        with self._r.pipeline(transaction=True) as pipe:
            for item in items:
                pipe.hexists(f"{base}inflight", item)
                pipe.hexists(f"{base}member", item)
            flags = pipe.execute()
        result: dict[str, str] = {}
        for i, item in enumerate(items):
            inflight, queued = flags[2 * i], flags[2 * i + 1]
            result[item] = "inflight" if inflight else "queued" if queued else "unknown"
        return result

    def inflight_since(self, pool: str, item: str) -> float | None:
        value = self._r.hget(f"{self.key(pool)}inflight", item)
        if value is None:
            return None
        return float(str(value).rpartition("|")[2])

    def inflight_items(self, pool: str) -> dict[str, float]:
        raw = self._r.hgetall(f"{self.key(pool)}inflight")
        return {_text(item): float(_text(value).rpartition("|")[2]) for item, value in raw.items()}

    def register_worker(self, pool: str, worker_id: str, capacity: int, ttl_s: float) -> list[str]:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        ttl_ms = int(ttl_s * 1000)
        return list(self._run(self._register, pool, worker_id, capacity, ttl_ms))

    def snapshot(self, pool: str) -> dict[str, Any]:
        flat = self._run(self._snapshot, pool)
        tenants: dict[str, dict[str, int]] = {}
        for i in range(2, len(flat), 5):
            queued, inflight, cap, weight = (int(v) for v in flat[i + 1 : i + 5])
            tenants[str(flat[i])] = {
                "queued": queued,
                "inflight": inflight,
                "cap": cap,
                "weight": weight,
            }
        return {"window": int(flat[0]), "inflight": int(flat[1]), "tenants": tenants}

    def close(self) -> None:
        self._r.close()
        self._pool.disconnect()


# --- memory ------------------------------------------------------------------------------


@dataclass
class _PoolState:
    turn: dict[str, int] = field(default_factory=dict)  # tenants with queued items -> turn
    seq: int = 0  # the last turn given out
    queues: dict[str, deque[str]] = field(default_factory=dict)
    member: dict[str, str] = field(default_factory=dict)  # queued item -> tenant
    inflight: dict[str, tuple[str, float]] = field(default_factory=dict)  # item -> tenant, at
    tin: dict[str, int] = field(default_factory=dict)  # tenant -> items in flight
    conf: dict[str, tuple[int, int]] = field(default_factory=dict)  # tenant -> cap, weight
    workers: dict[str, tuple[int, float]] = field(default_factory=dict)  # capacity, expires


class MemoryFairDispatcher:
    """The same algorithm as the Redis scripts, under one lock (single-process mode)."""

    def __init__(self, default_window: int = 256) -> None:
        self._default_window = default_window
        self._lock = threading.Lock()
        self._pools: dict[str, _PoolState] = {}

    def _pool(self, pool: str) -> _PoolState:
        return self._pools.setdefault(pool, _PoolState())

    def _window(self, p: _PoolState) -> int:
        now = time.monotonic()
        for worker, (_, expires) in list(p.workers.items()):
            if expires <= now:
                del p.workers[worker]
        if not p.workers:
            return self._default_window
        return sum(capacity for capacity, _ in p.workers.values())

    def _forget_if_idle(self, p: _PoolState, tenant: str) -> None:
        if not p.queues.get(tenant) and tenant not in p.tin:
            p.queues.pop(tenant, None)
            p.conf.pop(tenant, None)

    def _next_tenant(self, p: _PoolState) -> str | None:
        """The eligible tenant with the fewest in flight per weight, then the oldest turn. A
        scan: the embedded mode serves few tenants (Redis keeps a sorted set instead)."""
        best: tuple[float, int] | None = None
        chosen = None
        for tenant, turn in p.turn.items():
            cap, weight = p.conf.get(tenant, (0, 1))
            tin = p.tin.get(tenant, 0)
            if cap and tin >= cap:
                continue
            key = (tin / weight, turn)
            if best is None or key < best:
                best, chosen = key, tenant
        return chosen

    def _pick(self, p: _PoolState) -> list[str]:
        out: list[str] = []
        win = self._window(p)
        stamp = time.time()
        while len(p.inflight) < win and len(out) < PICK_LIMIT:
            tenant = self._next_tenant(p)
            if tenant is None:
                break
            queue = p.queues[tenant]
            item = queue.popleft()
            del p.member[item]
            p.inflight[item] = (tenant, stamp)
            p.tin[tenant] = p.tin.get(tenant, 0) + 1
            out.append(item)
            if queue:
                p.seq += 1
                p.turn[tenant] = p.seq  # served: behind every other waiting tenant for ties
            else:
                del p.turn[tenant], p.queues[tenant]
        return out

    def submit(
        self, pool: str, tenant_id: str, item: str, *, tenant_cap: int, weight: int = 1
    ) -> list[str]:
        _check(tenant_cap, weight)
        with self._lock:
            p = self._pool(pool)
            p.conf[tenant_id] = (tenant_cap, weight)
            if item not in p.inflight and item not in p.member:
                p.member[item] = tenant_id
                queue = p.queues.setdefault(tenant_id, deque())
                if not queue:
                    p.seq += 1
                    p.turn[tenant_id] = p.seq  # joins behind every tenant already waiting
                queue.append(item)
            return self._pick(p)

    def complete(self, pool: str, item: str) -> list[str]:
        with self._lock:
            p = self._pool(pool)
            if item in p.inflight:
                tenant, _ = p.inflight.pop(item)
                p.tin[tenant] -= 1
                if p.tin[tenant] <= 0:
                    del p.tin[tenant]
                    self._forget_if_idle(p, tenant)
            elif item in p.member:
                tenant = p.member.pop(item)
                queue = p.queues[tenant]
                queue.remove(item)
                if not queue:
                    del p.turn[tenant]
                    self._forget_if_idle(p, tenant)
            return self._pick(p)

    def pick(self, pool: str) -> list[str]:
        with self._lock:
            return self._pick(self._pool(pool))

    def state(self, pool: str, items: list[str]) -> dict[str, str]:
        with self._lock:
            p = self._pool(pool)
            return {
                item: "inflight"
                if item in p.inflight
                else "queued"
                if item in p.member
                else "unknown"
                for item in items
            }

    def inflight_since(self, pool: str, item: str) -> float | None:
        with self._lock:
            entry = self._pool(pool).inflight.get(item)
            return entry[1] if entry else None

    def inflight_items(self, pool: str) -> dict[str, float]:
        with self._lock:
            return {item: at for item, (_, at) in self._pool(pool).inflight.items()}

    def register_worker(self, pool: str, worker_id: str, capacity: int, ttl_s: float) -> list[str]:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        with self._lock:
            p = self._pool(pool)
            if ttl_s > 0:
                p.workers[worker_id] = (capacity, time.monotonic() + ttl_s)
            else:
                p.workers.pop(worker_id, None)
            return self._pick(p)

    def snapshot(self, pool: str) -> dict[str, Any]:
        with self._lock:
            p = self._pool(pool)
            tenants: dict[str, dict[str, int]] = {}
            for tenant in [*p.turn, *p.tin]:
                cap, weight = p.conf.get(tenant, (0, 1))
                tenants[tenant] = {
                    "queued": len(p.queues.get(tenant, ())),
                    "inflight": p.tin.get(tenant, 0),
                    "cap": cap,
                    "weight": weight,
                }
            return {"window": self._window(p), "inflight": len(p.inflight), "tenants": tenants}

    def close(self) -> None:
        pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_fair_dispatcher(settings: Settings) -> FairDispatcher:
    """Redis when ``redis_url`` names a Redis; memory for ``memory://`` or the embedded mode
    (which keeps the default ``redis_url`` but has no Redis)."""
    window = int(getattr(settings, "dispatch_window", 256))
    url = settings.redis_url
    if settings.mode == "embedded" or not url or url.startswith("memory"):
        return MemoryFairDispatcher(window)
    return RedisFairDispatcher(url, settings.redis_key_prefix, window)
