"""LLM providers: the interface, the three backends, and a factory driven by Settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from podium.llm.base import (
    PERMANENT_KINDS,
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
from podium.llm.guarded import guarded
from podium.llm.simulated import SimulatedProvider
from podium.llm.simulated_script import Script, load_script
from podium.settings import Settings

if TYPE_CHECKING:
    from podium.llm.anthropic_provider import AnthropicProvider
    from podium.llm.openai_provider import OpenAIProvider

__all__ = [
    "PERMANENT_KINDS",
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
    "missing_settings",
    "not_set_message",
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


def _check_name(name: str) -> None:
    if name not in PROVIDER_NAMES:
        raise ValueError(
            f"unknown LLM provider {name!r}; valid providers: {', '.join(PROVIDER_NAMES)}"
        )


def missing_settings(settings: Settings, provider: str) -> list[str]:
    """The environment variables this process still needs before ``provider`` can be used,
    by name (e.g. ``["PODIUM_ANTHROPIC_API_KEY"]``); empty when it is configured.

    Looks at ``settings`` and at the SDKs' own variables (``OPENAI_API_KEY``...), which the
    providers fall back to. ``simulated`` is always configured; OpenAI needs a key unless a
    base URL points it at a self-hosted OpenAI-compatible server (those accept any key).
    Raises ValueError for a name that is not a provider.
    """
    _check_name(provider)
    if provider == "openai":
        if settings.openai_api_key or os.environ.get("OPENAI_API_KEY"):
            return []
        if settings.openai_base_url or os.environ.get("OPENAI_BASE_URL"):
            return []
        return ["PODIUM_OPENAI_API_KEY"]
    if provider == "anthropic":
        if settings.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY"):
            return []
        return ["PODIUM_ANTHROPIC_API_KEY"]
    return []


def not_set_message(names: list[str]) -> str:
    """``"A is not set"`` / ``"A and B are not set"``."""
    if len(names) == 1:
        return f"{names[0]} is not set"
    return f"{', '.join(names[:-1])} and {names[-1]} are not set"


def build_provider(settings: Settings, name: str | None = None) -> LLMProvider:
    """Build the provider called ``name`` (default ``settings.llm_provider``) from settings,
    wrapped so that a call made inside a database transaction is caught (podium.llm.guarded).

    A provider this deployment has no settings for raises a ProviderError of kind
    ``not_configured`` naming the missing variable (``"anthropic: not_configured:
    PODIUM_ANTHROPIC_API_KEY is not set"``); an unknown name raises ValueError.
    """
    return guarded(_build(settings, name))


def _build(settings: Settings, name: str | None) -> LLMProvider:
    chosen = name or settings.llm_provider
    missing = missing_settings(settings, chosen)
    if missing:
        raise ProviderError(
            ProviderErrorKind.NOT_CONFIGURED, not_set_message(missing), provider=chosen
        )
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
    from podium.llm.anthropic_provider import AnthropicProvider

    key = settings.anthropic_api_key or os.environ.get("ANTHROPIC_API_KEY")
    assert key  # missing_settings() demands one
    return AnthropicProvider(api_key=key, base_url=settings.anthropic_base_url)
