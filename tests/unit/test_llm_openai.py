"""OpenAIProvider against a local server speaking the chat-completions wire format."""

from __future__ import annotations

import email.utils
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
from podium.llm.openai_provider import OpenAIProvider, retry_after_seconds

MODEL = "gpt-test"


@dataclass
class Reply:
    status: int = 200
    json_body: dict[str, Any] | None = None
    # Server-sent events: each item becomes one `data:` line; `[DONE]` is appended.
    events: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # Pause this long after the first event (a stalled stream).
    stall_s: float = 0.0


class FakeOpenAI:
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
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
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
        fake: FakeOpenAI = self.server.fake  # type: ignore[attr-defined]
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
        for i, event in enumerate([*(reply.events or []), "[DONE]"]):
            data = event if isinstance(event, str) else json.dumps(event)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
            if i == 0 and reply.stall_s:
                time.sleep(reply.stall_s)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def _provider(server: FakeOpenAI) -> OpenAIProvider:
    return OpenAIProvider(base_url=server.url, api_key="sk-test")


def _request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="Say hello."),
        ],
        **kwargs,
    )


def _completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


DECIDE = ToolSpec(
    name="decide",
    description="Pick the next step.",
    parameters={
        "type": "object",
        "properties": {"choice": {"type": "string"}},
        "required": ["choice"],
    },
)


def test_non_streaming_text(server: FakeOpenAI) -> None:
    server.reply = Reply(json_body=_completion({"role": "assistant", "content": "Hello!"}))
    result = _provider(server).complete(_request(temperature=0.3, max_tokens=50))

    assert result.content == "Hello!"
    assert result.tool_calls == []
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 3)
    assert (result.provider, result.model, result.finish_reason) == ("openai", MODEL, "stop")
    assert result.ttft_ms is None

    [sent] = server.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == "Bearer sk-test"
    body = sent["body"]
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)
    assert "tools" not in body
    assert "tool_choice" not in body
    assert not body.get("stream")


def test_streaming_text_delivers_deltas_in_order_with_usage(server: FakeOpenAI) -> None:
    pieces = ["Hel", "lo", ", wor", "ld!"]
    server.reply = Reply(
        events=[
            _chunk({"role": "assistant", "content": ""}),
            *(_chunk({"content": p}) for p in pieces),
            _chunk({}, finish_reason="stop"),
            _usage_chunk(20, 4),
        ]
    )
    deltas: list[str] = []
    result = _provider(server).complete(_request(), on_delta=deltas.append)

    assert deltas == pieces
    assert result.content == "Hello, world!"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (20, 4)
    assert result.finish_reason == "stop"
    assert result.ttft_ms is not None
    assert result.ttft_ms >= 0
    body = server.requests[0]["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_tool_call_round_trip(server: FakeOpenAI) -> None:
    server.reply = Reply(
        json_body=_completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "decide", "arguments": '{"choice": "stop"}'},
                    }
                ],
            },
            finish_reason="tool_calls",
        )
    )
    history = [
        ChatMessage(role="user", content="Decide."),
        ChatMessage(
            role="assistant",
            tool_calls=[ToolCall(id="call_1", name="decide", arguments={"choice": "go"})],
        ),
        ChatMessage(role="tool", content="went", tool_call_id="call_1"),
    ]
    request = ChatRequest(model=MODEL, messages=history, tools=[DECIDE], tool_choice="decide")
    result = _provider(server).complete(request)

    assert result.tool_calls == [
        ToolCall(id="call_abc", name="decide", arguments={"choice": "stop"})
    ]
    assert result.content == ""
    assert result.finish_reason == "tool_calls"

    body = server.requests[0]["body"]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "decide",
                "description": "Pick the next step.",
                "parameters": DECIDE.parameters,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "decide"}}
    assistant, tool = body["messages"][1], body["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"choice": "go"}
    assert tool == {"role": "tool", "content": "went", "tool_call_id": "call_1"}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_plain_tool_choices_pass_through(server: FakeOpenAI, choice: str) -> None:
    server.reply = Reply(json_body=_completion({"role": "assistant", "content": "ok"}))
    _provider(server).complete(_request(tools=[DECIDE], tool_choice=choice))
    assert server.requests[0]["body"]["tool_choice"] == choice


def test_streamed_tool_call_fragments_are_assembled(server: FakeOpenAI) -> None:
    def call_delta(**function: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": function}]}

    server.reply = Reply(
        events=[
            _chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_xyz",
                            "type": "function",
                            "function": {"name": "decide", "arguments": ""},
                        }
                    ],
                }
            ),
            _chunk(call_delta(arguments='{"cho')),
            _chunk(call_delta(arguments='ice": "go"}')),
            _chunk({}, finish_reason="tool_calls"),
            _usage_chunk(30, 9),
        ]
    )
    deltas: list[str] = []
    result = _provider(server).complete(
        _request(tools=[DECIDE], tool_choice="required"), on_delta=deltas.append
    )
    assert deltas == []
    assert result.tool_calls == [ToolCall(id="call_xyz", name="decide", arguments={"choice": "go"})]
    assert result.finish_reason == "tool_calls"
    assert result.usage.output_tokens == 9


