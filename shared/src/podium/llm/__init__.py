"""LLM providers: the interface, the three backends, and a factory driven by Settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from podium.llm.base import (
    RETRYABLE_KINDS,
    ChatMessage,
    ChatRequest,
    ChatResult,
    DeltaCallback,
    LLMProvider,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolSpec,
    Usage,
)
from podium.llm.simulated import SimulatedProvider
from podium.llm.simulated_script import Script, load_script
from podium.settings import Settings

if TYPE_CHECKING:
    from podium.llm.anthropic_provider import AnthropicProvider
    from podium.llm.openai_provider import OpenAIProvider

__all__ = [
    "PROVIDER_NAMES",
    "RETRYABLE_KINDS",
    "AnthropicProvider",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "DeltaCallback",
    "LLMProvider",
    "OpenAIProvider",
    "ProviderError",
    "ProviderErrorKind",
    "Script",
    "SimulatedProvider",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "build_provider",
    "load_script",
]

PROVIDER_NAMES = ("simulated", "openai", "anthropic")


def __getattr__(name: str) -> object:
    # The SDKs take seconds to import; only processes that use a remote provider pay for it.
    if name == "OpenAIProvider":
        from podium.llm.openai_provider import OpenAIProvider

        return OpenAIProvider
    if name == "AnthropicProvider":
        from podium.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_provider(settings: Settings, name: str | None = None) -> LLMProvider:
    """Build the provider called ``name`` (default ``settings.llm_provider``) from settings."""
    chosen = name or settings.llm_provider
    if chosen == "simulated":
        return SimulatedProvider(
            latency_ms=settings.simulated_latency_ms,
            error_rate=settings.simulated_error_rate,
            stream_chunk_chars=settings.simulated_stream_chunk_chars,
            seed=settings.simulated_seed,
            rules=load_script(settings.simulated_script),
        )
    if chosen == "openai":
        from podium.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key or os.environ.get("OPENAI_API_KEY"),
        )
    if chosen == "anthropic":
        key = settings.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ValueError(
                "the anthropic provider needs an API key: set PODIUM_ANTHROPIC_API_KEY "
                "(or ANTHROPIC_API_KEY)"
            )
        from podium.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(api_key=key, base_url=settings.anthropic_base_url)
    raise ValueError(
        f"unknown LLM provider {chosen!r}; valid providers: {', '.join(PROVIDER_NAMES)}"
    )
