"""Configuration from the environment (and a .env file), prefix ``PODIUM_`` (docs/architecture.md,
"Running it").

The names of the README's first configuration rows are a contract; all are documented there.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite:///./podium.db"
# Mirrors podium.llm.PROVIDER_NAMES (importing it here would be circular).
_PROVIDER_NAMES = ("simulated", "openai", "anthropic")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PODIUM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- names that are a contract (scripts and operators rely on them) -----------------
    database_url: str = DEFAULT_SQLITE_URL
    # None means: the in-process broker in `podium dev`, else PODIUM_REDIS_URL.
    broker_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    admin_key: str | None = None
    http_port: int = 8000
    llm_provider: Literal["simulated", "openai", "anthropic"] = "simulated"
    simulated_latency_ms: float = Field(default=20.0, ge=0)
    simulated_error_rate: float = Field(default=0.0, ge=0, le=1)

    # --- operational settings -----------------------------------------------------------
    http_host: str = "127.0.0.1"
    # Where the CLI finds the gateway (client commands).
    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    # Prefix for every Redis key Podium writes (event streams, counters, Celery queues),
    # so several deployments or test runs can share one Redis.
    redis_key_prefix: str = ""
    # "embedded" selects in-process broker and event streams (podium dev).
    mode: Literal["distributed", "embedded"] = "distributed"

    llm_model: str = "simulated-1"
    # Patterns file (default: the one shipped in the podium package).
    patterns_file: str | None = None
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    simulated_stream_chunk_chars: int = Field(default=12, ge=1)
    simulated_seed: int = 0
    # YAML rules that script the simulated model's answers and decisions (see
    # podium.llm.simulated_script); unset means the packaged default script.
    simulated_script: str | None = None

    # The longest an agent call's provider request may take; the broker's visibility timeout
    # is derived from it so a slow call is never redelivered while still running.
    call_timeout_s: float = Field(default=300.0, gt=0)

    # --- the Orchestrator agent -----------------------------------------------------------
    # Provider and model of the Orchestrator agent (default: PODIUM_LLM_PROVIDER / _MODEL).
    orchestrator_provider: Literal["simulated", "openai", "anthropic"] | None = None
    orchestrator_model: str | None = None
    # A decision later than this falls back (reason "timeout").
    orchestrator_timeout_s: float = Field(default=30.0, gt=0)
    orchestrator_max_output_tokens: int = Field(default=512, ge=64)
    # "required" lets the model pick among its tools; a tool name forces that one tool, for
    # servers that only honour forced calls (llama.cpp with small models).
    orchestrator_tool_choice: str = "required"
    # Tokens one run's decisions may spend in all; past it, decisions fall back.
    orchestrator_token_budget: int = Field(default=20000, ge=100)
    # Rendered decision history above this is summarised (oldest decisions first).
    orchestrator_history_tokens: int = Field(default=600, ge=50)

    # --- learning (docs/architecture.md, "Learning") --------------------------------------
    # The learned policy overrules a pattern with at least this many outcomes whose lower
    # credible bound of a good outcome is below the threshold.
    policy_min_samples: int = Field(default=5, ge=1)
    policy_threshold: float = Field(default=0.35, gt=0, lt=1)
    # Post-mortem reviews by an LLM (provider/model default to PODIUM_LLM_PROVIDER / _MODEL).
    review_enabled: bool = True
    # The share of completed runs that get a review (chosen by run id); failed and cancelled
    # runs, and runs rated poorly, are always reviewed.
    review_sample_rate: float = Field(default=0.1, ge=0, le=1)
    # The learner writes the post-mortems its consumer threads hold in one transaction,
    # waiting at most this long after the first for more to gather.
    learner_batch_wait_s: float = Field(default=0.05, ge=0, le=5)
    # Orchestration contexts are kept retention_days; those with feedback or failures are
    # archived and kept archive_days. The job runs every retention_interval_s (Celery beat).
    retention_days: float = Field(default=30.0, gt=0)
    archive_days: float = Field(default=180.0, gt=0)
    retention_interval_s: float = Field(default=3600.0, ge=1)
    learner_beat: bool = True

    # --- guards (docs/architecture.md, "Guards") --------------------------------------------
    run_max_tokens: int = Field(default=200_000, ge=1)
    run_max_cost_usd: float = Field(default=5.0, gt=0)
    run_max_iterations: int = Field(default=100, ge=1)
    max_delegation_depth: int = Field(default=5, ge=1)
    run_deadline_s: float = Field(default=1800.0, gt=0)
    agents_pool: str = "default"
    worker_concurrency: int = Field(default=64, ge=1)
    orchestrator_concurrency: int = Field(default=8, ge=1)
    # Learner consumer threads: also the largest post-mortem batch.
    learner_concurrency: int = Field(default=16, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    # --- tenant limits (defaults; PATCH /v1/tenants/{id} overrides them per tenant) -------
    # 0 means unlimited. Token and cost budgets are reserved at admission (each run reserves
    # its own cap, or what is left if less) and settled with the real usage when it ends.
    tenant_requests_per_minute: int = Field(default=1200, ge=0)
    tenant_concurrent_runs: int = Field(default=200, ge=0)
    tenant_concurrent_calls: int = Field(default=64, ge=0)
    tenant_tokens_per_day: int = Field(default=50_000_000, ge=0)
    tenant_cost_per_month_usd: float = Field(default=2000.0, ge=0)
    # A run is refused rather than admitted with a smaller reservation than this.
    quota_min_run_tokens: int = Field(default=256, ge=1)
    quota_min_run_cost_usd: float = Field(default=0.001, ge=0)
    # Agent calls a pool may have in flight when no worker has announced its capacity.
    dispatch_window: int = Field(default=256, ge=1)

    event_retention_s: int = Field(default=86400, ge=60)
    event_stream_maxlen: int = Field(default=10000, ge=100)
    # Token deltas are flushed to the run's event stream at most this often: 5 times a
    # second reads as live, and costs a worker a quarter of the Redis writes of 20.
    delta_flush_ms: float = Field(default=200.0, ge=0)
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    outbox_sweep_s: float = Field(default=2.0, gt=0)
    log_level: str = "INFO"
    # Python's GIL switch interval in every service process (default 5 ms; see
    # podium.process): shorter hands the GIL to threads woken by I/O sooner.
    gil_switch_interval_ms: float = Field(default=1.0, gt=0, le=100)
    # Port of a Celery service's /metrics endpoint (0 disables it).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Comma-separated tenant ids that may appear as a metrics label value; every other
    # tenant is reported as "other" (bounded cardinality, no raw ids by default).
    metrics_tenant_allowlist: str = ""

    # Price table for cost accounting (default: prices.yaml shipped in the podium package).
    prices_file: str | None = None
    # Providers tried, in order, once the call's own provider has failed: comma-separated
    # names such as "openai,simulated". A plain string because pydantic-settings would
    # otherwise demand JSON for a list.
    provider_fallbacks: str = ""
    # Tries per provider (the first one included) before moving to the next provider.
    llm_max_attempts: int = Field(default=3, ge=1, le=10)
    llm_retry_base_delay_s: float = Field(default=0.2, ge=0)
    llm_retry_max_delay_s: float = Field(default=8.0, ge=0)
    # LLM <-> tool round trips one agent call may make before it must answer.
    agent_max_tool_steps: int = Field(default=8, ge=1)
    # A thread longer than this (estimated tokens) has its older part summarised ...
    agent_context_budget_tokens: int = Field(default=6000, ge=1)
    # ... while about this many tokens of the newest messages are kept verbatim.
    agent_keep_recent_tokens: int = Field(default=2000, ge=0)

    # --- reliability (docs/reliability.md) ------------------------------------------------
    # The orchestrator's reaper: every reaper_interval_s it re-triggers runs that nothing
    # will step any more (a lost AdvanceRun), re-sends agent calls whose message or worker
    # was lost, and re-notifies the learner of finished runs it never recorded.
    reaper_enabled: bool = True
    reaper_interval_s: float = Field(default=5.0, gt=0)
    # A run idle this long with no call in flight, a queued run this old, or a call pending
    # this long is presumed to have lost its message (re-sending is harmless: every consumer
    # is idempotent). Re-sends of one item back off exponentially from this interval.
    reaper_stall_s: float = Field(default=30.0, gt=0)
    # A running agent call holds a lease (in Redis) renewed every call_lease_s / 3 while its
    # worker is alive; a call whose lease lapsed belongs to a dead worker and is re-sent ...
    call_lease_s: float = Field(default=30.0, ge=1)
    # ... until it has been started this many times; then it fails with "call_lost".
    call_max_attempts: int = Field(default=3, ge=1)
    # The gateway re-checks the store, the broker and Redis this often; admission answers
    # 503 (with Retry-After) while one of them is down.
    health_probe_interval_s: float = Field(default=1.0, gt=0)
    # TEST ONLY, never in production: early acknowledgement (acks_late and
    # reject_on_worker_lost off), so a killed worker loses the messages it held. It exists so
    # the fault tests can prove they detect loss (tests/faults, negative control), and it is
    # refused unless PODIUM_ALLOW_UNSAFE=1 is set as well.
    unsafe_early_ack: bool = False
    allow_unsafe: bool = False

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ValueError("PODIUM_ADMIN_KEY must be at least 16 characters")
        if self.unsafe_early_ack and not self.allow_unsafe:
            raise ValueError(
                "PODIUM_UNSAFE_EARLY_ACK loses messages when a worker dies and exists for the "
                "fault tests only; set PODIUM_ALLOW_UNSAFE=1 as well to really use it"
            )
        return self

    @model_validator(mode="after")
    def _check_llm_and_agent(self) -> Settings:
        unknown = [n for n in self.fallback_providers if n not in _PROVIDER_NAMES]
        if unknown:
            raise ValueError(
                f"PODIUM_PROVIDER_FALLBACKS: unknown provider(s) {', '.join(unknown)}; "
                f"valid providers: {', '.join(_PROVIDER_NAMES)}"
            )
        if self.llm_retry_max_delay_s < self.llm_retry_base_delay_s:
            raise ValueError(
                "PODIUM_LLM_RETRY_MAX_DELAY_S must be >= PODIUM_LLM_RETRY_BASE_DELAY_S"
            )
        if self.agent_keep_recent_tokens >= self.agent_context_budget_tokens:
            raise ValueError(
                "PODIUM_AGENT_KEEP_RECENT_TOKENS must be below PODIUM_AGENT_CONTEXT_BUDGET_TOKENS"
            )
        return self

    @property
    def fallback_providers(self) -> list[str]:
        """PODIUM_PROVIDER_FALLBACKS as a list: trimmed, without blanks or repeats."""
        names: list[str] = []
        for raw in self.provider_fallbacks.split(","):
            name = raw.strip()
            if name and name not in names:
                names.append(name)
        return names

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return "memory://" if self.mode == "embedded" else self.redis_url

    @property
    def visibility_timeout_s(self) -> int:
        # Twice the longest call plus slack for retries and queue time.
        return int(self.call_timeout_s * 2 + 600)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
