"""Guards (docs/architecture.md, "Guards"): the deadline and the token, cost and iteration
caps of a run. Delegation depth is checked in delegation.py, handoff ping-pong by the handoff
pattern. Every hit is recorded on the run and counted (GUARD_HITS, after the step applied)."""

from __future__ import annotations

from typing import Any

from podium.lifecycle import RunState
from podium.store import RunStatus, utcnow


def deadline_passed(run: RunState) -> bool:
    # Time spent waiting for the user or for a budget decision does not count against it.
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) or run.deadline_at is None:
        return False
    return utcnow() > run.deadline_at


def caps_exceeded(
    run: RunState, tokens: float, cost_usd: float, calls_after: int
) -> tuple[str, str] | None:
    """The cap a new dispatch would break, if any: (guard, detail)."""
    limits = run.limits
    cap = limits.get("tokens")
    if cap is not None and tokens >= cap:
        return "token_cap", f"{int(tokens)} tokens used, cap {int(cap)}"
    cap = limits.get("cost_usd")
    if cap is not None and cost_usd >= cap:
        return "cost_cap", f"${cost_usd:.4f} spent, cap ${cap:.4f}"
    cap = limits.get("iterations")
    if cap is not None and calls_after > cap:
        return "iteration_cap", f"{calls_after} agent calls would exceed the cap of {int(cap)}"
    return None


def guard_record(guard: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"guard": guard, "detail": detail, "at": utcnow().isoformat(), **extra}
