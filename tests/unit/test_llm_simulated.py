"""The simulated provider: deterministic text, latency, error injection, scripts and tools."""

from __future__ import annotations

import time
from typing import Any

import pytest

from podium.llm import (
    ChatMessage,
    ChatRequest,
    LLMProvider,
    ProviderError,
    ProviderErrorKind,
    SimulatedProvider,
    ToolSpec,
    build_provider,
    missing_settings,
    not_set_message,
)
from podium.llm.guarded import Guarded
from podium.settings import Settings


def _request(prompt: str = "Summarise the quarterly report.", **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="simulated-1",
        messages=[
            ChatMessage(role="system", content="You are Ada, a careful analyst."),
            ChatMessage(role="user", content=prompt),
        ],
        **kwargs,
    )


DECIDE = ToolSpec(
    name="decide",
    description="Pick the next step.",
    parameters={
        "type": "object",
        "properties": {
            "choice": {"type": "string", "enum": ["continue", "stop"]},
            "rationale": {"type": "string"},
            "target": {"type": "string"},
            "count": {"type": "integer"},
            "score": {"type": "number"},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "optional_note": {"type": "string"},
        },
        "required": ["choice", "rationale", "target", "count", "score", "urgent", "tags"],
    },
)


def test_is_an_llm_provider() -> None:
    assert isinstance(SimulatedProvider(), LLMProvider)
    assert SimulatedProvider().name == "simulated"


def test_same_input_gives_same_output_and_different_prompts_differ() -> None:
    provider = SimulatedProvider(seed=7)
    first = provider.complete(_request())
    again = SimulatedProvider(seed=7).complete(_request())
    assert first == again
    others = {provider.complete(_request(f"Question number {i}?")).content for i in range(5)}
    assert len(others) == 5
    assert first.content not in others


def test_seed_changes_the_answer_but_stays_reproducible() -> None:
    answers = {SimulatedProvider(seed=s).complete(_request()).content for s in range(8)}
    assert len(answers) > 1


def test_content_is_labelled_short_and_mentions_agent_and_prompt() -> None:
    result = SimulatedProvider().complete(_request("Plan the launch of product X"))
    assert result.content.startswith("[simulated simulated-1]")
    assert "Ada" in result.content
    assert "Plan the launch of product X" in result.content
    assert len(result.content) < 400
    assert result.provider == "simulated"
    assert result.model == "simulated-1"
    assert result.finish_reason == "stop"
    assert result.ttft_ms is None


def test_agent_from_metadata_wins_and_long_prompts_are_cut() -> None:
    request = _request("word " * 500, metadata={"agent": "critic"})
    result = SimulatedProvider().complete(request)
    assert "critic" in result.content
    assert len(result.content) < 400


