"""OpenAI chat completions (and any OpenAI-compatible server) behind the provider interface.

The SDK's own retries are off (``max_retries=0``): retry and fallback policy belongs to the
caller, which sees every failure as a normalised ProviderError.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)

from podium.llm.base import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    DeltaCallback,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    Usage,
)

# --- helpers shared with the Anthropic provider ---------------------------------------------


def parse_tool_arguments(text: str) -> dict[str, Any]:
    """Models sometimes emit broken JSON; keep it visible instead of failing the call."""
    if not text.strip():
        return {}
    try:
        # strict=False: grammar-constrained local models sometimes put raw newlines in strings.
        value = json.loads(text, strict=False)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def estimated_usage(request: ChatRequest, content: str, calls: list[ToolCall]) -> Usage:
    """About four characters per token, for servers that do not report usage."""
    prompt = sum(len(m.content) for m in request.messages)
    output = len(content) + sum(len(json.dumps(c.arguments)) for c in calls)
    return Usage(
        input_tokens=max(1, math.ceil(prompt / 4)), output_tokens=max(1, math.ceil(output / 4))
    )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def kind_for_status(status: int) -> ProviderErrorKind:
    if status == 429:
        return ProviderErrorKind.RATE_LIMIT
    if status in (401, 403):
        return ProviderErrorKind.AUTH
    if status == 402:
        return ProviderErrorKind.BILLING
    if status == 404:
        return ProviderErrorKind.NOT_FOUND
    if status == 408:  # the server gave up waiting: a timeout, worth retrying
        return ProviderErrorKind.TIMEOUT
    if status >= 500:
        return ProviderErrorKind.SERVER
    return ProviderErrorKind.BAD_REQUEST


def not_found_message(model: str, message: str) -> str:
    # A 404 is the model nine times out of ten, but a base URL without its /v1 gives the
    # same answer: name both so the reader knows where to look.
    return f"model {model!r} not found (or a wrong base URL): {message}"


def transport_error_kind(exc: BaseException) -> ProviderErrorKind | None:
    """Classify an HTTP-library error the SDK let through (e.g. mid-stream read failures).

    Matched by class name so it works whichever httpx flavour the SDK version ships with.
    """
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.startswith("httpx")}
    if "TimeoutException" in names:
        return ProviderErrorKind.TIMEOUT
    if names & {"TransportError", "RequestError", "HTTPError"}:
        return ProviderErrorKind.CONNECTION
    return None


# --- the provider ------------------------------------------------------------------------------

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIProvider:
    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, name: str = "openai"
    ) -> None:
        self.name = name
        # Local OpenAI-compatible servers accept any key, but the SDK insists on one.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=0
        )

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        try:
            if on_delta is None:
                return self._complete_once(request)
            return self._complete_streaming(request, on_delta)
        except ProviderError:
            raise
        except Exception as exc:
            mapped = self._map_error(exc, request.model)
            if mapped is None:
                raise
            raise mapped from exc

    # --- request -------------------------------------------------------------------------

    def _messages(self, request: ChatRequest) -> list[ChatCompletionMessageParam]:
        return [self._message(m) for m in request.messages]

    def _message(self, msg: ChatMessage) -> ChatCompletionMessageParam:
        if msg.role == "system":
            return {"role": "system", "content": msg.content}
        if msg.role == "tool":
            if not msg.tool_call_id:
                raise ProviderError(
                    ProviderErrorKind.BAD_REQUEST,
                    "tool message without tool_call_id",
                    provider=self.name,
                )
            return {"role": "tool", "content": msg.content, "tool_call_id": msg.tool_call_id}
        if msg.role == "user":
            if msg.name:
                return {"role": "user", "content": msg.content, "name": _safe_name(msg.name)}
            return {"role": "user", "content": msg.content}
        if not msg.tool_calls:
            return {"role": "assistant", "content": msg.content}
        return {
            "role": "assistant",
            # The API wants null, not "", next to tool calls.
            "content": msg.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in msg.tool_calls
            ],
        }

    @staticmethod
    def _tools(request: ChatRequest) -> list[ChatCompletionFunctionToolParam]:
        tools: list[ChatCompletionFunctionToolParam] = []
        for spec in request.tools:
            tool: ChatCompletionFunctionToolParam = {
                "type": "function",
                "function": {"name": spec.name, "parameters": spec.parameters},
            }
            if spec.description:
                tool["function"]["description"] = spec.description
            tools.append(tool)
        return tools

    @staticmethod
    def _tool_choice(request: ChatRequest) -> ChatCompletionToolChoiceOptionParam:
        choice = request.tool_choice
        if choice == "auto":
            return "auto"
        if choice == "none":
            return "none"
        if choice == "required":
            return "required"
        return {"type": "function", "function": {"name": choice}}

    # --- calls ---------------------------------------------------------------------------

    def _complete_once(self, request: ChatRequest) -> ChatResult:
        tools = self._tools(request)
        response: ChatCompletion = self._client.chat.completions.create(
            model=request.model,
            messages=self._messages(request),
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            # tool_choice without tools is an API error, so both go or neither.
            tools=tools or openai.omit,
            tool_choice=self._tool_choice(request) if tools else openai.omit,
            stream=False,
            timeout=request.timeout_s,
        )
        if not response.choices:
            raise ProviderError(
                ProviderErrorKind.SERVER, "response had no choices", provider=self.name
            )
        choice = response.choices[0]
        calls: list[ToolCall] = []
        for raw in choice.message.tool_calls or []:
            if isinstance(raw, ChatCompletionMessageFunctionToolCall):
                args = parse_tool_arguments(raw.function.arguments)
                calls.append(ToolCall(id=raw.id, name=raw.function.name, arguments=args))
            else:  # a "custom" tool call carries free text, not JSON
                calls.append(
                    ToolCall(id=raw.id, name=raw.custom.name, arguments={"_raw": raw.custom.input})
                )
        usage = response.usage
        return ChatResult(
            content=choice.message.content or "",
            tool_calls=calls,
            usage=Usage(
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=usage.completion_tokens if usage else 0,
            ),
            provider=self.name,
            model=response.model or request.model,
            finish_reason=choice.finish_reason or "stop",
        )

    def _complete_streaming(self, request: ChatRequest, on_delta: DeltaCallback) -> ChatResult:
        started = time.monotonic()
        tools = self._tools(request)
        stream = self._client.chat.completions.create(
            model=request.model,
            messages=self._messages(request),
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            tools=tools or openai.omit,
            tool_choice=self._tool_choice(request) if tools else openai.omit,
            stream=True,
            stream_options={"include_usage": True},
            timeout=request.timeout_s,
        )
        text: list[str] = []
        partial: dict[int, _PartialCall] = {}
        usage: Usage | None = None
        finish_reason = "stop"
        model = request.model
        ttft_ms: float | None = None
        with stream:
            for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = Usage(
                        input_tokens=chunk.usage.prompt_tokens,
                        output_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    delta = choice.delta
                    if delta.content:
                        if ttft_ms is None:
                            ttft_ms = (time.monotonic() - started) * 1000.0
                        text.append(delta.content)
                        on_delta(delta.content)
                    for frag in delta.tool_calls or []:
                        # Fragments of one call share an index; id and name come first.
                        acc = partial.setdefault(frag.index, _PartialCall())
                        acc.id = acc.id or (frag.id or "")
                        if frag.function is not None:
                            # OpenAI sends the name once; some servers (llama.cpp) repeat it
                            # in every fragment. A name arriving whole is not a fragment.
                            name = frag.function.name or ""
                            if name and name != acc.name:
                                acc.name += name
                            acc.arguments.append(frag.function.arguments or "")
        calls = [
            ToolCall(
                id=acc.id or f"call_{index}",
                name=acc.name,
                arguments=parse_tool_arguments("".join(acc.arguments)),
            )
            for index, acc in sorted(partial.items())
        ]
        if usage is None:
            # Some servers (llama.cpp) ignore include_usage: estimate rather than report zero,
            # so budgets and cost caps still see the spend.
            usage = estimated_usage(request, "".join(text), calls)
        return ChatResult(
            content="".join(text),
            tool_calls=calls,
            usage=usage,
            provider=self.name,
            model=model,
            finish_reason=finish_reason,
            ttft_ms=ttft_ms,
        )

    # --- errors --------------------------------------------------------------------------

    def _map_error(self, exc: Exception, model: str) -> ProviderError | None:
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(ProviderErrorKind.TIMEOUT, str(exc), provider=self.name)
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(ProviderErrorKind.CONNECTION, str(exc), provider=self.name)
        if isinstance(exc, openai.APIStatusError):
            kind = kind_for_status(exc.status_code)
            if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                kind = ProviderErrorKind.AUTH
            elif exc.code == "model_not_found":
                # Some OpenAI-compatible servers answer an unknown model with a 400.
                kind = ProviderErrorKind.NOT_FOUND
            elif exc.code == "insufficient_quota":
                # Sent as a 429, but it is the account's credit, not a rate: no wait helps.
                kind = ProviderErrorKind.BILLING
            elif isinstance(exc, openai.RateLimitError):
                kind = ProviderErrorKind.RATE_LIMIT
            message = exc.message
            if kind is ProviderErrorKind.NOT_FOUND:
                message = not_found_message(model, message)
            retry_after = (
                retry_after_seconds(exc.response.headers)
                if kind is ProviderErrorKind.RATE_LIMIT or kind is ProviderErrorKind.SERVER
                else None
            )
            return ProviderError(
                kind,
                message,
                provider=self.name,
                status_code=exc.status_code,
                retry_after_s=retry_after,
            )
        if isinstance(exc, openai.OpenAIError):
            # Error events inside a stream and malformed responses: the server's fault.
            return ProviderError(ProviderErrorKind.SERVER, str(exc), provider=self.name)
        transport = transport_error_kind(exc)
        if transport is not None:
            return ProviderError(transport, f"{type(exc).__name__}: {exc}", provider=self.name)
        return None


def _safe_name(name: str) -> str:
    # The API only accepts [A-Za-z0-9_-]{1,64} for message names.
    return _NAME_UNSAFE.sub("_", name)[:64]
