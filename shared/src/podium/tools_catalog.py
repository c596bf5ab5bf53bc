"""The tools agents may be given, by name, with the JSON schemas the LLM sees.

The agent worker implements them; the gateway validates agents' allow-lists against this
catalog; the orchestrator knows the control tools. One list, so they cannot disagree."""

from __future__ import annotations

from typing import Any

from podium.llm.base import ToolSpec


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


BUILTIN_TOOLS: dict[str, ToolSpec] = {
    "calculator": ToolSpec(
        name="calculator",
        description="Evaluate an arithmetic expression (+ - * / // % **, parentheses, "
        "abs, round, min, max, sqrt). Use it instead of doing arithmetic in your head.",
        parameters=_schema({"expression": {"type": "string", "maxLength": 500}}, ["expression"]),
    ),
    "current_time": ToolSpec(
        name="current_time",
        description="The current date and time, in UTC or in an IANA time zone.",
        parameters=_schema(
            {"timezone": {"type": "string", "description": "e.g. Europe/Paris; default UTC"}}, []
        ),
    ),
    "search_thread": ToolSpec(
        name="search_thread",
        description="Search earlier messages of this conversation for words or phrases.",
        parameters=_schema(
            {
                "query": {"type": "string", "minLength": 1, "maxLength": 200},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            ["query"],
        ),
    ),
}

# Control tools end the agent's turn and hand control to the orchestrator.
CONTROL_TOOLS: dict[str, ToolSpec] = {
    "delegate": ToolSpec(
        name="delegate",
        description="Ask another agent to do a sub-task; you continue with its answer.",
        parameters=_schema(
            {
                "agent": {"type": "string"},
                "task": {"type": "string", "minLength": 1},
                "rationale": {"type": "string"},
            },
            ["agent", "task", "rationale"],
        ),
    ),
    "handoff": ToolSpec(
        name="handoff",
        description="Hand the whole request over to another agent, better suited to it. "
        "It sees the full conversation. Do not answer yourself after handing off.",
        parameters=_schema(
            {"agent": {"type": "string"}, "rationale": {"type": "string"}},
            ["agent", "rationale"],
        ),
    ),
}

KNOWN_TOOL_NAMES = frozenset(BUILTIN_TOOLS) | frozenset(CONTROL_TOOLS)
