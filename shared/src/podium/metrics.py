"""Prometheus metrics shared by the services. Names are ``podium_*`` with units, and label
values are bounded: agent names outside the default roster are reported as ``custom`` and
tenants never appear as raw ids."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

from podium.roster import ROSTER_NAMES

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "podium_http_requests_total", "Gateway HTTP requests", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "podium_http_request_duration_seconds",
    "Gateway HTTP request duration",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNS_FINISHED = Counter(
    "podium_runs_finished_total", "Runs that reached a terminal state", ["status", "pattern"]
)
RUN_DURATION = Histogram(
    "podium_run_duration_seconds",
    "Run wall time from admission to terminal state",
    ["pattern"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DECISIONS = Counter(
    "podium_orchestrator_decisions_total", "Orchestration decisions", ["pattern", "source"]
)
DECISION_FALLBACKS = Counter(
    "podium_orchestrator_fallbacks_total", "Decisions that fell back", ["reason"]
)
DECISION_LATENCY = Histogram(
    "podium_orchestrator_decision_duration_seconds",
    "Orchestrator agent decision latency",
    ["phase"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DECISION_TOKENS = Counter(
    "podium_orchestrator_decision_tokens_total", "Orchestrator agent tokens", ["phase", "direction"]
)
GUARD_HITS = Counter("podium_orchestrator_guard_hits_total", "Guards that tripped", ["guard"])
AGENT_CALLS = Counter(
    "podium_agent_calls_total", "Agent calls finished", ["agent", "provider", "status"]
)
AGENT_CALL_DURATION = Histogram(
    "podium_agent_call_duration_seconds",
    "Agent call latency",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
AGENT_TOKENS = Counter("podium_agent_tokens_total", "LLM tokens", ["provider", "direction"])
POSTMORTEMS = Counter("podium_learner_postmortems_total", "Post-mortems written", ["status"])


def agent_label(name: str) -> str:
    return name if name in ROSTER_NAMES else "custom"


def serve_metrics(port: int | None) -> None:
    """Expose /metrics for a worker process (the gateway serves it on its own port)."""
    if not port:
        return
    try:
        start_http_server(port, addr="0.0.0.0")
    except OSError as exc:
        log.warning("metrics port %s unavailable: %s", port, exc)
