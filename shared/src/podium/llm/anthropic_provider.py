"""Anthropic Messages API behind the provider interface.

As with OpenAI, SDK retries are off so the caller's retry policy is the only one.
``request.temperature`` is not sent: the installed SDK (2.x) has no sampling parameters on
``messages.create``.
"""

from __future__ import annotations

import time

import anthropic
from anthropic.types import (
    Message,
    MessageParam,
    TextBlock,
    TextBlockParam,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
)

from podium.llm.base import (
    ChatRequest,
    ChatResult,
    DeltaCallback,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    Usage,
)
from podium.llm.openai_provider import (
    kind_for_status,
    not_found_message,
    retry_after_seconds,
    transport_error_kind,
)

_Block = TextBlockParam | ToolUseBlockParam | ToolResultBlockParam

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# `error.type` of an error event sent inside an otherwise successful (HTTP 200) stream.
_STREAM_ERROR_KINDS = {
    "rate_limit_error": ProviderErrorKind.RATE_LIMIT,
    "overloaded_error": ProviderErrorKind.SERVER,
    "api_error": ProviderErrorKind.SERVER,
    "timeout_error": ProviderErrorKind.TIMEOUT,
    "invalid_request_error": ProviderErrorKind.BAD_REQUEST,
    "authentication_error": ProviderErrorKind.AUTH,
    "permission_error": ProviderErrorKind.AUTH,
    "not_found_error": ProviderErrorKind.NOT_FOUND,
    "billing_error": ProviderErrorKind.BILLING,
}


