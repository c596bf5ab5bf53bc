"""Tenant limits and their enforcement (docs/architecture.md, "Data": Redis holds the rate-limit and
concurrency counters).

Five limits per tenant: requests per minute, concurrent runs, concurrent agent calls, tokens
per day and cost per month (0 = unlimited). The first, second, fourth and fifth are checked
here, at admission, in one atomic step:

- requests per minute: a sliding log of admission times (exactly N in any 60 s, wherever the
  burst starts; a fixed window would let 2N through across a boundary);
- concurrent runs: the tenant's open reservations, one per unfinished run;
- tokens per day and cost per month: each run *reserves* its own cap, or what is left if
  that is less, so a burst of admissions can never promise more than the budget. The run's
  cap is enforced by the orchestrator and the worker, and when the run ends its reservation
  is *settled*: released, and its real usage charged to the current day and month.

Concurrent agent calls are enforced by the fair dispatcher (podium.fair_dispatch).

Two interchangeable backends: Redis (Lua scripts, atomic across gateway processes, using
the Redis server's clock) and memory (a lock; the embedded single-process mode).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.settings import Settings
from podium.store.models import Tenant

LIMIT_FIELDS = (
    "requests_per_minute",
    "concurrent_runs",
    "concurrent_calls",
    "tokens_per_day",
    "cost_per_month_usd",
)
RATE_WINDOW_S = 60.0
MICRO = 1_000_000  # cost is counted in micro-dollars: integers add up exactly

Refusal = Literal[
    "rate_limited", "concurrent_runs_exceeded", "token_budget_exhausted", "cost_budget_exhausted"
]


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    concurrent_runs: int
    concurrent_calls: int
    tokens_per_day: int
    cost_per_month_usd: float

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in LIMIT_FIELDS}


def effective_limits(settings: Settings, overrides: dict[str, Any] | None) -> Limits:
    """The deployment's defaults with the tenant's overrides on top."""
    o = overrides or {}

    def pick(name: str, default: float) -> float:
        value = o.get(name)
        return default if value is None else value

    return Limits(
        requests_per_minute=int(pick("requests_per_minute", settings.tenant_requests_per_minute)),
        concurrent_runs=int(pick("concurrent_runs", settings.tenant_concurrent_runs)),
        concurrent_calls=int(pick("concurrent_calls", settings.tenant_concurrent_calls)),
        tokens_per_day=int(pick("tokens_per_day", settings.tenant_tokens_per_day)),
        cost_per_month_usd=float(pick("cost_per_month_usd", settings.tenant_cost_per_month_usd)),
    )


def load_limits(session: Session, settings: Settings, tenant_id: str) -> Limits:
    """A tenant's limits in force, read from the store."""
    overrides = session.scalar(select(Tenant.limits).where(Tenant.id == tenant_id))
    return effective_limits(settings, overrides)


@dataclass(frozen=True)
class Periods:
    """The budget periods (UTC) an operation falls into, and when they end."""

    day: str
    month: str
    day_ends_in_s: float
    month_ends_in_s: float

    @classmethod
    def at(cls, now: datetime | None = None) -> Periods:
        now = now or datetime.now(UTC)
        tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (first + timedelta(days=32)).replace(day=1)
        return cls(
            day=now.strftime("%Y%m%d"),
            month=now.strftime("%Y%m"),
            day_ends_in_s=(tomorrow - now).total_seconds(),
            month_ends_in_s=(next_month - now).total_seconds(),
        )


@dataclass(frozen=True)
class Admission:
    admitted: bool
    refusal: Refusal | None = None
    retry_after_s: float = 0.0
    tokens: int = 0  # reserved for the run
    cost_usd: float = 0.0

    @property
    def message(self) -> str:
        return REFUSAL_MESSAGES.get(self.refusal or "", "")


REFUSAL_MESSAGES = {
    "rate_limited": "the tenant's requests-per-minute limit is reached",
    "concurrent_runs_exceeded": "the tenant has as many unfinished runs as its limit allows",
    "token_budget_exhausted": "the tenant's tokens-per-day budget is used up or reserved",
    "cost_budget_exhausted": "the tenant's cost-per-month budget is used up or reserved",
}


@dataclass(frozen=True)
class Reservation:
    tenant_id: str
    run_id: str
    tokens: int
    cost_usd: float
    since: float  # epoch seconds


@dataclass(frozen=True)
class Usage:
    requests_last_minute: int
    concurrent_runs: int
    tokens_used_today: int
    tokens_reserved: int
    cost_used_this_month_usd: float
    cost_reserved_usd: float


