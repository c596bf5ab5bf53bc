"""Every provider ``build_provider`` makes is wrapped here, so that an LLM call made while
the calling thread holds a database connection (a transaction open, maybe a row lock) is
reported, whatever the provider (``podium.store.guards.check_no_connection``)."""

from __future__ import annotations

from typing import Any

from podium.llm.base import ChatRequest, ChatResult, DeltaCallback, LLMProvider
from podium.store.guards import check_no_connection


class Guarded:
    def __init__(self, inner: LLMProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        check_no_connection(f"LLM call to {self.name} ({request.metadata.get('purpose')})")
        return self.inner.complete(request, on_delta=on_delta)

    def __getattr__(self, name: str) -> Any:
        # supports_tools, the simulated provider's knobs, ...: as the wrapped provider's.
        return getattr(self.inner, name)


def guarded(provider: LLMProvider) -> LLMProvider:
    return provider if isinstance(provider, Guarded) else Guarded(provider)
