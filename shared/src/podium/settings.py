"""Configuration from the environment (and a .env file), prefix ``PODIUM_`` (DESIGN §8).

The names of DESIGN §8 are a contract; the rest are documented in the README.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite:///./podium.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PODIUM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- DESIGN §8 contract names -------------------------------------------------------
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
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    simulated_stream_chunk_chars: int = Field(default=12, ge=1)
    simulated_seed: int = 0

    # The longest an agent call's provider request may take; the broker's visibility timeout
    # is derived from it so a slow call is never redelivered while still running.
    call_timeout_s: float = Field(default=300.0, gt=0)
    run_deadline_s: float = Field(default=1800.0, gt=0)
    agents_pool: str = "default"
    worker_concurrency: int = Field(default=64, ge=1)
    orchestrator_concurrency: int = Field(default=8, ge=1)
    learner_concurrency: int = Field(default=4, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    event_retention_s: int = Field(default=86400, ge=60)
    event_stream_maxlen: int = Field(default=10000, ge=100)
    # Token deltas are flushed to the run's event stream at most this often.
    delta_flush_ms: float = Field(default=50.0, ge=0)
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    outbox_sweep_s: float = Field(default=2.0, gt=0)
    log_level: str = "INFO"
    # Port of a Celery service's /metrics endpoint (0 disables it).
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ValueError("PODIUM_ADMIN_KEY must be at least 16 characters")
        return self

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