def test_invalid_tool_arguments_are_kept_raw(server: FakeOpenAI) -> None:
    server.reply = Reply(
        json_body=_completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_bad",
                        "type": "function",
                        "function": {"name": "decide", "arguments": '{"choice": '},
                    }
                ],
            },
            finish_reason="tool_calls",
        )
    )
    result = _provider(server).complete(_request(tools=[DECIDE]))
    assert result.tool_calls[0].arguments == {"_raw": '{"choice": '}


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def test_rate_limit_maps_with_retry_after(server: FakeOpenAI) -> None:
    server.reply = Reply(
        status=429, json_body=_error_body("slow down", "rate_limit"), headers={"Retry-After": "7"}
    )
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request())
    err = info.value
    assert err.kind is ProviderErrorKind.RATE_LIMIT
    assert err.retryable
    assert err.retry_after_s == 7.0
    assert err.status_code == 429
    assert err.provider == "openai"
    assert len(server.requests) == 1  # the SDK itself never retries


def test_rate_limit_while_streaming(server: FakeOpenAI) -> None:
    server.reply = Reply(
        status=429, json_body=_error_body("slow down", "rate_limit"), headers={"Retry-After": "2"}
    )
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=lambda _d: None)
    assert info.value.kind is ProviderErrorKind.RATE_LIMIT
    assert info.value.retry_after_s == 2.0


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("status", "error_type", "code", "kind"),
    [
        (500, "server_error", None, ProviderErrorKind.SERVER),
        (503, "server_error", None, ProviderErrorKind.SERVER),
        (408, "timeout", None, ProviderErrorKind.TIMEOUT),
        # What api.openai.com answers a wrong key, a project without access, an unknown
        # model, a malformed request and an exhausted account with.
        (401, "invalid_request_error", "invalid_api_key", ProviderErrorKind.AUTH),
        (403, "invalid_request_error", None, ProviderErrorKind.AUTH),
        (404, "invalid_request_error", "model_not_found", ProviderErrorKind.NOT_FOUND),
        (400, "invalid_request_error", None, ProviderErrorKind.BAD_REQUEST),
        (422, "invalid_request_error", None, ProviderErrorKind.BAD_REQUEST),
        (429, "insufficient_quota", "insufficient_quota", ProviderErrorKind.BILLING),
        (402, "billing", None, ProviderErrorKind.BILLING),
        # An OpenAI-compatible server that answers an unknown model with a 400.
        (400, "invalid_request_error", "model_not_found", ProviderErrorKind.NOT_FOUND),
        # A 404 without a code: the model or the endpoint (a base URL without /v1).
        (404, "error", None, ProviderErrorKind.NOT_FOUND),
    ],
)
def test_status_errors_map_to_kinds(
    server: FakeOpenAI,
    status: int,
    error_type: str,
    code: str | None,
    kind: ProviderErrorKind,
    streaming: bool,
) -> None:
    body = _error_body("nope", error_type)
    body["error"]["code"] = code
    server.reply = Reply(status=status, json_body=body, headers={"Retry-After": "3"})
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(), on_delta=(lambda _d: None) if streaming else None)
    err = info.value
    assert err.kind is kind
    assert err.status_code == status
    assert err.permanent is (status not in (408, 500, 503))
    assert err.retryable is not err.permanent
    # A server's Retry-After means nothing for an error no wait can fix.
    if err.permanent:
        assert err.retry_after_s is None
    elif kind is ProviderErrorKind.SERVER:
        assert err.retry_after_s == 3.0
    assert len(server.requests) == 1


def test_unknown_model_error_names_the_model(server: FakeOpenAI) -> None:
    body = _error_body("The model `gpt-test` does not exist", "invalid_request_error")
    body["error"]["code"] = "model_not_found"
    server.reply = Reply(status=404, json_body=body)
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request())
    assert str(info.value).startswith(
        "openai: not_found: model 'gpt-test' not found (or a wrong base URL): "
    )
    assert "does not exist" in str(info.value)


def test_slow_server_times_out(server: FakeOpenAI) -> None:
    server.reply = Reply(json_body=_completion({"role": "assistant", "content": "late"}), delay_s=1)
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(timeout_s=0.2))
    assert info.value.kind is ProviderErrorKind.TIMEOUT
    assert info.value.retryable
    assert time.monotonic() - started < 0.9


def test_stalled_stream_times_out(server: FakeOpenAI) -> None:
    server.reply = Reply(
        events=[_chunk({"role": "assistant", "content": "Hi"}), _chunk({"content": "!"})],
        stall_s=1,
    )
    deltas: list[str] = []
    with pytest.raises(ProviderError) as info:
        _provider(server).complete(_request(timeout_s=0.2), on_delta=deltas.append)
    assert info.value.kind is ProviderErrorKind.TIMEOUT
    assert deltas == ["Hi"]


def test_unreachable_server_is_a_connection_error() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as probe:
        port = probe.server_address[1]
    provider = OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test")
    with pytest.raises(ProviderError) as info:
        provider.complete(_request(timeout_s=2))
    assert info.value.kind is ProviderErrorKind.CONNECTION
    assert info.value.retryable


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds({"retry-after": future}) or 0) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_message_names_are_made_api_safe(server: FakeOpenAI) -> None:
    server.reply = Reply(json_body=_completion({"role": "assistant", "content": "ok"}))
    request = ChatRequest(
        model=MODEL, messages=[ChatMessage(role="user", content="hi", name="Dr. Who?")]
    )
    _provider(server).complete(request)
    assert server.requests[0]["body"]["messages"][0]["name"] == "Dr__Who_"
