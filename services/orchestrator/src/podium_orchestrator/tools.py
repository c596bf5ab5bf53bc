"""The Orchestrator agent's tools (docs/architecture.md, "Decisions"). Every tool call
carries a rationale."""

from __future__ import annotations

from typing import Any

from podium.learning import REQUEST_CLASSES
from podium.llm import ToolSpec
from podium.tools_catalog import BUILTIN_TOOLS

# Bounded: grammar-constrained small models otherwise ramble until max_tokens cuts the JSON.
RATIONALE = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "description": "Why, in one or two sentences.",
}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**properties, "rationale": RATIONALE},
        "required": [*required, "rationale"],
        "additionalProperties": False,
    }


def orchestrator_tools(agents: list[str], patterns: list[str]) -> list[ToolSpec]:
    agent = {"type": "string", "enum": agents}
    return [
        ToolSpec(
            name="choose_pattern",
            description="Choose how the request is executed, and classify the request.",
            parameters=_schema(
                {
                    "pattern": {"type": "string", "enum": patterns},
                    "request_class": {"type": "string", "enum": list(REQUEST_CLASSES)},
                },
                ["pattern"],
            ),
        ),
        ToolSpec(
            name="route_to_agent",
            description="Choose the lead agent (the one that answers, produces or executes).",
            parameters=_schema({"agent": agent}, ["agent"]),
        ),
        ToolSpec(
            name="set_agent_parameters",
            description=(
                "Tune the parameters of every agent call this decision starts (the lead agent, "
                "team members, each step). tools restricts the calls to these of their agents' "
                "tools."
            ),
            parameters=_schema(
                {
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "max_output_tokens": {"type": "integer", "minimum": 16, "maximum": 32000},
                    "model": {"type": "string", "minLength": 1, "maxLength": 200},
                    "tools": {
                        "type": "array",
                        "items": {"type": "string", "enum": sorted(BUILTIN_TOOLS)},
                        "uniqueItems": True,
                    },
                },
                [],
            ),
        ),
        ToolSpec(
            name="compose_team",
            description=(
                "Choose the team: parallel_team's members, pipeline's sequence, plan_execute's "
                "executors, or critic_loop's producer then critic."
            ),
            parameters=_schema(
                {
                    "members": {"type": "array", "items": agent, "minItems": 1, "maxItems": 8},
                    "merge": {"type": "string", "enum": ["synthesizer", "vote", "concat"]},
                },
                ["members"],
            ),
        ),
        ToolSpec(
            name="ask_user",
            description="Ask the user one clarifying question when the request is ambiguous.",
            parameters=_schema({"question": {"type": "string", "minLength": 1}}, ["question"]),
        ),
        ToolSpec(
            name="finish",
            description="End the run now (at a later decision, when the work is already done).",
            parameters=_schema({"answer": {"type": "string"}}, []),
        ),
    ]


TOOL_NAMES = frozenset(
    {
        "choose_pattern",
        "route_to_agent",
        "set_agent_parameters",
        "compose_team",
        "ask_user",
        "finish",
    }
)
