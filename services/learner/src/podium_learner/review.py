"""The LLM review of a post-mortem (docs/architecture.md, "Learning"): structured output with what
worked, what did not, and candidate lessons. A failed review is recorded as such; the facts stand
anyway."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from podium.llm import ChatMessage, ChatRequest, LLMProvider, ProviderError, ToolSpec

log = logging.getLogger(__name__)

_LIST = {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 5}
REVIEW_TOOL = ToolSpec(
    name="record_review",
    description="Record the review of one orchestrated run.",
    parameters={
        "type": "object",
        "properties": {"what_worked": _LIST, "what_did_not": _LIST, "lessons": _LIST},
        "required": ["what_worked", "what_did_not", "lessons"],
        "additionalProperties": False,
    },
)

INSTRUCTIONS = (
    "You review how a request was orchestrated by an AI platform: which pattern and agents "
    "were chosen, and what happened. From the measured facts, say what worked, what did not, "
    "and give at most three lessons for future decisions on similar requests (short, "
    "actionable, about pattern/agent/parameter choice). Call record_review."
)


def review(
    provider: LLMProvider, model: str, facts: dict[str, Any], request: str
) -> dict[str, Any]:
    started = time.perf_counter()
    chat = ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content=INSTRUCTIONS),
            ChatMessage(
                role="user",
                content=(
                    f"Request (truncated): {request[:600]}\n\n"
                    f"Facts:\n{json.dumps(facts, default=str)}"
                ),
            ),
        ],
        temperature=0.0,
        max_tokens=600,
        tools=[REVIEW_TOOL],
        tool_choice=REVIEW_TOOL.name,
        metadata={
            "purpose": "postmortem",
            "status": facts.get("status"),
            "pattern": facts.get("pattern"),
        },
    )
    try:
        result = provider.complete(chat)
    except ProviderError as exc:
        return {"error": f"review failed: {exc.kind.value}: {exc.message}"[:300]}
    call = next((c for c in result.tool_calls if c.name == REVIEW_TOOL.name), None)
    if call is None:
        return {"error": "review failed: the model did not call record_review"}
    parsed: dict[str, Any] = {}
    for key in ("what_worked", "what_did_not", "lessons"):
        value = call.arguments.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return {"error": f"review failed: '{key}' is not a list of strings"}
        parsed[key] = [v.strip()[:300] for v in value if v.strip()][:5]
    parsed.update(
        provider=result.provider,
        model=result.model,
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return parsed