class AnthropicProvider:
    def __init__(self, api_key: str, base_url: str | None = None, name: str = "anthropic") -> None:
        self.name = name
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0)

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

    @staticmethod
    def _system(request: ChatRequest) -> str:
        return "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)

    def _messages(self, request: ChatRequest) -> list[MessageParam]:
        """Turns as block lists; adjacent same-role turns merged (tool results are user turns)."""
        turns: list[tuple[str, list[_Block]]] = []
        for msg in request.messages:
            blocks: list[_Block] = []
            if msg.role == "system":
                continue
            if msg.role == "tool":
                if not msg.tool_call_id:
                    raise ProviderError(
                        ProviderErrorKind.BAD_REQUEST,
                        "tool message without tool_call_id",
                        provider=self.name,
                    )
                blocks.append(
                    {"type": "tool_result", "tool_use_id": msg.tool_call_id, "content": msg.content}
                )
                role = "user"
            else:
                role = msg.role
                # The API rejects empty text blocks.
                if msg.content:
                    blocks.append({"type": "text", "text": msg.content})
                for call in msg.tool_calls if msg.role == "assistant" else []:
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": call.arguments,
                        }
                    )
            if not blocks:
                continue
            if turns and turns[-1][0] == role:
                turns[-1][1].extend(blocks)
            else:
                turns.append((role, blocks))
        out: list[MessageParam] = []
        for role, blocks in turns:
            if role == "assistant":
                out.append({"role": "assistant", "content": blocks})
            else:
                out.append({"role": "user", "content": blocks})
        return out

    @staticmethod
    def _tools(request: ChatRequest) -> list[ToolParam]:
        tools: list[ToolParam] = []
        for spec in request.tools:
            tool: ToolParam = {"name": spec.name, "input_schema": spec.parameters}
            if spec.description:
                tool["description"] = spec.description
            tools.append(tool)
        return tools

    def _tool_options(
        self, request: ChatRequest, messages: list[MessageParam]
    ) -> tuple[list[ToolParam] | anthropic.Omit, ToolChoiceParam | anthropic.Omit]:
        tools = self._tools(request)
        if not tools:
            return anthropic.omit, anthropic.omit
        choice = request.tool_choice
        if choice == "none":
            # Dropping the tools is the portable "no tools"; but a history with tool blocks
            # needs its tools declared, and then {"type": "none"} says not to call them.
            if _has_tool_blocks(messages):
                return tools, {"type": "none"}
            return anthropic.omit, anthropic.omit
        if choice == "auto":
            return tools, {"type": "auto"}
        if choice == "required":
            return tools, {"type": "any"}
        return tools, {"type": "tool", "name": choice}

    # --- calls ---------------------------------------------------------------------------

    def _complete_once(self, request: ChatRequest) -> ChatResult:
        messages = self._messages(request)
        tools, tool_choice = self._tool_options(request, messages)
        system = self._system(request)
        message = self._client.messages.create(
            model=request.model,
            messages=messages,
            system=system or anthropic.omit,
            max_tokens=request.max_tokens,
            tools=tools,
            tool_choice=tool_choice,
            stream=False,
            timeout=request.timeout_s,
        )
        return self._result(message, request, ttft_ms=None)

    def _complete_streaming(self, request: ChatRequest, on_delta: DeltaCallback) -> ChatResult:
        started = time.monotonic()
        messages = self._messages(request)
        tools, tool_choice = self._tool_options(request, messages)
        system = self._system(request)
        ttft_ms: float | None = None
        with self._client.messages.stream(
            model=request.model,
            messages=messages,
            system=system or anthropic.omit,
            max_tokens=request.max_tokens,
            tools=tools,
            tool_choice=tool_choice,
            timeout=request.timeout_s,
        ) as stream:
            for text in stream.text_stream:
                if not text:
                    continue
                if ttft_ms is None:
                    ttft_ms = (time.monotonic() - started) * 1000.0
                on_delta(text)
            final = stream.get_final_message()
        return self._result(final, request, ttft_ms=ttft_ms)

    def _result(
        self, message: Message, request: ChatRequest, *, ttft_ms: float | None
    ) -> ChatResult:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolUseBlock):
                calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input)))
        usage = message.usage
        # Cached prompt tokens are billed separately but are still input the model read.
        input_tokens = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        stop = message.stop_reason
        return ChatResult(
            content="".join(text),
            tool_calls=calls,
            usage=Usage(input_tokens=input_tokens, output_tokens=usage.output_tokens),
            provider=self.name,
            model=message.model or request.model,
            finish_reason=_FINISH_REASONS.get(stop, stop) if stop else "stop",
            ttft_ms=ttft_ms,
        )

    # --- errors --------------------------------------------------------------------------

    def _map_error(self, exc: Exception, model: str) -> ProviderError | None:
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderError(ProviderErrorKind.TIMEOUT, str(exc), provider=self.name)
        if isinstance(exc, anthropic.APIConnectionError):
            return ProviderError(ProviderErrorKind.CONNECTION, str(exc), provider=self.name)
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            if status < 400:  # an error event inside a 200 stream
                kind = _STREAM_ERROR_KINDS.get(exc.type or "", ProviderErrorKind.SERVER)
            elif status == 529 or isinstance(exc, anthropic.InternalServerError):
                kind = ProviderErrorKind.SERVER
            else:
                kind = kind_for_status(status)
            message = exc.api_message or exc.message
            if kind is ProviderErrorKind.NOT_FOUND:
                message = not_found_message(model, message)
            retry_after = (
                retry_after_seconds(exc.response.headers)
                if kind in (ProviderErrorKind.RATE_LIMIT, ProviderErrorKind.SERVER)
                else None
            )
            return ProviderError(
                kind,
                message,
                provider=self.name,
                status_code=status if status >= 400 else None,
                retry_after_s=retry_after,
            )
        if isinstance(exc, anthropic.CredentialsError):
            # The SDK found no usable credentials here: nothing reached the API.
            return ProviderError(ProviderErrorKind.NOT_CONFIGURED, str(exc), provider=self.name)
        if isinstance(exc, anthropic.AnthropicError):
            return ProviderError(ProviderErrorKind.SERVER, str(exc), provider=self.name)
        # The SDK's stream reader lets HTTP-library read errors through unwrapped.
        transport = transport_error_kind(exc)
        if transport is not None:
            return ProviderError(transport, f"{type(exc).__name__}: {exc}", provider=self.name)
        return None


def _has_tool_blocks(messages: list[MessageParam]) -> bool:
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result"):
                return True
    return False