class Quotas(Protocol):
    def admit(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        """Take a request slot and a run slot and reserve the run's budget, or refuse.
        Admitting a run id that already holds a reservation returns it unchanged."""
        ...

    def extend(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        """Grow a run's reservation by this much (a resumed run), or refuse."""
        ...

    def settle(self, tenant_id: str, run_id: str, tokens: int, cost_usd: float) -> bool:
        """Release the run's reservation and charge its real usage. Idempotent: False if
        the run held no reservation (already settled)."""
        ...

    def reservations(self) -> list[Reservation]:
        """Every open reservation (for the reconciler)."""
        ...

    def usage(self, tenant_id: str) -> Usage: ...

    def close(self) -> None: ...


def _to_micro(usd: float) -> int:
    return round(usd * MICRO)


# --- Redis ------------------------------------------------------------------------------------
# KEYS: 1 rate log (zset), 2 reservations (hash run -> "tokens|micro|since"), 3 reserved
# totals (hash), 4 tokens used today, 5 micro-dollars used this month, 6 tenants with
# reservations (set; for the reconciler).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3])
local tpd, cpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local want_tok, want_usd = tonumber(ARGV[6]), tonumber(ARGV[7])
local min_tok, min_usd = tonumber(ARGV[8]), tonumber(ARGV[9])
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local a, b = string.match(held, '^(%-?%d+)|(%-?%d+)')
  return {1, 'ok', '0', a, b}
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 'rate_limited', tostring(tonumber(oldest[2]) + 60 - now), '0', '0'}
  end
end
if conc > 0 and redis.call('HLEN', KEYS[2]) >= conc then
  return {0, 'concurrent_runs_exceeded', '-1', '0', '0'}
end
local grant_tok, grant_usd = want_tok, want_usd
if tpd > 0 then
  local left = tpd - tonumber(redis.call('GET', KEYS[4]) or '0')
    - tonumber(redis.call('HGET', KEYS[3], 'tok') or '0')
  if left < min_tok then return {0, 'token_budget_exhausted', '-2', '0', '0'} end
  grant_tok = math.min(want_tok, left)
end
if cpm > 0 then
  local left = cpm - tonumber(redis.call('GET', KEYS[5]) or '0')
    - tonumber(redis.call('HGET', KEYS[3], 'usd') or '0')
  if left < min_usd then return {0, 'cost_budget_exhausted', '-3', '0', '0'} end
  grant_usd = math.min(want_usd, left)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], 61)
end
redis.call('HSET', KEYS[2], ARGV[1], grant_tok .. '|' .. grant_usd .. '|' .. now)
redis.call('HINCRBY', KEYS[3], 'tok', grant_tok)
redis.call('HINCRBY', KEYS[3], 'usd', grant_usd)
redis.call('SADD', KEYS[6], ARGV[10])
return {1, 'ok', '0', tostring(grant_tok), tostring(grant_usd)}
"""

# KEYS as _ADMIT. ARGV: run, tpd, cpm, extra tokens, extra micro-dollars.
_EXTEND = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return {0, 'not_reserved', '0', '0', '0'} end
local tok, usd, since = string.match(held, '^(%-?%d+)|(%-?%d+)|(.*)$')
local tpd, cpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local more_tok, more_usd = tonumber(ARGV[4]), tonumber(ARGV[5])
if tpd > 0 and tpd - tonumber(redis.call('GET', KEYS[4]) or '0')
    - tonumber(redis.call('HGET', KEYS[3], 'tok') or '0') < more_tok then
  return {0, 'token_budget_exhausted', '-2', '0', '0'}
end
if cpm > 0 and cpm - tonumber(redis.call('GET', KEYS[5]) or '0')
    - tonumber(redis.call('HGET', KEYS[3], 'usd') or '0') < more_usd then
  return {0, 'cost_budget_exhausted', '-3', '0', '0'}
end
tok, usd = tonumber(tok) + more_tok, tonumber(usd) + more_usd
redis.call('HSET', KEYS[2], ARGV[1], tok .. '|' .. usd .. '|' .. since)
redis.call('HINCRBY', KEYS[3], 'tok', more_tok)
redis.call('HINCRBY', KEYS[3], 'usd', more_usd)
return {1, 'ok', '0', tostring(tok), tostring(usd)}
"""