def test_usage_estimates_from_characters() -> None:
    request = _request("x" * 41)
    result = SimulatedProvider().complete(request)
    total_chars = sum(len(m.content) for m in request.messages)
    assert result.usage.input_tokens == -(-total_chars // 4)
    assert result.usage.output_tokens == -(-len(result.content) // 4)


def test_usage_is_at_least_one_token() -> None:
    request = ChatRequest(model="m", messages=[ChatMessage(role="user", content="")])
    result = SimulatedProvider().complete(
        request.model_copy(update={"metadata": {"script": [{"content": ""}]}})
    )
    assert result.usage.input_tokens == 1
    assert result.usage.output_tokens == 1


def test_streaming_deltas_concatenate_to_content() -> None:
    deltas: list[str] = []
    result = SimulatedProvider(stream_chunk_chars=5).complete(_request(), on_delta=deltas.append)
    assert "".join(deltas) == result.content
    assert all(len(d) <= 5 for d in deltas)
    assert len(deltas) > 3
    assert result.ttft_ms is not None
    # Streaming does not change the answer.
    assert result.content == SimulatedProvider().complete(_request()).content


def test_latency_is_spent_across_chunks() -> None:
    provider = SimulatedProvider(latency_ms=200, stream_chunk_chars=10)
    started = time.monotonic()
    result = provider.complete(_request(), on_delta=lambda _d: None)
    assert time.monotonic() - started >= 0.2
    # The first chunk arrives well before the whole latency has passed.
    assert result.ttft_ms is not None
    assert result.ttft_ms < 150

    started = time.monotonic()
    provider.complete(_request())
    assert time.monotonic() - started >= 0.2


def test_zero_latency_does_not_sleep() -> None:
    provider = SimulatedProvider(latency_ms=0)
    started = time.monotonic()
    provider.complete(_request(), on_delta=lambda _d: None)
    provider.complete(_request())
    assert time.monotonic() - started < 0.05


def test_error_rate_one_always_fails_and_zero_never() -> None:
    failing = SimulatedProvider(error_rate=1.0)
    for attempt in range(20):
        with pytest.raises(ProviderError) as info:
            failing.complete(_request(metadata={"attempt": attempt}))
        assert info.value.kind is ProviderErrorKind.RATE_LIMIT
        assert info.value.retryable
        assert info.value.provider == "simulated"
    healthy = SimulatedProvider(error_rate=0.0)
    for attempt in range(20):
        healthy.complete(_request(metadata={"attempt": attempt}))


def _failures(provider: SimulatedProvider, attempts: int) -> list[int]:
    failed = []
    for attempt in range(attempts):
        try:
            provider.complete(_request(metadata={"attempt": attempt}))
        except ProviderError:
            failed.append(attempt)
    return failed


def test_error_rate_half_is_roughly_half_and_reproducible() -> None:
    failed = _failures(SimulatedProvider(error_rate=0.5, seed=3), 200)
    assert 60 <= len(failed) <= 140
    assert failed == _failures(SimulatedProvider(error_rate=0.5, seed=3), 200)
    # A retry (next attempt number) can succeed where the previous one failed.
    assert any(a + 1 not in failed for a in failed)


@pytest.mark.parametrize("kind", ["server", "timeout"])
def test_error_kind_knob(kind: str) -> None:
    with pytest.raises(ProviderError) as info:
        SimulatedProvider(error_rate=1.0, error_kind=kind).complete(_request())
    assert info.value.kind == ProviderErrorKind(kind)


@pytest.mark.parametrize(
    ("forced", "retryable", "status"),
    [
        ("rate_limit", True, 429),
        ("server", True, 503),
        ("timeout", True, None),
        ("bad_request", False, 400),
        ("not_found", False, 404),
    ],
)
def test_simulate_error_forces_every_call(forced: str, retryable: bool, status: int | None) -> None:
    provider = SimulatedProvider()
    for attempt in range(3):
        with pytest.raises(ProviderError) as info:
            provider.complete(_request(metadata={"simulate_error": forced, "attempt": attempt}))
        assert info.value.kind == ProviderErrorKind(forced)
        assert info.value.retryable is retryable
        assert info.value.status_code == status


def test_script_steps_return_scripted_tool_calls() -> None:
    script = [
        {"content": "Let me search.", "tool_calls": [{"name": "search", "arguments": {"q": "x"}}]},
        {"content": "Done searching."},
    ]
    provider = SimulatedProvider()
    first = provider.complete(_request(metadata={"script": script}))
    assert first.content == "Let me search."
    assert first.finish_reason == "tool_calls"
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert (call.name, call.arguments) == ("search", {"q": "x"})
    assert call.id.startswith("call_")
    assert first == provider.complete(_request(metadata={"script": script}))

    second = provider.complete(_request(metadata={"script": script, "script_step": 1}))
    assert second.content == "Done searching."
    assert second.tool_calls == []
    # Steps past the end repeat the last entry.
    assert provider.complete(_request(metadata={"script": script, "script_step": 9})) == second


def test_tool_call_ids_are_unique_across_a_conversation() -> None:
    script = [{"tool_calls": [{"name": "a"}, {"name": "b"}]}]
    provider = SimulatedProvider(script=script)
    first = provider.complete(_request())
    ids = [c.id for c in first.tool_calls]
    assert len(set(ids)) == 2
    follow_up = _request().model_copy(
        update={
            "messages": [
                *_request().messages,
                ChatMessage(role="assistant", tool_calls=first.tool_calls),
                ChatMessage(role="tool", content="ok", tool_call_id=ids[0]),
                ChatMessage(role="tool", content="ok", tool_call_id=ids[1]),
            ]
        }
    )
    later = provider.complete(follow_up)
    assert not {c.id for c in later.tool_calls} & set(ids)


def test_constructor_script_is_used_and_request_script_overrides() -> None:
    provider = SimulatedProvider(script=[{"content": "from the constructor"}])
    assert provider.complete(_request()).content == "from the constructor"
    overridden = provider.complete(_request(metadata={"script": [{"content": "from request"}]}))
    assert overridden.content == "from request"


def _check_against_schema(value: Any, schema: dict[str, Any]) -> None:
    if "enum" in schema:
        assert value in schema["enum"]
        return
    expected: type[Any] = {
        "string": str,
        "integer": int,
        "number": float,
        "boolean": bool,
        "array": list,
        "object": dict,
    }[schema["type"]]
    assert isinstance(value, expected)
    if schema["type"] == "object":
        for name in schema.get("required", []):
            assert name in value
        for name, item in value.items():
            _check_against_schema(item, schema["properties"][name])
    if schema["type"] == "array":
        for item in value:
            _check_against_schema(item, schema["items"])


def test_forced_tool_choice_builds_schema_valid_arguments() -> None:
    request = _request(tools=[DECIDE], tool_choice="decide")
    result = SimulatedProvider().complete(request)
    assert result.content == ""
    assert result.finish_reason == "tool_calls"
    [call] = result.tool_calls
    assert call.name == "decide"
    _check_against_schema(call.arguments, DECIDE.parameters)
    args = call.arguments
    assert args["choice"] == "continue"
    assert "simulated" in args["rationale"].lower()
    assert (args["count"], args["score"], args["urgent"], args["tags"]) == (1, 0.0, False, [])
    assert "optional_note" not in args  # only required properties when some are required
    assert result == SimulatedProvider().complete(request)


def test_forced_tool_without_required_fills_all_properties() -> None:
    tool = ToolSpec(
        name="note",
        parameters={
            "type": "object",
            "properties": {"text": {"type": "string"}, "priority": {"type": "integer"}},
        },
    )
    [call] = SimulatedProvider().complete(_request(tools=[tool], tool_choice="note")).tool_calls
    assert set(call.arguments) == {"text", "priority"}


def test_auto_and_none_tool_choice_answer_in_text() -> None:
    for choice in ("auto", "none"):
        result = SimulatedProvider().complete(_request(tools=[DECIDE], tool_choice=choice))
        assert result.tool_calls == []
        assert "simulated" in result.content


def test_unknown_forced_tool_is_a_bad_request() -> None:
    with pytest.raises(ProviderError) as info:
        SimulatedProvider().complete(_request(tools=[DECIDE], tool_choice="missing"))
    assert info.value.kind is ProviderErrorKind.BAD_REQUEST


def test_invalid_knobs_are_rejected() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        SimulatedProvider(error_rate=1.5)
    with pytest.raises(ValueError, match="stream_chunk_chars"):
        SimulatedProvider(stream_chunk_chars=0)


# --- build_provider ---------------------------------------------------------------------------


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_build_simulated_from_settings() -> None:
    settings = _settings(
        simulated_latency_ms=0,
        simulated_error_rate=0.25,
        simulated_stream_chunk_chars=7,
        simulated_seed=42,
    )
    provider = build_provider(settings)
    assert isinstance(provider, Guarded) and isinstance(provider.inner, SimulatedProvider)
    assert (provider.latency_ms, provider.error_rate) == (0, 0.25)
    assert (provider.stream_chunk_chars, provider.seed) == (7, 42)


def test_build_unknown_provider_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="simulated, openai, anthropic"):
        build_provider(_settings(), "gemini")


@pytest.fixture
def no_sdk_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for sdk in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(sdk, raising=False)
        monkeypatch.delenv(f"PODIUM_{sdk}", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("provider", "setting"),
    [("anthropic", "PODIUM_ANTHROPIC_API_KEY"), ("openai", "PODIUM_OPENAI_API_KEY")],
)
def test_build_without_key_is_a_not_configured_error_naming_the_setting(
    no_sdk_env: pytest.MonkeyPatch, provider: str, setting: str
) -> None:
    with pytest.raises(ProviderError) as info:
        build_provider(_settings(), provider)
    error = info.value
    assert error.kind is ProviderErrorKind.NOT_CONFIGURED
    assert error.permanent
    assert error.provider == provider
    assert str(error) == f"{provider}: not_configured: {setting} is not set"
    # The deployment default when no name is given.
    with pytest.raises(ProviderError, match=f"{setting} is not set"):
        build_provider(_settings(llm_provider=provider))


def test_missing_settings(no_sdk_env: pytest.MonkeyPatch) -> None:
    bare = _settings()
    assert missing_settings(bare, "simulated") == []
    assert missing_settings(bare, "openai") == ["PODIUM_OPENAI_API_KEY"]
    assert missing_settings(bare, "anthropic") == ["PODIUM_ANTHROPIC_API_KEY"]
    assert missing_settings(_settings(openai_api_key="sk-x"), "openai") == []
    assert missing_settings(_settings(anthropic_api_key="sk-ant-x"), "anthropic") == []
    # A self-hosted OpenAI-compatible server needs no key; Anthropic always does.
    assert missing_settings(_settings(openai_base_url="http://127.0.0.1:9/v1"), "openai") == []
    with_url = _settings(anthropic_base_url="http://127.0.0.1:9")
    assert missing_settings(with_url, "anthropic") == ["PODIUM_ANTHROPIC_API_KEY"]
    # The SDKs' own variables count: the providers fall back to them.
    no_sdk_env.setenv("OPENAI_API_KEY", "sk-x")
    no_sdk_env.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    assert missing_settings(bare, "openai") == []
    assert missing_settings(bare, "anthropic") == []
    no_sdk_env.delenv("OPENAI_API_KEY")
    no_sdk_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert missing_settings(bare, "openai") == []
    with pytest.raises(ValueError, match="unknown LLM provider 'gemini'"):
        missing_settings(bare, "gemini")


def test_not_set_message() -> None:
    assert not_set_message(["A"]) == "A is not set"
    assert not_set_message(["A", "B", "C"]) == "A, B and C are not set"


def test_build_remote_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    provider = build_provider(_settings(anthropic_base_url="http://127.0.0.1:9"), "anthropic")
    assert provider.name == "anthropic"
    openai_provider = build_provider(_settings(openai_base_url="http://127.0.0.1:9/v1"), "openai")
    assert openai_provider.name == "openai"
