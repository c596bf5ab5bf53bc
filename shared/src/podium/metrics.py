"""Prometheus metrics shared by the services (the catalogue is in docs/monitoring.md).

Names are ``podium_*`` with their unit in the name (``_seconds``, ``_usd``, ``_total`` for
counters). Every label value comes from a bounded set:

- agents outside the default roster are reported as ``custom`` (``agent_label``);
- models outside the price table's exact entries are ``other`` (``model_label``);
- tenants never appear as raw ids: only ids listed in ``PODIUM_METRICS_TENANT_ALLOWLIST``
  do, every other tenant is ``other`` (``tenant_label``);
- HTTP routes are route templates, never raw paths (the gateway's middleware).

Celery task metrics, worker gauges and the queue-depth / outbox-lag collector live in
``podium.celery_metrics``. Gauges declare a ``multiprocess_mode`` so they aggregate
correctly when a worker runs a prefork pool (``podium.worker_main``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import yaml
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from podium.roster import ROSTER_NAMES

log = logging.getLogger(__name__)

# Label value for anything outside a label's allow-list.
OTHER = "other"

# --- gateway ------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "podium_http_requests_total", "Gateway HTTP requests", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "podium_http_request_duration_seconds",
    "Gateway HTTP request duration (SSE event streams excluded)",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge(
    "podium_http_requests_in_flight",
    "Gateway requests being served; kind=stream counts open SSE event streams",
    ["kind"],
    multiprocess_mode="livesum",
)

# --- runs ---------------------------------------------------------------------------------
RUNS_STARTED = Counter(
    "podium_runs_started_total", "Runs that left the queue and started", ["pattern"]
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
RUN_QUEUE_WAIT = Histogram(
    "podium_run_queue_wait_seconds",
    "Time from a run's admission to its first step (queued -> running)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

# --- orchestration ------------------------------------------------------------------------
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
BUDGET_HOLDS = Counter(
    "podium_budget_holds_total",
    "Runs moved to budget_hold, by the cap that stopped them",
    ["guard"],
)

# --- agent calls and providers ------------------------------------------------------------
AGENT_CALLS = Counter(
    "podium_agent_calls_total", "Agent calls finished", ["agent", "provider", "status"]
)
AGENT_MODEL_CALLS = Counter(
    "podium_agent_model_calls_total",
    "Agent calls finished, by provider and model (model_label)",
    ["provider", "model", "status"],
)
AGENT_CALL_DURATION = Histogram(
    "podium_agent_call_duration_seconds",
    "Agent call latency",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
AGENT_TTFT = Histogram(
    "podium_agent_call_ttft_seconds",
    "Time from an agent call's first provider request to its first streamed token",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
AGENT_TOKENS = Counter("podium_agent_tokens_total", "LLM tokens", ["provider", "direction"])
AGENT_COST = Counter(
    "podium_agent_cost_usd_total",
    "Estimated LLM spend of agent calls in USD (price table; simulated prices are nominal)",
    ["provider", "model"],
)
PROVIDER_ERRORS = Counter(
    "podium_provider_errors_total",
    "Failed LLM provider requests, every attempt counted, by error kind",
    ["provider", "kind"],
)
PROVIDER_RETRIES = Counter(
    "podium_provider_retries_total", "LLM requests retried on the same provider", ["provider"]
)
PROVIDER_FALLBACKS = Counter(
    "podium_provider_fallbacks_total",
    "Moves to the next provider of the fallback chain",
    ["from_provider", "to_provider"],
)

# --- tenants (label values through tenant_label only) -------------------------------------
TENANT_RUNS = Counter(
    "podium_tenant_runs_total", "Runs admitted (202, new runs only), by tenant", ["tenant"]
)
TENANT_TOKENS = Counter(
    "podium_tenant_tokens_total", "LLM tokens of agent calls, by tenant", ["tenant", "direction"]
)
TENANT_COST = Counter(
    "podium_tenant_cost_usd_total",
    "Estimated LLM spend of agent calls in USD, by tenant",
    ["tenant"],
)
QUOTA_REJECTIONS = Counter(
    "podium_quota_rejections_total", "Requests refused by a tenant quota", ["limit", "tenant"]
)

# --- learner ------------------------------------------------------------------------------
POSTMORTEMS = Counter("podium_learner_postmortems_total", "Post-mortems written", ["status"])
LEARNER_FEEDBACK = Counter(
    "podium_learner_feedback_total", "User feedback received, by rating (1-5)", ["rating"]
)
POLICY_OVERRULES = Counter(
    "podium_learner_policy_overrules_total",
    "Patterns overruled by the learned policy",
    ["from_pattern", "to_pattern"],
)


# --- bounded label values -----------------------------------------------------------------
def agent_label(name: str) -> str:
    return name if name in ROSTER_NAMES else "custom"


def parse_allowlist(raw: str) -> frozenset[str]:
    """``"a, b,,c"`` -> {"a", "b", "c"}."""
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


@lru_cache(maxsize=1)
def _tenant_allowlist() -> frozenset[str]:
    from podium.settings import get_settings

    return parse_allowlist(get_settings().metrics_tenant_allowlist)


def tenant_label(tenant_id: str | None, allowlist: frozenset[str] | None = None) -> str:
    """The tenant id if PODIUM_METRICS_TENANT_ALLOWLIST lists it, else ``other``."""
    allowed = _tenant_allowlist() if allowlist is None else allowlist
    return tenant_id if tenant_id is not None and tenant_id in allowed else OTHER


def known_models(prices_file: str | Path | None = None) -> frozenset[str]:
    """Exact (non-glob) model names of the price table, lower-cased; provider-qualified keys
    (``openai/gpt-4o``) are kept qualified."""
    from podium.pricing import DEFAULT_PRICES_FILE

    path = Path(prices_file) if prices_file else DEFAULT_PRICES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
        keys = raw["models"].keys()
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        log.warning("no model labels from %s: %s", path, exc)
        return frozenset()
    return frozenset(str(k).strip().lower() for k in keys if not (set(str(k)) & frozenset("*?[")))


@lru_cache(maxsize=1)
def _known_models() -> frozenset[str]:
    from podium.settings import get_settings

    return known_models(get_settings().prices_file)


def model_label(model: str | None, provider: str | None = None) -> str:
    """The model name when the price table lists it exactly (bare or as
    ``<provider>/<model>``), else ``other``: a model name is free text in agent definitions."""
    if not model:
        return OTHER
    name = model.strip().lower()
    known = _known_models()
    if name in known or (provider and f"{provider.strip().lower()}/{name}" in known):
        return name
    return OTHER


RATINGS = frozenset({"1", "2", "3", "4", "5"})


def rating_label(rating: int | str) -> str:
    value = str(rating)
    return value if value in RATINGS else OTHER


# --- exposition ---------------------------------------------------------------------------
def serve_metrics(port: int | None, registry: CollectorRegistry = REGISTRY) -> bool:
    """Expose /metrics for a worker process (the gateway serves it on its own port).
    Returns whether the endpoint is up."""
    if not port:
        return False
    try:
        start_http_server(port, addr="0.0.0.0", registry=registry)
    except OSError as exc:
        log.warning("metrics port %s unavailable: %s", port, exc)
        return False
    return True
