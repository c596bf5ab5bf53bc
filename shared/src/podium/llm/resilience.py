"""Calling LLM providers with retries and a fallback chain (docs/architecture.md).

A transient failure (429, 5xx, timeout, connection) is retried on the same provider with
exponential backoff. A permanent one (bad request, auth, unknown model, billing, not
configured: ``ProviderError.permanent``) is never retried on the same provider: the answer
would be the same. When a provider has used up its attempts, or failed permanently, the
next provider of the chain is tried at once: a rejected key, an unknown model name or a
missing setting of provider A says nothing about provider B, which may well serve the
request; with no provider left the call fails. When every provider has failed,
``AllProvidersFailed`` carries the whole attempt log so the caller can fail the call cleanly
with a clear error. Nothing here waits unboundedly: every delay is capped.

Building the chain is stricter: ``provider_chain`` raises the ``not_configured``
ProviderError of a primary provider this deployment has no settings for, before any call.
The agent named that provider; serving it from a fallback on every call would hide a
configuration error behind a different model, and the fallbacks exist for outages. A
fallback that cannot be built is only skipped (with one warning).

The log says what happens: "retrying in Xs" only when the next try on that provider
follows after X seconds; giving up on a provider is logged as a warning that says whether
the next provider (named) is tried or the call fails.

Streaming caveat: a provider that fails mid-stream has already sent some deltas to
``on_delta``; the retry streams its answer from the start. Callers that show deltas should
treat ``Attempt`` boundaries (or the final result) as authoritative.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from podium.llm import build_provider
from podium.llm.base import ChatRequest, ChatResult, DeltaCallback, LLMProvider, ProviderError
from podium.metrics import PROVIDER_ERRORS, PROVIDER_FALLBACKS, PROVIDER_RETRIES
from podium.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    # Tries per provider, the first one included.
    max_attempts: int = 3
    base_delay_s: float = 0.2
    max_delay_s: float = 8.0
    # Relative: 0.2 means each delay is scaled by a random factor in [0.8, 1.2].
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.llm_max_attempts,
            base_delay_s=settings.llm_retry_base_delay_s,
            max_delay_s=settings.llm_retry_max_delay_s,
        )

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Delay before the ``retry``-th retry (1-based) of one provider, jittered."""
        raw = min(self.max_delay_s, self.base_delay_s * 2.0 ** (retry - 1))
        if self.jitter:
            raw *= 1 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_delay_s, raw))


@dataclass
class Attempt:
    provider: str
    # Global index over the whole chain, 0-based: the value the provider saw in
    # request.metadata["attempt"].
    attempt: int
    error: str | None  # None: this attempt succeeded
    kind: str | None  # ProviderErrorKind value
    # Seconds slept after this attempt before the next one (0 when switching provider).
    delay_s: float


@dataclass
class ResilientResult:
    result: ChatResult
    provider: LLMProvider
    attempts: list[Attempt]
    # How many providers were given up on before the one that answered.
    fallbacks_used: int


class AllProvidersFailed(Exception):
    def __init__(self, attempts: list[Attempt], last_error: ProviderError) -> None:
        tried = ", ".join(dict.fromkeys(a.provider for a in attempts))
        super().__init__(
            f"all LLM providers failed ({tried}; {len(attempts)} attempts); last error: "
            f"{last_error}"
        )
        self.attempts = attempts
        self.last_error = last_error


class Stopped(Exception):
    """``should_stop`` asked to give up (e.g. the run was cancelled) between attempts."""

    def __init__(self, attempts: list[Attempt]) -> None:
        super().__init__(f"stopped after {len(attempts)} attempt(s)")
        self.attempts = attempts


