"""GET /v1/usage: the calling tenant's own usage against its limits."""

from __future__ import annotations

from fastapi import APIRouter

from podium.call_queue import known_pools
from podium.quotas import Periods, effective_limits
from podium.store import tenant_session
from podium_gateway.auth import RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS
from podium_gateway.schemas import TenantUsage, UsageMeter

router = APIRouter(tags=["usage"], responses=API_ERRORS)


def _meter(
    used: float, limit: float, reserved: float = 0.0, resets_in_s: float | None = None
) -> UsageMeter:
    remaining = None if limit <= 0 else max(0.0, limit - used - reserved)
    return UsageMeter(
        used=used, reserved=reserved, limit=limit, remaining=remaining, resets_in_s=resets_in_s
    )


@router.get("/v1/usage", response_model=TenantUsage)
def get_usage(principal: TenantDep, runtime: RuntimeDep) -> TenantUsage:
    """Requests in the last minute, unfinished runs, agent calls in flight, tokens today and
    cost this month (UTC), each against the tenant's limit. Tokens and cost include what
    unfinished runs have reserved."""
    limits = effective_limits(runtime.settings, principal.limits)
    usage = runtime.quotas.usage(principal.tenant_id)
    periods = Periods.at()
    with tenant_session(runtime.db, principal.tenant_id) as session:
        pools = known_pools(session, runtime.settings)
    inflight = queued = 0
    for pool in pools:
        mine = runtime.fair.snapshot(pool)["tenants"].get(principal.tenant_id)
        if mine is not None:
            inflight += mine["inflight"]
            queued += mine["queued"]
    return TenantUsage(
        tenant_id=principal.tenant_id,
        requests_per_minute=_meter(usage.requests_last_minute, limits.requests_per_minute),
        concurrent_runs=_meter(usage.concurrent_runs, limits.concurrent_runs),
        concurrent_calls=_meter(inflight, limits.concurrent_calls),
        tokens_per_day=_meter(
            usage.tokens_used_today,
            limits.tokens_per_day,
            usage.tokens_reserved,
            periods.day_ends_in_s,
        ),
        cost_per_month_usd=_meter(
            round(usage.cost_used_this_month_usd, 6),
            limits.cost_per_month_usd,
            round(usage.cost_reserved_usd, 6),
            periods.month_ends_in_s,
        ),
        queued_calls=queued,
    )
