"""Tenant quotas at admission: the gateway's side of podium.quotas.

A refusal is 429 with ``Retry-After`` (whole seconds, rounded up) and the limit that said
no, so a client can back off for exactly as long as needed.
"""

from __future__ import annotations

import logging
import math

from podium.metrics import QUOTA_REJECTIONS, tenant_label
from podium.quotas import Admission, Limits, effective_limits
from podium.runtime import Runtime
from podium_gateway.auth import Principal
from podium_gateway.errors import ApiError

log = logging.getLogger(__name__)


def tenant_limits(runtime: Runtime, principal: Principal) -> Limits:
    return effective_limits(runtime.settings, principal.limits)


def reserve_run(
    runtime: Runtime, principal: Principal, run_id: str, tokens: int, cost_usd: float
) -> Admission:
    """Take a request and a run slot and reserve the run's budget, or raise 429."""
    limits = tenant_limits(runtime, principal)
    admission = runtime.quotas.admit(principal.tenant_id, run_id, limits, tokens, cost_usd)
    if not admission.admitted:
        raise refusal(principal, admission, limits)
    return admission


def extend_run(
    runtime: Runtime, principal: Principal, run_id: str, tokens: int, cost_usd: float
) -> Admission:
    """Grow a resumed run's reservation by its extra cap, or raise 429."""
    limits = tenant_limits(runtime, principal)
    admission = runtime.quotas.extend(principal.tenant_id, run_id, limits, tokens, cost_usd)
    if not admission.admitted and admission.refusal is not None:
        raise refusal(principal, admission, limits)
    return admission


def release_run(runtime: Runtime, principal: Principal, run_id: str) -> None:
    """Give back a reservation whose run was never written (the admission failed later).
    If Redis is unreachable now, the orchestrator's reconciler frees it later."""
    try:
        runtime.quotas.settle(principal.tenant_id, run_id, 0, 0.0)
    except Exception as exc:
        log.warning("could not release the reservation of unwritten run %s: %s", run_id, exc)


def refusal(principal: Principal, admission: Admission, limits: Limits) -> ApiError:
    code = admission.refusal or "quota_exceeded"
    QUOTA_REJECTIONS.labels(code, tenant_label(principal.tenant_id)).inc()
    retry_after = max(1, math.ceil(admission.retry_after_s))
    return ApiError(
        429,
        code,
        f"{admission.message}; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
        retry_after_s=retry_after,
        limits=limits.as_dict(),
    )