def complete_with_fallback(
    providers: Sequence[LLMProvider],
    request: ChatRequest,
    *,
    policy: RetryPolicy,
    on_delta: DeltaCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] | None = None,
    rng: random.Random | None = None,
) -> ResilientResult:
    """Complete ``request`` with the first provider that answers.

    Exceptions other than ProviderError (including ones raised by ``on_delta``, such as a
    cancellation) propagate untouched.

    ``retry_after_s`` (a server's Retry-After) sets a floor on the next delay, capped at
    ``policy.max_delay_s`` so a worker slot is never parked for longer. When the server asks
    for more than that cap and another provider remains, waiting is pointless: we move to
    the next provider at once. With no provider left we wait the cap and try again.
    """
    if not providers:
        raise ValueError("complete_with_fallback needs at least one provider")
    rng = rng or random.Random()
    attempts: list[Attempt] = []
    last_error: ProviderError | None = None

    def check_stop(when: str) -> None:
        if should_stop is not None and should_stop():
            log.info("stopped %s", when)
            raise Stopped(attempts)

    for index, provider in enumerate(providers):
        following = providers[index + 1].name if index + 1 < len(providers) else None
        if index > 0:
            check_stop(f"before falling back to {provider.name}")
            PROVIDER_FALLBACKS.labels(providers[index - 1].name, provider.name).inc()
        for try_no in range(1, policy.max_attempts + 1):
            global_index = len(attempts)
            metadata = {**request.metadata, "attempt": global_index}
            attempt_request = request.model_copy(update={"metadata": metadata})
            try:
                result = provider.complete(attempt_request, on_delta=on_delta)
            except ProviderError as exc:
                last_error = exc
                PROVIDER_ERRORS.labels(provider.name, exc.kind.value).inc()
                record = Attempt(provider.name, global_index, str(exc), exc.kind.value, 0.0)
                attempts.append(record)
                if exc.permanent:
                    _log_give_up(provider.name, "a permanent error, not retried", exc, following)
                    break
                if try_no == policy.max_attempts:
                    why = f"attempt {try_no} of {policy.max_attempts} failed"
                    _log_give_up(provider.name, why, exc, following)
                    break
                delay = policy.backoff_s(try_no, rng)
                asked = exc.retry_after_s
                if asked is not None and asked > 0:
                    if asked > policy.max_delay_s and following is not None:
                        _log_give_up(
                            provider.name,
                            f"asked to wait {asked:.1f}s, more than the "
                            f"{policy.max_delay_s:.1f}s cap",
                            exc,
                            following,
                        )
                        break
                    delay = max(delay, min(asked, policy.max_delay_s))
                check_stop(f"before retrying {provider.name}")
                record.delay_s = delay
                capped = (
                    f" (asked for {asked:.1f}s, capped)"
                    if asked is not None and asked > policy.max_delay_s
                    else ""
                )
                log.info(
                    "provider %s: attempt %d of %d failed: %s; retrying in %.2fs%s",
                    provider.name,
                    try_no,
                    policy.max_attempts,
                    exc,
                    delay,
                    capped,
                )
                PROVIDER_RETRIES.labels(provider.name).inc()
                if delay > 0:
                    sleep(delay)
                check_stop(f"while waiting to retry {provider.name}")
                continue
            attempts.append(Attempt(provider.name, global_index, None, None, 0.0))
            return ResilientResult(
                result=result, provider=provider, attempts=attempts, fallbacks_used=index
            )
    assert last_error is not None  # the loops ran at least once and did not return
    raise AllProvidersFailed(attempts, last_error)


def _log_give_up(name: str, why: str, exc: ProviderError, following: str | None) -> None:
    then = f"falling back to {following}" if following else "no provider left, the call fails"
    log.warning("provider %s: giving up (%s): %s; %s", name, why, exc, then)


# --- building the chain -------------------------------------------------------------------

# Providers hold HTTP clients with connection pools: build each once per process and share
# it across worker threads. Keyed by settings too, so tests with other settings get theirs.
_CACHE: dict[tuple[str, str], LLMProvider | None] = {}
_CACHE_LOCK = threading.Lock()


def _cached_provider(settings: Settings, name: str, *, required: bool) -> LLMProvider | None:
    key = (name, settings.model_dump_json())
    with _CACHE_LOCK:
        if key in _CACHE:
            cached = _CACHE[key]
            if cached is not None or not required:
                return cached
        try:
            provider: LLMProvider | None = build_provider(settings, name)
        except (ProviderError, ValueError) as exc:
            if required:
                raise
            # A misconfigured fallback must not fail calls the primary can serve;
            # remembered as None so the warning is logged once.
            log.warning("fallback provider %s is unavailable, skipped: %s", name, exc)
            provider = None
        _CACHE[key] = provider
        return provider


def shared_provider(settings: Settings, name: str) -> LLMProvider:
    """The process's one provider called ``name`` for these settings (built on first use)."""
    provider = _cached_provider(settings, name, required=True)
    assert provider is not None  # required: a provider that cannot be built raised
    return provider


def provider_chain(
    settings: Settings, primary: str | None, fallbacks: Sequence[str]
) -> list[LLMProvider]:
    """The primary provider (default ``settings.llm_provider``) then the fallbacks, each
    name once, as shared cached instances.

    A primary this deployment has no settings for raises its ProviderError (kind
    ``not_configured``, naming the missing variable) at once, and an unknown name raises
    ValueError; a fallback that cannot be built (e.g. no API key) is skipped with a warning.
    """
    names: list[str] = []
    for name in (primary or settings.llm_provider, *fallbacks):
        if name and name not in names:
            names.append(name)
    chain: list[LLMProvider] = []
    for position, name in enumerate(names):
        provider = _cached_provider(settings, name, required=position == 0)
        if provider is not None:
            chain.append(provider)
    return chain


def clear_provider_cache() -> None:
    """Forget the built providers (tests; a settings reload)."""
    with _CACHE_LOCK:
        _CACHE.clear()
