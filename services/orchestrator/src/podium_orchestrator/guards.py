"""Guards (DESIGN §3): deadline, token/cost/iteration caps, and the bookkeeping of every hit.
Delegation depth and handoff ping-pong are checked where those happen (control.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podium.metrics import GUARD_HITS
from podium.store import Run, RunStatus, utcnow

Emit = Callable[..., None]


def deadline_passed(run: Run) -> bool:
    # Time spent waiting for the user or for a budget decision does not count against it.
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) or run.deadline_at is None:
        return False
    return utcnow() > run.deadline_at


def caps_exceeded(run: Run, usage: dict[str, float], calls_after: int) -> tuple[str, str] | None:
    """The cap a new dispatch would break, if any: (guard, detail)."""
    limits = run.limits or {}
    tokens = limits.get("tokens")
    if tokens is not None and usage["tokens"] >= tokens:
        return "token_cap", f"{int(usage['tokens'])} tokens used, cap {int(tokens)}"
    cost = limits.get("cost_usd")
    if cost is not None and usage["cost_usd"] >= cost:
        return "cost_cap", f"${usage['cost_usd']:.4f} spent, cap ${cost:.4f}"
    iterations = limits.get("iterations")
    if iterations is not None and calls_after > iterations:
        return (
            "iteration_cap",
            f"{calls_after} agent calls would exceed the cap of {int(iterations)}",
        )
    return None


def record_guard(run: Run, guard: str, detail: str, emit: Emit, **extra: Any) -> None:
    run.guards = [
        *(run.guards or []),
        {"guard": guard, "detail": detail, "at": utcnow().isoformat(), **extra},
    ]
    GUARD_HITS.labels(guard).inc()
    emit("guard", guard=guard, detail=detail)
