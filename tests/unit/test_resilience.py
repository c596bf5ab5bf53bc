"""Retries, backoff and the provider fallback chain (docs/architecture.md)."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from podium.llm import (
    PERMANENT_KINDS,
    RETRYABLE_KINDS,
    ChatMessage,
    ChatRequest,
    ChatResult,
    DeltaCallback,
    LLMProvider,
    ProviderError,
    ProviderErrorKind,
    SimulatedProvider,
)
from podium.llm.resilience import (
    AllProvidersFailed,
    Attempt,
    RetryPolicy,
    Stopped,
    clear_provider_cache,
    complete_with_fallback,
    provider_chain,
)
from podium.settings import Settings

NO_JITTER = RetryPolicy(max_attempts=3, base_delay_s=0.5, max_delay_s=8.0, jitter=0.0)


def err(kind: ProviderErrorKind, provider: str = "fake", retry_after: float | None = None):
    return ProviderError(kind, "scripted", provider=provider, retry_after_s=retry_after)


class ScriptedProvider:
    """Fails with the scripted errors in order, then answers; records what it was sent."""

    def __init__(self, name: str, errors: list[ProviderError] | None = None) -> None:
        self.name = name
        self.errors = list(errors or [])
        self.requests: list[ChatRequest] = []

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        if on_delta is not None:
            on_delta(f"hello from {self.name}")
        return ChatResult(
            content=f"hello from {self.name}", provider=self.name, model=request.model
        )


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def request(**metadata: object) -> ChatRequest:
    return ChatRequest(
        model="m", messages=[ChatMessage(role="user", content="hi")], metadata=dict(metadata)
    )


def test_scripted_provider_is_an_llm_provider():
    assert isinstance(ScriptedProvider("x"), LLMProvider)


def test_success_first_time_needs_no_sleep():
    sleep = FakeSleep()
    out = complete_with_fallback([ScriptedProvider("a")], request(), policy=NO_JITTER, sleep=sleep)
    assert out.result.content == "hello from a"
    assert out.fallbacks_used == 0
    assert out.attempts == [Attempt("a", 0, None, None, 0.0)]
    assert sleep.delays == []


def test_retryable_errors_are_retried_with_exponential_backoff():
    a = ScriptedProvider("a", [err(ProviderErrorKind.RATE_LIMIT), err(ProviderErrorKind.SERVER)])
    sleep = FakeSleep()
    out = complete_with_fallback([a], request(), policy=NO_JITTER, sleep=sleep)
    assert out.provider is a
    assert sleep.delays == [0.5, 1.0]
    assert [(x.attempt, x.kind, x.delay_s) for x in out.attempts] == [
        (0, "rate_limit", 0.5),
        (1, "server", 1.0),
        (2, None, 0.0),
    ]


def test_backoff_is_capped_and_jittered_within_bounds():
    policy = RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=5.0, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.backoff_s(n, rng) for n in range(1, 9)]
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 <= delays[1] <= 2.4
    assert all(d <= 5.0 for d in delays)
    assert delays[-1] >= 4.0  # capped at 5, jitter only downwards from there
    assert RetryPolicy(jitter=0).backoff_s(1, rng) == 0.2


def test_retry_after_sets_a_floor_capped_at_max_delay():
    a = ScriptedProvider(
        "a",
        [
            err(ProviderErrorKind.RATE_LIMIT, retry_after=3.0),
            err(ProviderErrorKind.RATE_LIMIT, retry_after=60.0),
        ],
    )
    sleep = FakeSleep()
    out = complete_with_fallback([a], request(), policy=NO_JITTER, sleep=sleep)
    # 3s beats the 0.5s backoff; 60s is capped at max_delay since no other provider exists.
    assert sleep.delays == [3.0, 8.0]
    assert out.result.content == "hello from a"


def test_retry_after_beyond_the_cap_moves_to_the_fallback_at_once():
    a = ScriptedProvider("a", [err(ProviderErrorKind.RATE_LIMIT, retry_after=60.0)])
    b = ScriptedProvider("b")
    sleep = FakeSleep()
    out = complete_with_fallback([a, b], request(), policy=NO_JITTER, sleep=sleep)
    assert out.provider is b
    assert out.fallbacks_used == 1
    assert sleep.delays == []
    assert len(a.requests) == 1


def test_every_kind_is_either_retryable_or_permanent():
    assert set(ProviderErrorKind) == RETRYABLE_KINDS | PERMANENT_KINDS
    assert not RETRYABLE_KINDS & PERMANENT_KINDS
    for kind in ProviderErrorKind:
        error = err(kind)
        assert error.permanent is (not error.retryable)


@pytest.mark.parametrize(
    ("kind", "permanent"),
    [
        (ProviderErrorKind.RATE_LIMIT, False),
        (ProviderErrorKind.SERVER, False),
        (ProviderErrorKind.TIMEOUT, False),
        (ProviderErrorKind.CONNECTION, False),
        (ProviderErrorKind.BAD_REQUEST, True),
        (ProviderErrorKind.AUTH, True),
        (ProviderErrorKind.NOT_FOUND, True),
        (ProviderErrorKind.BILLING, True),
        (ProviderErrorKind.NOT_CONFIGURED, True),
    ],
)
def test_classification(kind, permanent):
    assert err(kind).permanent is permanent
    assert err(kind).retryable is not permanent


PERMANENT = [
    ProviderErrorKind.BAD_REQUEST,
    ProviderErrorKind.AUTH,
    ProviderErrorKind.NOT_FOUND,
    ProviderErrorKind.BILLING,
    ProviderErrorKind.NOT_CONFIGURED,
]


@pytest.mark.parametrize("kind", PERMANENT)
def test_permanent_error_of_the_only_provider_fails_after_one_try(kind):
    a = ScriptedProvider("a", [err(kind)] * 3)
    sleep = FakeSleep()
    with pytest.raises(AllProvidersFailed) as caught:
        complete_with_fallback([a], request(), policy=NO_JITTER, sleep=sleep)
    assert len(a.requests) == 1
    assert sleep.delays == []
    assert caught.value.last_error.kind is kind


def test_non_retryable_error_skips_straight_to_the_fallback():
    for kind in PERMANENT:
        a = ScriptedProvider("a", [err(kind)])
        b = ScriptedProvider("b")
        sleep = FakeSleep()
        out = complete_with_fallback([a, b], request(), policy=NO_JITTER, sleep=sleep)
        assert out.provider is b
        assert len(a.requests) == 1
        assert sleep.delays == []
        assert [x.provider for x in out.attempts] == ["a", "b"]


def test_exhausted_provider_falls_back_to_the_next():
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER)] * 3)
    b = ScriptedProvider("b")
    sleep = FakeSleep()
    out = complete_with_fallback([a, b], request(), policy=NO_JITTER, sleep=sleep)
    assert out.provider is b
    assert out.fallbacks_used == 1
    assert sleep.delays == [0.5, 1.0]  # no sleep when switching provider
    assert out.attempts[2].delay_s == 0.0


def test_all_failed_raises_with_the_full_attempt_log():
    a = ScriptedProvider("a", [err(ProviderErrorKind.TIMEOUT, "a")] * 3)
    b = ScriptedProvider(
        "b", [err(ProviderErrorKind.SERVER, "b"), err(ProviderErrorKind.AUTH, "b")]
    )
    with pytest.raises(AllProvidersFailed) as caught:
        complete_with_fallback([a, b], request(), policy=NO_JITTER, sleep=FakeSleep())
    failure = caught.value
    assert [(x.provider, x.attempt, x.kind) for x in failure.attempts] == [
        ("a", 0, "timeout"),
        ("a", 1, "timeout"),
        ("a", 2, "timeout"),
        ("b", 3, "server"),
        ("b", 4, "auth"),
    ]
    assert failure.last_error.kind is ProviderErrorKind.AUTH
    assert "a, b" in str(failure)
    assert all(x.error for x in failure.attempts)


def test_each_try_sees_the_global_attempt_index_and_the_caller_request_is_untouched():
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER)] * 2)
    b = ScriptedProvider("b", [err(ProviderErrorKind.SERVER)])
    original = request(agent="ada")
    complete_with_fallback(
        [a, ScriptedProvider("c", [err(ProviderErrorKind.BAD_REQUEST)]), b],
        original,
        policy=RetryPolicy(max_attempts=2, base_delay_s=0, jitter=0),
        sleep=FakeSleep(),
    )
    assert [r.metadata["attempt"] for r in a.requests] == [0, 1]
    assert [r.metadata["attempt"] for r in b.requests] == [3, 4]
    assert all(r.metadata["agent"] == "ada" for r in a.requests + b.requests)
    assert original.metadata == {"agent": "ada"}


def test_should_stop_before_a_retry_raises_stopped():
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER)] * 3)
    sleep = FakeSleep()
    with pytest.raises(Stopped) as caught:
        complete_with_fallback(
            [a], request(), policy=NO_JITTER, sleep=sleep, should_stop=lambda: True
        )
    assert len(a.requests) == 1
    assert sleep.delays == []
    assert len(caught.value.attempts) == 1


def test_should_stop_during_the_backoff_prevents_the_next_try():
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER)] * 3)
    b = ScriptedProvider("b")
    stopped = threading.Event()

    def sleep(seconds: float) -> None:
        stopped.set()  # e.g. the run was cancelled while we waited

    with pytest.raises(Stopped):
        complete_with_fallback(
            [a, b], request(), policy=NO_JITTER, sleep=sleep, should_stop=stopped.is_set
        )
    assert len(a.requests) == 1
    assert b.requests == []


def test_should_stop_is_checked_before_falling_back():
    checks: list[int] = []

    def should_stop() -> bool:
        checks.append(1)
        return False

    a = ScriptedProvider("a", [err(ProviderErrorKind.AUTH)])
    complete_with_fallback(
        [a, ScriptedProvider("b")], request(), policy=NO_JITTER, should_stop=should_stop
    )
    assert checks == [1]


# --- what the log says --------------------------------------------------------------------


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "podium.llm.resilience"
    ]


def test_log_retries_then_falls_back_naming_the_next_provider(caplog):
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER, "a")] * 3)
    sleep = FakeSleep()
    with caplog.at_level(logging.INFO, logger="podium.llm.resilience"):
        complete_with_fallback([a, ScriptedProvider("b")], request(), policy=NO_JITTER, sleep=sleep)
    assert _messages(caplog) == [
        ("INFO", "provider a: attempt 1 of 3 failed: a: server: scripted; retrying in 0.50s"),
        ("INFO", "provider a: attempt 2 of 3 failed: a: server: scripted; retrying in 1.00s"),
        (
            "WARNING",
            "provider a: giving up (attempt 3 of 3 failed): a: server: scripted; falling back to b",
        ),
    ]
    # Every "retrying in X" was followed by a sleep of X.
    assert sleep.delays == [0.5, 1.0]


def test_log_permanent_error_is_not_retried_and_the_call_fails(caplog):
    a = ScriptedProvider("a", [err(ProviderErrorKind.AUTH, "a")])
    sleep = FakeSleep()
    with (
        caplog.at_level(logging.INFO, logger="podium.llm.resilience"),
        pytest.raises(AllProvidersFailed),
    ):
        complete_with_fallback([a], request(), policy=NO_JITTER, sleep=sleep)
    assert _messages(caplog) == [
        (
            "WARNING",
            "provider a: giving up (a permanent error, not retried): a: auth: scripted; "
            "no provider left, the call fails",
        ),
    ]
    assert sleep.delays == []


def test_log_permanent_error_falls_back(caplog):
    a = ScriptedProvider("a", [err(ProviderErrorKind.NOT_FOUND, "a")])
    with caplog.at_level(logging.INFO, logger="podium.llm.resilience"):
        complete_with_fallback([a, ScriptedProvider("b")], request(), policy=NO_JITTER)
    assert _messages(caplog) == [
        (
            "WARNING",
            "provider a: giving up (a permanent error, not retried): a: not_found: scripted; "
            "falling back to b",
        ),
    ]


def test_log_retry_after_beyond_the_cap(caplog):
    long_wait = err(ProviderErrorKind.RATE_LIMIT, "a", retry_after=60.0)
    sleep = FakeSleep()
    with caplog.at_level(logging.INFO, logger="podium.llm.resilience"):
        # With a fallback: no wait at all.
        complete_with_fallback(
            [ScriptedProvider("a", [long_wait]), ScriptedProvider("b")],
            request(),
            policy=NO_JITTER,
            sleep=sleep,
        )
        # Alone: the capped wait, and the log says it was capped.
        complete_with_fallback(
            [ScriptedProvider("a", [long_wait])], request(), policy=NO_JITTER, sleep=sleep
        )
    assert _messages(caplog) == [
        (
            "WARNING",
            "provider a: giving up (asked to wait 60.0s, more than the 8.0s cap): "
            "a: rate_limit: scripted; falling back to b",
        ),
        (
            "INFO",
            "provider a: attempt 1 of 3 failed: a: rate_limit: scripted; retrying in 8.00s "
            "(asked for 60.0s, capped)",
        ),
    ]
    assert sleep.delays == [8.0]


def test_log_no_retrying_line_when_stopped_before_the_retry(caplog):
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER, "a")] * 3)
    with (
        caplog.at_level(logging.INFO, logger="podium.llm.resilience"),
        pytest.raises(Stopped),
    ):
        complete_with_fallback(
            [a], request(), policy=NO_JITTER, sleep=FakeSleep(), should_stop=lambda: True
        )
    assert _messages(caplog) == [("INFO", "stopped before retrying a")]


def test_log_says_when_stopped_during_the_backoff(caplog):
    a = ScriptedProvider("a", [err(ProviderErrorKind.SERVER, "a")] * 3)
    stopped = threading.Event()
    with (
        caplog.at_level(logging.INFO, logger="podium.llm.resilience"),
        pytest.raises(Stopped),
    ):
        complete_with_fallback(
            [a],
            request(),
            policy=NO_JITTER,
            sleep=lambda _s: stopped.set(),
            should_stop=stopped.is_set,
        )
    assert [m for _, m in _messages(caplog)][-1] == "stopped while waiting to retry a"


def test_other_exceptions_propagate_untouched():
    class Cancelled(Exception):
        pass

    def on_delta(_: str) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        complete_with_fallback(
            [ScriptedProvider("a")], request(), policy=NO_JITTER, on_delta=on_delta
        )


def test_deltas_are_streamed_to_the_callback():
    seen: list[str] = []
    complete_with_fallback(
        [ScriptedProvider("a")], request(), policy=NO_JITTER, on_delta=seen.append
    )
    assert seen == ["hello from a"]


def test_policy_and_inputs_are_validated():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)
    with pytest.raises(ValueError, match="at least one provider"):
        complete_with_fallback([], request(), policy=NO_JITTER)


def test_simulated_failing_primary_falls_back_to_a_healthy_simulated():
    broken = SimulatedProvider("sim-broken", error_rate=1.0, error_kind="server")
    healthy = SimulatedProvider("sim-healthy")
    sleep = FakeSleep()
    out = complete_with_fallback(
        [broken, healthy],
        request(),
        policy=RetryPolicy(max_attempts=3, base_delay_s=0.1, jitter=0.1),
        sleep=sleep,
        rng=random.Random(1),
    )
    assert out.result.provider == "sim-healthy"
    assert out.result.content.startswith("[simulated m]")
    assert [x.provider for x in out.attempts] == ["sim-broken"] * 3 + ["sim-healthy"]
    assert len(sleep.delays) == 2


def test_simulated_error_rate_retry_can_succeed_on_a_later_attempt():
    # The simulated provider's failure draw includes metadata["attempt"], so a retry of
    # the same request is a fresh draw: at 50% some attempt succeeds.
    flaky = SimulatedProvider("flaky", error_rate=0.5, seed=3)
    out = complete_with_fallback(
        [flaky],
        request(),
        policy=RetryPolicy(max_attempts=10, base_delay_s=0, jitter=0),
        sleep=FakeSleep(),
    )
    assert out.result.provider == "flaky"


# --- provider_chain ------------------------------------------------------------------------


@pytest.fixture
def fresh_cache():
    clear_provider_cache()
    yield
    clear_provider_cache()


def test_chain_dedupes_and_reuses_instances(fresh_cache):
    settings = Settings(_env_file=None, llm_provider="simulated")
    chain = provider_chain(settings, None, ["simulated", "simulated"])
    assert [p.name for p in chain] == ["simulated"]
    assert provider_chain(settings, "simulated", [])[0] is chain[0]


def test_chain_builds_in_order_and_skips_an_unbuildable_fallback(fresh_cache, monkeypatch, caplog):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = Settings(_env_file=None, anthropic_api_key=None)
    with caplog.at_level(logging.WARNING, logger="podium.llm.resilience"):
        chain = provider_chain(settings, "simulated", ["anthropic", "simulated"])
        assert [p.name for p in chain] == ["simulated"]
        provider_chain(settings, "simulated", ["anthropic"])
    # Warned once, not on every call.
    assert [r.getMessage() for r in caplog.records] == [
        "fallback provider anthropic is unavailable, skipped: "
        "anthropic: not_configured: PODIUM_ANTHROPIC_API_KEY is not set"
    ]


@pytest.mark.parametrize("fallbacks", [[], ["simulated"]])
def test_chain_raises_the_not_configured_error_of_its_primary_at_once(
    fresh_cache, monkeypatch, fallbacks
):
    # A ValueError here escaped the agent worker's provider-error handling: the call was
    # redelivered until it failed as "call_lost" minutes later.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = Settings(_env_file=None, anthropic_api_key=None)
    with pytest.raises(ProviderError) as caught:
        provider_chain(settings, "anthropic", fallbacks)
    error = caught.value
    assert error.kind is ProviderErrorKind.NOT_CONFIGURED
    assert error.permanent and not error.retryable
    assert error.provider == "anthropic"
    assert str(error) == "anthropic: not_configured: PODIUM_ANTHROPIC_API_KEY is not set"
    # The deployment default is the primary when the agent names none.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    openai_default = Settings(
        _env_file=None, llm_provider="openai", openai_api_key=None, openai_base_url=None
    )
    with pytest.raises(ProviderError) as caught:
        provider_chain(openai_default, None, fallbacks)
    assert str(caught.value) == "openai: not_configured: PODIUM_OPENAI_API_KEY is not set"


def test_chain_refuses_an_unknown_primary_name(fresh_cache):
    with pytest.raises(ValueError, match="unknown LLM provider 'gemini'"):
        provider_chain(Settings(_env_file=None), "gemini", [])


def test_chain_with_other_settings_gets_other_instances(fresh_cache):
    slow = provider_chain(Settings(_env_file=None, simulated_latency_ms=5), None, [])[0]
    fast = provider_chain(Settings(_env_file=None, simulated_latency_ms=0), None, [])[0]
    assert slow is not fast


def test_chain_is_safe_across_threads(fresh_cache):
    settings = Settings(_env_file=None)
    built: list[LLMProvider] = []
    lock = threading.Lock()

    def build() -> None:
        provider = provider_chain(settings, "simulated", [])[0]
        with lock:
            built.append(provider)

    threads = [threading.Thread(target=build) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in built}) == 1


def test_settings_parse_fallbacks_and_retry_knobs(monkeypatch):
    monkeypatch.setenv("PODIUM_PROVIDER_FALLBACKS", " openai, simulated ,,openai")
    monkeypatch.setenv("PODIUM_LLM_MAX_ATTEMPTS", "5")
    settings = Settings(_env_file=None)
    assert settings.fallback_providers == ["openai", "simulated"]
    policy = RetryPolicy.from_settings(settings)
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s) == (5, 0.2, 8.0)
    monkeypatch.setenv("PODIUM_PROVIDER_FALLBACKS", "opneai")
    with pytest.raises(ValueError, match="unknown provider"):
        Settings(_env_file=None)
