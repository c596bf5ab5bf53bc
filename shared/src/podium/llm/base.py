"""The LLM provider interface every service uses.

Providers are synchronous: agent workers run calls in a threads/gevent pool, so a blocking
call per slot is what we want. Streaming is delivered through the ``on_delta`` callback while
the call runs; the full result is returned at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class ToolSpec(BaseModel):
    """A tool the model may call, described by a JSON schema for its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    temperature: float = 0.0
    max_tokens: int = 1024
    tools: list[ToolSpec] = Field(default_factory=list)
    # "auto", "required", "none", or the name of one tool to force.
    tool_choice: str = "auto"
    timeout_s: float = 120.0
    # Free-form hints for providers that understand them (the simulated one reads these).
    metadata: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class ChatResult(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    provider: str
    model: str
    finish_reason: str = "stop"
    # Milliseconds from the request to the first streamed token (None if nothing streamed).
    ttft_ms: float | None = None


class ProviderErrorKind(StrEnum):
    """Why a provider call failed, split by what trying again can achieve.

    Transient kinds (``RETRYABLE_KINDS``) may succeed if the same request is sent again to
    the same provider a little later. Permanent kinds (``PERMANENT_KINDS``) fail the same
    way every time until someone changes the request, the agent's definition or the
    deployment's configuration: retrying them only delays the failure.
    """

    # --- transient
    RATE_LIMIT = "rate_limit"  # 429
    SERVER = "server"  # 5xx, overloaded
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    # --- permanent
    BAD_REQUEST = "bad_request"  # other 4xx: the request itself must change
    AUTH = "auth"  # 401/403: the key is rejected or may not use this API/model
    NOT_FOUND = "not_found"  # 404 / model_not_found: unknown model (or wrong base URL)
    BILLING = "billing"  # 402, OpenAI's insufficient_quota: the account cannot pay
    # The deployment lacks a setting the provider needs (e.g. its API key): no request
    # was sent at all.
    NOT_CONFIGURED = "not_configured"


RETRYABLE_KINDS = frozenset(
    {
        ProviderErrorKind.RATE_LIMIT,
        ProviderErrorKind.SERVER,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.CONNECTION,
    }
)
PERMANENT_KINDS = frozenset(ProviderErrorKind) - RETRYABLE_KINDS


class ProviderError(Exception):
    """A normalised provider failure, so retry and fallback logic is provider-agnostic.

    ``str(error)`` is ``"<provider>: <kind>: <message>"``.
    """

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """Sending the same request to the same provider again may succeed."""
        return self.kind in RETRYABLE_KINDS

    @property
    def permanent(self) -> bool:
        """Trying again cannot succeed, now or later, until the request, the agent or the
        deployment's configuration changes: a call failing so should fail at once, not be
        redelivered. Exactly the errors that are not ``retryable``."""
        return self.kind in PERMANENT_KINDS


DeltaCallback = Callable[[str], None]


@runtime_checkable
class LLMProvider(Protocol):
    """One LLM backend. ``name`` is what outputs show (``simulated`` is always labelled so)."""

    name: str

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        """Run one chat completion. Streams text deltas to ``on_delta`` when given.

        Raises ProviderError for every failure of the backend.
        """
        ...
