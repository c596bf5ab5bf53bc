"""A deterministic, offline provider for development, tests and demos.

Everything it returns is a pure function of its knobs and the request, so runs are
reproducible; its answers always say they are simulated so nobody mistakes them for a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from podium.llm.base import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    DeltaCallback,
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolSpec,
    Usage,
)
from podium.llm.simulated_script import Script

_OPENERS = (
    "I looked at this from the simplest angle first.",
    "Here is a short, structured take.",
    "Breaking it down step by step seems best.",
    "The key constraint here is scope.",
    "A cautious first pass is warranted.",
    "Let me summarise the essentials.",
    "The request is clear enough to act on.",
    "There are two obvious options to weigh.",
)
_CLOSERS = (
    "Next step: validate the assumptions with real data.",
    "I would start small and iterate.",
    "No real model was consulted for this answer.",
    "Treat this as a placeholder for a real completion.",
    "Confidence is nominal, since this output is synthetic.",
    "A follow-up review would tighten this up.",
    "The plan is ready for the next agent.",
    "That should be enough to proceed.",
)
_RATIONALE = "Simulated decision: chosen deterministically from the request, not by a real model."

_STATUS_FOR_KIND = {
    ProviderErrorKind.RATE_LIMIT: 429,
    ProviderErrorKind.SERVER: 503,
    ProviderErrorKind.BAD_REQUEST: 400,
    ProviderErrorKind.AUTH: 401,
    ProviderErrorKind.BILLING: 402,
    ProviderErrorKind.NOT_FOUND: 404,
}

# "You are Ada" / "You are Research Bot": a capitalised name right after "You are".
_YOU_ARE = re.compile(r"\b[Yy]ou are (?:called |named )?([A-Z][\w\-]*(?: [A-Z][\w\-]*){0,3})")
# "Agent: planner" / "agent name = planner".
_AGENT_FIELD = re.compile(r"(?i)\bagent(?:[ _]name)?\s*[:=]\s*([\w.\-]+(?: [\w.\-]+){0,3})")

_MAX_MODEL_CHARS = 40
_MAX_AGENT_CHARS = 40
_MAX_QUOTE_CHARS = 80


def _digest(*parts: object) -> bytes:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).digest()


def _unit_interval(*parts: object) -> float:
    """A reproducible pseudo-random number in [0, 1)."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2.0**64


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _messages_payload(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") for m in messages]


def _agent_name(request: ChatRequest) -> str | None:
    meta = request.metadata.get("agent")
    if isinstance(meta, str) and meta.strip():
        return meta.strip()
    for msg in request.messages:
        if msg.role != "system":
            continue
        if msg.name:
            return msg.name
        for pattern in (_AGENT_FIELD, _YOU_ARE):
            found = pattern.search(msg.content)
            if found:
                return found.group(1).strip()
    return None


_DIRECTIVE = re.compile(r"\[sim((?:\s+[a-z_]+=[A-Za-z0-9_.]+)+)\s*\]")


def prompt_directives(request: ChatRequest) -> dict[str, str]:
    """Knobs written into the latest user message, e.g. ``[sim latency_ms=5000 error=server]``.

    They let a demo or an end-to-end test make one run slow or failing without
    reconfiguring the workers. Only this provider reads them."""
    last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
    if last_user is None:
        return {}
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(last_user.content):
        for pair in match.group(1).split():
            key, _, value = pair.partition("=")
            found[key] = value
    return found


class SimulatedProvider:
    """A fake LLM whose answers, failures and latency are all reproducible."""

    def __init__(
        self,
        name: str = "simulated",
        *,
        latency_ms: float = 0.0,
        error_rate: float = 0.0,
        error_kind: ProviderErrorKind | str = ProviderErrorKind.RATE_LIMIT,
        stream_chunk_chars: int = 12,
        seed: int = 0,
        script: list[dict[str, Any]] | None = None,
        rules: Script | None = None,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if stream_chunk_chars < 1:
            raise ValueError("stream_chunk_chars must be >= 1")
        self.name = name
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self.error_kind = ProviderErrorKind(error_kind)
        self.stream_chunk_chars = stream_chunk_chars
        self.seed = seed
        self.script = script
        self.rules = rules

    # --- LLMProvider -----------------------------------------------------------------------

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        started = time.monotonic()
        # Prompt knobs steer agent calls only: the Orchestrator agent's prompt quotes the
        # request too, and is steered by script rules instead.
        purpose = request.metadata.get("purpose")
        directives = prompt_directives(request) if purpose in (None, "agent") else {}
        scripted = self.rules.match(request) if self.rules else None
        if scripted is not None and scripted.error:
            directives["error"] = scripted.error
        if scripted is not None and scripted.latency_ms is not None:
            directives["latency_ms"] = str(scripted.latency_ms)
        self._maybe_fail(request, directives.get("error"))

        if scripted is not None:
            content = scripted.content
            tool_calls = [
                ToolCall(id=self._call_id(request, i), name=c.name, arguments=dict(c.arguments))
                for i, c in enumerate(scripted.tool_calls)
            ]
        else:
            content, tool_calls = self._respond(request)
        finish_reason = "tool_calls" if tool_calls else "stop"
        # Honour max_tokens the way a real model would: cut the text and say so.
        max_chars = request.max_tokens * 4
        if len(content) > max_chars:
            content, finish_reason = content[:max_chars], "length"

        latency_ms = self.latency_ms
        if "latency_ms" in directives:
            try:
                latency_ms = max(0.0, min(float(directives["latency_ms"]), 600_000.0))
            except ValueError:
                raise self._error(
                    ProviderErrorKind.BAD_REQUEST, "[sim latency_ms=...] needs a number"
                ) from None
        ttft_ms = self._deliver(content, on_delta, started, latency_ms)
        input_chars = sum(len(m.content) for m in request.messages)
        return ChatResult(
            content=content,
            tool_calls=tool_calls,
            usage=Usage(
                input_tokens=max(1, math.ceil(input_chars / 4)),
                output_tokens=max(1, math.ceil(len(content) / 4)),
            ),
            provider=self.name,
            model=request.model,
            finish_reason=finish_reason,
            ttft_ms=ttft_ms,
        )

    # --- failures --------------------------------------------------------------------------

    def _maybe_fail(self, request: ChatRequest, directive: str | None = None) -> None:
        forced = request.metadata.get("simulate_error") or directive
        if forced:
            try:
                kind = ProviderErrorKind(str(forced))
            except ValueError:
                raise self._error(
                    ProviderErrorKind.BAD_REQUEST, f"unknown simulate_error {forced!r}"
                ) from None
            raise self._error(kind, "forced by request metadata")
        if self.error_rate <= 0.0:
            return
        attempt = request.metadata.get("attempt", 0)
        content_hash = _digest(request.model, _messages_payload(request.messages)).hex()
        # The attempt number is part of the draw, so a retry of a failed call can succeed.
        if _unit_interval("error", self.seed, content_hash, attempt) < self.error_rate:
            raise self._error(self.error_kind, f"injected failure (attempt {attempt})")

    def _error(self, kind: ProviderErrorKind, message: str) -> ProviderError:
        return ProviderError(
            kind, message, provider=self.name, status_code=_STATUS_FOR_KIND.get(kind)
        )

    # --- answers ---------------------------------------------------------------------------

    def _respond(self, request: ChatRequest) -> tuple[str, list[ToolCall]]:
        script = request.metadata.get("script") or self.script
        if script:
            return self._scripted(request, script)
        tool = self._forced_tool(request)
        if tool is not None:
            args = _arguments_for_schema(tool.parameters, salt=(self.seed, tool.name))
            return "", [ToolCall(id=self._call_id(request, 0), name=tool.name, arguments=args)]
        return self._generated_text(request), []

    def _scripted(self, request: ChatRequest, script: object) -> tuple[str, list[ToolCall]]:
        if not isinstance(script, list) or not all(isinstance(e, Mapping) for e in script):
            raise self._error(ProviderErrorKind.BAD_REQUEST, "script must be a list of dicts")
        step = request.metadata.get("script_step", 0)
        step = step if isinstance(step, int) else 0
        entry: Mapping[str, Any] = script[max(0, min(step, len(script) - 1))]
        calls: list[ToolCall] = []
        for i, raw in enumerate(entry.get("tool_calls") or []):
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                raise self._error(ProviderErrorKind.BAD_REQUEST, "script tool call needs a name")
            arguments = raw.get("arguments") or {}
            if not isinstance(arguments, Mapping):
                raise self._error(ProviderErrorKind.BAD_REQUEST, "script arguments must be a dict")
            call_id = raw.get("id")
            calls.append(
                ToolCall(
                    id=call_id if isinstance(call_id, str) else self._call_id(request, i),
                    name=raw["name"],
                    arguments=dict(arguments),
                )
            )
        return str(entry.get("content", "")), calls

    def _forced_tool(self, request: ChatRequest) -> ToolSpec | None:
        if not request.tools or request.tool_choice in ("auto", "none"):
            return None
        if request.tool_choice == "required":
            # A real model must pick some tool; the first one is the deterministic choice.
            return request.tools[0]
        for tool in request.tools:
            if tool.name == request.tool_choice:
                return tool
        raise self._error(
            ProviderErrorKind.BAD_REQUEST, f"tool_choice {request.tool_choice!r} is not a tool"
        )

    @staticmethod
    def _call_id(request: ChatRequest, index: int) -> str:
        # Counting earlier calls keeps ids unique across one conversation.
        earlier = sum(len(m.tool_calls) for m in request.messages)
        return f"call_{earlier + index}"

    def _generated_text(self, request: ChatRequest) -> str:
        h = _digest(self.seed, request.model, _messages_payload(request.messages))
        model = _shorten(request.model, _MAX_MODEL_CHARS)
        parts = [f"[simulated {model}]"]
        agent = _agent_name(request)
        if agent:
            parts.append(f"{_shorten(agent, _MAX_AGENT_CHARS)} here.")
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        if last_user is not None and last_user.content.strip():
            parts.append(f'Re: "{_shorten(last_user.content, _MAX_QUOTE_CHARS)}".')
        else:
            parts.append("No user message was given.")
        parts.append(_OPENERS[h[0] % len(_OPENERS)])
        parts.append(_CLOSERS[h[1] % len(_CLOSERS)])
        return " ".join(parts)

    # --- delivery --------------------------------------------------------------------------

    def _deliver(
        self, content: str, on_delta: DeltaCallback | None, started: float, latency_ms: float
    ) -> float | None:
        """Spend the latency, streaming chunks if asked; returns ttft_ms."""
        latency_s = latency_ms / 1000.0
        if on_delta is None or not content:
            if latency_s > 0:
                time.sleep(latency_s)
            return None
        size = self.stream_chunk_chars
        chunks = [content[i : i + size] for i in range(0, len(content), size)]
        pause = latency_s / len(chunks)
        ttft_ms: float | None = None
        for chunk in chunks:
            if pause > 0:
                time.sleep(pause)
            if ttft_ms is None:
                ttft_ms = (time.monotonic() - started) * 1000.0
            on_delta(chunk)
        return ttft_ms


# --- tool arguments from a JSON schema ---------------------------------------------------------


def _arguments_for_schema(schema: Mapping[str, Any], *, salt: tuple[object, ...]) -> dict[str, Any]:
    value = _value_for_schema(schema, key="", salt=salt)
    return value if isinstance(value, dict) else {}


def _value_for_schema(schema: Mapping[str, Any], *, key: str, salt: tuple[object, ...]) -> Any:
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options and isinstance(options[0], Mapping):
            return _value_for_schema(options[0], key=key, salt=salt)

    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first non-null type wins
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"

    if kind == "object":
        props = schema.get("properties") or {}
        required = [r for r in schema.get("required") or [] if r in props]
        names = required or list(props)
        return {n: _value_for_schema(props[n], key=n, salt=(*salt, n)) for n in names}
    if kind == "array":
        items = schema.get("items")
        count = int(schema.get("minItems", 0))
        if count <= 0 or not isinstance(items, Mapping):
            return []
        return [_value_for_schema(items, key=key, salt=(*salt, i)) for i in range(count)]
    if kind == "integer":
        return int(_clamp(1, schema))
    if kind == "number":
        return float(_clamp(0.0, schema))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if key == "rationale":
        return _RATIONALE
    text = f"sim-{key or 'value'}-{_digest(*salt).hex()[:6]}"
    min_len = int(schema.get("minLength", 0))
    if len(text) < min_len:
        text = text.ljust(min_len, "x")
    max_len = schema.get("maxLength")
    return text[: int(max_len)] if isinstance(max_len, int) else text


def _clamp(value: float, schema: Mapping[str, Any]) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, int | float):
        value = max(value, low)
    if isinstance(high, int | float):
        value = min(value, high)
    return value
