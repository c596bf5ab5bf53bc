"""AnthropicProvider against a local server speaking the Messages API wire format."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium.llm import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolSpec,
)
from podium.llm.anthropic_provider import AnthropicProvider

MODEL = "claude-test"


@dataclass
class Reply:
    status: int = 200
    json_body: dict[str, Any] | None = None
    # Server-sent events as (event name, data) pairs.
    events: list[tuple[str, dict[str, Any]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # Pause this long after the first event (a stalled stream).
    stall_s: float = 0.0


class FakeAnthropic:
    def __init__(self) -> None:
        self.reply = Reply()
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        # A short poll interval keeps shutdown (and so each test) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        fake: FakeAnthropic = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        fake.requests.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": json.loads(raw or b"{}"),
            }
        )
        reply = fake.reply
        time.sleep(reply.delay_s)
        try:
            if reply.events is not None:
                self._send_events(reply)
            else:
                self._send_json(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def _send_json(self, reply: Reply) -> None:
        payload = json.dumps(reply.json_body or {}).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_events(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for i, (name, data) in enumerate(reply.events or []):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            if i == 0 and reply.stall_s:
                time.sleep(reply.stall_s)


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def _provider(server: FakeAnthropic) -> AnthropicProvider:
    return AnthropicProvider(api_key="sk-ant-test", base_url=server.url)


def _request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="Say hello."),
        ],
        **kwargs,
    )


def _message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", usage: tuple[int, int] = (11, 4)
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _stream(
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 25,
    output_tokens: int = 6,
) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence of one streamed message: each block is (start, deltas)."""
    start = _message([], stop_reason="", usage=(input_tokens, 1))
    start["stop_reason"] = None
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, (block, deltas) in enumerate(blocks):
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


DECIDE = ToolSpec(
    name="decide",
    description="Pick the next step.",
    parameters={
        "type": "object",
        "properties": {"choice": {"type": "string"}},
        "required": ["choice"],
    },
)


def test_non_streaming_text(server: FakeAnthropic) -> None:
    server.reply = Reply(json_body=_message([{"type": "text", "text": "Hello!"}]))
    result = _provider(server).complete(_request(max_tokens=64))

    assert result.content == "Hello!"
    assert result.tool_calls == []
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 4)
    assert (result.provider, result.model, result.finish_reason) == ("anthropic", MODEL, "stop")
    assert result.ttft_ms is None

    [sent] = server.requests
    assert sent["path"] == "/v1/messages"
    # Older SDKs send the key as x-api-key, newer ones as a bearer token.
    headers = sent["headers"]
    sent_key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert sent_key == "sk-ant-test"
    assert "anthropic-version" in sent["headers"]
    body = sent["body"]
    assert body["model"] == MODEL
    assert body["max_tokens"] == 64
    assert body["system"] == "You are terse."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}
    ]
    assert "tools" not in body
    assert "tool_choice" not in body
    assert not body.get("stream")


def test_streaming_text_delivers_deltas_in_order_with_usage(server: FakeAnthropic) -> None:
    pieces = ["Hel", "lo", ", wor", "ld!"]
    server.reply = Reply(
        events=_stream(
            [({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces])],
            input_tokens=25,
            output_tokens=6,
        )
    )
    deltas: list[str] = []
    result = _provider(server).complete(_request(), on_delta=deltas.append)

    assert deltas == pieces
    assert result.content == "Hello, world!"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (25, 6)
    assert result.finish_reason == "stop"
    assert result.ttft_ms is not None
    assert server.requests[0]["body"]["stream"] is True