# KEYS as _ADMIT. ARGV: run, tokens used, micro-dollars used, day ttl, month ttl, tenant.
_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
local tok, usd = string.match(held, '^(%-?%d+)|(%-?%d+)')
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'tok', 0 - tonumber(tok))  -- never "-0"
redis.call('HINCRBY', KEYS[3], 'usd', 0 - tonumber(usd))
redis.call('INCRBY', KEYS[4], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('INCRBY', KEYS[5], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[5])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[6], ARGV[6]) end
return 1
"""


class RedisQuotas:
    def __init__(self, url: str, prefix: str, settings: Settings) -> None:
        self._settings = settings
        self._prefix = f"{prefix}podium:quota:"
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=2,
            decode_responses=True,
        )
        self._r = redis.Redis(connection_pool=self._pool)
        self._admit = self._r.register_script(_ADMIT)
        self._extend = self._r.register_script(_EXTEND)
        self._settle = self._r.register_script(_SETTLE)

    def _keys(self, tenant_id: str, periods: Periods) -> list[str]:
        t = f"{self._prefix}{tenant_id}:"
        return [
            f"{t}rate",
            f"{t}res",
            f"{t}reserved",
            f"{t}tok:{periods.day}",
            f"{t}usd:{periods.month}",
            f"{self._prefix}tenants",
        ]

    def _result(self, raw: list[Any], periods: Periods) -> Admission:
        ok, code, retry, tok, usd = (x.decode() if isinstance(x, bytes) else str(x) for x in raw)
        if ok == "1":
            return Admission(True, tokens=int(float(tok)), cost_usd=int(float(usd)) / MICRO)
        return Admission(False, code, _retry_after(float(retry), periods))  # type: ignore[arg-type]

    def admit(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        periods = Periods.at()
        raw = self._admit(
            keys=self._keys(tenant_id, periods),
            args=[
                run_id,
                limits.requests_per_minute,
                limits.concurrent_runs,
                limits.tokens_per_day,
                _to_micro(limits.cost_per_month_usd),
                tokens,
                _to_micro(cost_usd),
                self._settings.quota_min_run_tokens,
                _to_micro(self._settings.quota_min_run_cost_usd),
                tenant_id,
            ],
        )
        return self._result(raw, periods)

    def extend(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        periods = Periods.at()
        raw = self._extend(
            keys=self._keys(tenant_id, periods),
            args=[
                run_id,
                limits.tokens_per_day,
                _to_micro(limits.cost_per_month_usd),
                tokens,
                _to_micro(cost_usd),
            ],
        )
        return self._result(raw, periods)

    def settle(self, tenant_id: str, run_id: str, tokens: int, cost_usd: float) -> bool:
        periods = Periods.at()
        done = self._settle(
            keys=self._keys(tenant_id, periods),
            args=[run_id, tokens, _to_micro(cost_usd), 2 * 86400, 62 * 86400, tenant_id],
        )
        return bool(int(done))

    def reservations(self) -> list[Reservation]:
        out: list[Reservation] = []
        for raw_tenant in self._r.smembers(f"{self._prefix}tenants"):
            tenant = _text(raw_tenant)
            held = self._r.hgetall(f"{self._prefix}{tenant}:res")
            for run_id, value in held.items():
                tok, usd, since = str(value).split("|")
                out.append(
                    Reservation(str(tenant), str(run_id), int(tok), int(usd) / MICRO, float(since))
                )
        return out

    def usage(self, tenant_id: str) -> Usage:
        periods = Periods.at()
        rate, res, reserved, tok, usd, _ = self._keys(tenant_id, periods)
        now = float(self._r.time()[0])
        pipe = self._r.pipeline(transaction=False)
        pipe.zcount(rate, now - RATE_WINDOW_S, "+inf")
        pipe.hlen(res)
        pipe.hmget(reserved, ["tok", "usd"])
        pipe.get(tok)
        pipe.get(usd)
        recent, open_runs, (r_tok, r_usd), used_tok, used_usd = pipe.execute()
        return Usage(
            requests_last_minute=int(recent),
            concurrent_runs=int(open_runs),
            tokens_used_today=int(used_tok or 0),
            tokens_reserved=int(r_tok or 0),
            cost_used_this_month_usd=int(used_usd or 0) / MICRO,
            cost_reserved_usd=int(r_usd or 0) / MICRO,
        )

    def close(self) -> None:
        self._pool.disconnect()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _retry_after(code: float, periods: Periods) -> float:
    """Seconds until a refusal may succeed: the rate log says exactly; a budget refills at
    the start of the next period; a run slot frees when some run ends (unknown: a few s)."""
    if code >= 0:
        return max(code, 0.001)
    if code == -2:
        return periods.day_ends_in_s
    if code == -3:
        return periods.month_ends_in_s
    return 5.0


# --- memory -----------------------------------------------------------------------------------
@dataclass
class _TenantState:
    rate: deque[float]
    reservations: dict[str, tuple[int, int, float]]
    used_tokens: dict[str, int]  # day -> tokens
    used_micro: dict[str, int]  # month -> micro-dollars

    @property
    def reserved(self) -> tuple[int, int]:
        return (
            sum(r[0] for r in self.reservations.values()),
            sum(r[1] for r in self.reservations.values()),
        )


class MemoryQuotas:
    """The same rules for the embedded mode (one process), under one lock."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantState] = {}

    def _state(self, tenant_id: str) -> _TenantState:
        return self._tenants.setdefault(tenant_id, _TenantState(deque(), {}, {}, {}))

    def _left(self, s: _TenantState, limits: Limits, periods: Periods) -> tuple[int, int]:
        r_tok, r_usd = s.reserved
        return (
            limits.tokens_per_day - s.used_tokens.get(periods.day, 0) - r_tok,
            _to_micro(limits.cost_per_month_usd) - s.used_micro.get(periods.month, 0) - r_usd,
        )

    def admit(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        periods, now = Periods.at(), time.time()
        with self._lock:
            s = self._state(tenant_id)
            if run_id in s.reservations:
                tok, usd, _ = s.reservations[run_id]
                return Admission(True, tokens=tok, cost_usd=usd / MICRO)
            while s.rate and s.rate[0] <= now - RATE_WINDOW_S:
                s.rate.popleft()
            if limits.requests_per_minute > 0 and len(s.rate) >= limits.requests_per_minute:
                return Admission(False, "rate_limited", s.rate[0] + RATE_WINDOW_S - now)
            if limits.concurrent_runs > 0 and len(s.reservations) >= limits.concurrent_runs:
                return Admission(False, "concurrent_runs_exceeded", _retry_after(-1, periods))
            left_tok, left_usd = self._left(s, limits, periods)
            grant_tok, grant_usd = tokens, _to_micro(cost_usd)
            if limits.tokens_per_day > 0:
                if left_tok < self._settings.quota_min_run_tokens:
                    return Admission(False, "token_budget_exhausted", periods.day_ends_in_s)
                grant_tok = min(grant_tok, left_tok)
            if limits.cost_per_month_usd > 0:
                if left_usd < _to_micro(self._settings.quota_min_run_cost_usd):
                    return Admission(False, "cost_budget_exhausted", periods.month_ends_in_s)
                grant_usd = min(grant_usd, left_usd)
            if limits.requests_per_minute > 0:
                s.rate.append(now)
            s.reservations[run_id] = (grant_tok, grant_usd, now)
            return Admission(True, tokens=grant_tok, cost_usd=grant_usd / MICRO)

    def extend(
        self, tenant_id: str, run_id: str, limits: Limits, tokens: int, cost_usd: float
    ) -> Admission:
        periods = Periods.at()
        with self._lock:
            s = self._state(tenant_id)
            if run_id not in s.reservations:
                return Admission(False, None)
            left_tok, left_usd = self._left(s, limits, periods)
            more_usd = _to_micro(cost_usd)
            if limits.tokens_per_day > 0 and left_tok < tokens:
                return Admission(False, "token_budget_exhausted", periods.day_ends_in_s)
            if limits.cost_per_month_usd > 0 and left_usd < more_usd:
                return Admission(False, "cost_budget_exhausted", periods.month_ends_in_s)
            tok, usd, since = s.reservations[run_id]
            s.reservations[run_id] = (tok + tokens, usd + more_usd, since)
            return Admission(True, tokens=tok + tokens, cost_usd=(usd + more_usd) / MICRO)

    def settle(self, tenant_id: str, run_id: str, tokens: int, cost_usd: float) -> bool:
        periods = Periods.at()
        with self._lock:
            s = self._state(tenant_id)
            if s.reservations.pop(run_id, None) is None:
                return False
            s.used_tokens[periods.day] = s.used_tokens.get(periods.day, 0) + tokens
            s.used_micro[periods.month] = s.used_micro.get(periods.month, 0) + _to_micro(cost_usd)
            return True

    def reservations(self) -> list[Reservation]:
        with self._lock:
            return [
                Reservation(t, run_id, tok, usd / MICRO, since)
                for t, s in self._tenants.items()
                for run_id, (tok, usd, since) in s.reservations.items()
            ]

    def usage(self, tenant_id: str) -> Usage:
        periods, now = Periods.at(), time.time()
        with self._lock:
            s = self._state(tenant_id)
            r_tok, r_usd = s.reserved
            return Usage(
                requests_last_minute=sum(1 for t in s.rate if t > now - RATE_WINDOW_S),
                concurrent_runs=len(s.reservations),
                tokens_used_today=s.used_tokens.get(periods.day, 0),
                tokens_reserved=r_tok,
                cost_used_this_month_usd=s.used_micro.get(periods.month, 0) / MICRO,
                cost_reserved_usd=r_usd / MICRO,
            )

    def close(self) -> None:
        pass


def make_quotas(settings: Settings) -> Quotas:
    if settings.mode == "embedded":
        return MemoryQuotas(settings)
    return RedisQuotas(settings.redis_url, settings.redis_key_prefix, settings)