def test_tool_call_round_trip(server: FakeAnthropic) -> None:
    server.reply = Reply(
        json_body=_message(
            [
                {"type": "text", "text": "Deciding."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "decide",
                    "input": {"choice": "stop"},
                },
            ],
            stop_reason="tool_use",
        )
    )
    history = [
        ChatMessage(role="system", content="Be decisive."),
        ChatMessage(role="user", content="Decide."),
        ChatMessage(
            role="assistant",
            content="First try.",
            tool_calls=[ToolCall(id="toolu_0", name="decide", arguments={"choice": "go"})],
        ),
        ChatMessage(role="tool", content="went", tool_call_id="toolu_0"),
        ChatMessage(role="user", content="And now?"),
    ]
    request = ChatRequest(model=MODEL, messages=history, tools=[DECIDE], tool_choice="decide")
    result = _provider(server).complete(request)

    assert result.content == "Deciding."
    assert result.tool_calls == [
        ToolCall(id="toolu_1", name="decide", arguments={"choice": "stop"})
    ]
    assert result.finish_reason == "tool_calls"

    body = server.requests[0]["body"]
    assert body["tools"] == [
        {"name": "decide", "description": "Pick the next step.", "input_schema": DECIDE.parameters}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "decide"}
    assert body["system"] == "Be decisive."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Decide."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "First try."},
                {"type": "tool_use", "id": "toolu_0", "name": "decide", "input": {"choice": "go"}},
            ],
        },
        # The tool result and the next user turn share one user message, result first.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "went"},
                {"type": "text", "text": "And now?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"})],
)
def test_tool_choice_mapping(server: FakeAnthropic, choice: str, expected: dict[str, str]) -> None:
    server.reply = Reply(json_body=_message([{"type": "text", "text": "ok"}]))
    _provider(server).complete(_request(tools=[DECIDE], tool_choice=choice))
    body = server.requests[0]["body"]
    assert body["tool_choice"] == expected
    assert body["tools"][0]["name"] == "decide"


def test_tool_choice_none_omits_tools(server: FakeAnthropic) -> None:
    server.reply = Reply(json_body=_message([{"type": "text", "text": "ok"}]))
    _provider(server).complete(_request(tools=[DECIDE], tool_choice="none"))
    body = server.requests[0]["body"]
    assert "tools" not in body
    assert "tool_choice" not in body


def test_tool_choice_none_with_tool_history_keeps_tools_declared(server: FakeAnthropic) -> None:
    # The API refuses tool_use/tool_result blocks unless their tools are declared.
    server.reply = Reply(json_body=_message([{"type": "text", "text": "ok"}]))
    history = [
        ChatMessage(role="user", content="Decide."),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="toolu_0", name="decide")]),
        ChatMessage(role="tool", content="done", tool_call_id="toolu_0"),
    ]
    request = ChatRequest(model=MODEL, messages=history, tools=[DECIDE], tool_choice="none")
    _provider(server).complete(request)
    body = server.requests[0]["body"]
    assert body["tool_choice"] == {"type": "none"}
    assert body["tools"][0]["name"] == "decide"


def test_streamed_tool_use_is_assembled(server: FakeAnthropic) -> None:
    server.reply = Reply(
        events=_stream(
            [
                (
                    {"type": "tool_use", "id": "toolu_9", "name": "decide", "input": {}},
                    [
                        {"type": "input_json_delta", "partial_json": '{"cho'},
                        {"type": "input_json_delta", "partial_json": 'ice": "go"}'},
                    ],
                )
            ],
            stop_reason="tool_use",
        )
    )
    deltas: list[str] = []
    result = _provider(server).complete(
        _request(tools=[DECIDE], tool_choice="required"), on_delta=deltas.append
    )
    assert deltas == []
    assert result.tool_calls == [ToolCall(id="toolu_9", name="decide", arguments={"choice": "go"})]
    assert result.finish_reason == "tool_calls"


def _error_body(kind: str, message: str = "nope") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def test_rate_limit_maps_with_retry_after(server: FakeAnthropic) -> None:
    server.reply = Reply(
        status=429, json_body=_error_body("rate_limit_error"), headers={"Retry-After": "7"}
    )
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request())
    err = info.value
    assert err.kind is ProviderErrorKind.RATE_LIMIT
    assert err.retryable
    assert err.retry_after_s == 7.0
    assert err.status_code == 429
    assert err.provider == "anthropic"
    assert len(server.requests) == 1  # the SDK itself never retries


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("status", "error_type", "kind", "retryable"),
    [
        (500, "api_error", ProviderErrorKind.SERVER, True),
        (529, "overloaded_error", ProviderErrorKind.SERVER, True),
        (401, "authentication_error", ProviderErrorKind.AUTH, False),
        (403, "permission_error", ProviderErrorKind.AUTH, False),
        (404, "not_found_error", ProviderErrorKind.NOT_FOUND, False),
        (400, "invalid_request_error", ProviderErrorKind.BAD_REQUEST, False),
        (413, "invalid_request_error", ProviderErrorKind.BAD_REQUEST, False),
        (402, "billing_error", ProviderErrorKind.BILLING, False),
    ],
)
def test_status_errors_map_to_kinds(
    server: FakeAnthropic,
    status: int,
    error_type: str,
    kind: ProviderErrorKind,
    retryable: bool,
    streaming: bool,
) -> None:
    server.reply = Reply(
        status=status, json_body=_error_body(error_type), headers={"Retry-After": "3"}
    )
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=(lambda _d: None) if streaming else None)
    err = info.value
    assert err.kind is kind
    assert err.retryable is retryable
    assert err.permanent is not retryable
    assert err.status_code == status
    # A server's Retry-After means nothing for an error no wait can fix.
    assert err.retry_after_s == (3.0 if retryable else None)
    assert len(server.requests) == 1


def test_unknown_model_error_names_the_model(server: FakeAnthropic) -> None:
    server.reply = Reply(status=404, json_body=_error_body("not_found_error", "model: claude-x"))
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request())
    assert str(info.value) == (
        "anthropic: not_found: model 'claude-test' not found (or a wrong base URL): model: claude-x"
    )


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("authentication_error", ProviderErrorKind.AUTH),
        ("not_found_error", ProviderErrorKind.NOT_FOUND),
        ("billing_error", ProviderErrorKind.BILLING),
        ("overloaded_error", ProviderErrorKind.SERVER),
    ],
)
def test_error_event_types_inside_a_stream_map_to_kinds(
    server: FakeAnthropic, error_type: str, kind: ProviderErrorKind
) -> None:
    events = _stream([({"type": "text", "text": ""}, [{"type": "text_delta", "text": "Hi"}])])
    server.reply = Reply(events=[*events[:4], ("error", _error_body(error_type))])
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=lambda _d: None)
    assert info.value.kind is kind


def test_status_error_while_streaming(server: FakeAnthropic) -> None:
    server.reply = Reply(status=529, json_body=_error_body("overloaded_error"))
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=lambda _d: None)
    assert info.value.kind is ProviderErrorKind.SERVER


def test_error_event_inside_a_stream(server: FakeAnthropic) -> None:
    events = _stream([({"type": "text", "text": ""}, [{"type": "text_delta", "text": "Hi"}])])
    server.reply = Reply(events=[*events[:4], ("error", _error_body("overloaded_error"))])
    deltas: list[str] = []
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=deltas.append)
    assert info.value.kind is ProviderErrorKind.SERVER
    assert info.value.retryable
    assert deltas == ["Hi"]


def test_slow_server_times_out(server: FakeAnthropic) -> None:
    server.reply = Reply(json_body=_message([{"type": "text", "text": "late"}]), delay_s=1)
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(timeout_s=0.2))
    assert info.value.kind is ProviderErrorKind.TIMEOUT
    assert info.value.retryable
    assert time.monotonic() - started < 0.9


def test_stalled_stream_times_out(server: FakeAnthropic) -> None:
    server.reply = Reply(
        events=_stream([({"type": "text", "text": ""}, [{"type": "text_delta", "text": "Hi"}])]),
        stall_s=1,
    )
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(timeout_s=0.2), on_delta=lambda _d: None)
    assert info.value.kind is ProviderErrorKind.TIMEOUT


def test_unreachable_server_is_a_connection_error() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as probe:
        port = probe.server_address[1]
    provider = AnthropicProvider(api_key="sk-ant-test", base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as info:
        provider.complete(_request(timeout_s=2))
    assert info.value.kind is ProviderErrorKind.CONNECTION
