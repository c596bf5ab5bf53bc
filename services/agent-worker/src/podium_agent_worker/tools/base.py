"""The tool interface and the registry the executor calls tools through.

A tool's result is text for the model. Failures are text too (``error: ...``): the model
reads them and can correct itself, so ``ToolRegistry.run`` never raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from podium.llm.base import ToolSpec
from podium.tools_catalog import CONTROL_TOOLS

log = logging.getLogger(__name__)

# Longer results are cut: a tool must not flood the agent's context.
MAX_RESULT_CHARS = 4000


@dataclass
class ToolContext:
    tenant_id: str
    thread_id: str
    run_id: str
    # (query, limit) -> hits; injected by the executor so tools never own a DB session.
    search: Callable[[str, int], list[dict[str, Any]]]


class Tool(Protocol):
    spec: ToolSpec

    def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str: ...


class ToolError(Exception):
    """A failure the model should read: the message becomes the tool result verbatim."""


# --- argument validation: the JSON-schema subset our tool specs use ------------------------

_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _check_value(key: str, value: Any, schema: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The value (integral floats become ints) and the problems found."""
    kind = schema.get("type")
    # bool is an int in Python but not in JSON: test it first.
    if kind == "string" and not isinstance(value, str):
        return value, [f"'{key}' must be a string, not {_type_name(value)}"]
    if kind == "boolean" and not isinstance(value, bool):
        return value, [f"'{key}' must be a boolean, not {_type_name(value)}"]
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type; 5.0 is a fine integer
        if isinstance(value, bool) or not isinstance(value, int):
            return value, [f"'{key}' must be an integer, not {_type_name(value)}"]
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, [f"'{key}' must be a number, not {_type_name(value)}"]
        if not math.isfinite(value):
            return value, [f"'{key}' must be a finite number"]

    problems: list[str] = []
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        problems.append(f"'{key}' must be one of {', '.join(map(repr, enum))}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"'{key}' must be at most {schema['maxLength']} characters")
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"'{key}' must be at least {schema['minLength']} characters")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"'{key}' must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"'{key}' must be <= {schema['maximum']}")
    return value, problems


def validate_arguments(schema: Mapping[str, Any], arguments: Any) -> dict[str, Any]:
    """Check ``arguments`` against an object schema; returns the cleaned arguments.

    Supports required, properties with type string/integer/number/boolean, enum,
    minLength/maxLength, minimum/maximum and additionalProperties false; other keywords
    are accepted unchecked. An optional argument given as null counts as absent, because
    models often send ``{"timezone": null}`` for "not given".
    """
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be a JSON object, not {_type_name(arguments)}")
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = [str(r) for r in schema.get("required") or []]
    problems: list[str] = []
    cleaned: dict[str, Any] = {}
    for key, value in arguments.items():
        if value is None:
            continue  # absent; reported below when required
        if key not in properties:
            if schema.get("additionalProperties") is False:
                known = ", ".join(properties) or "none"
                problems.append(f"unknown argument '{key}' (accepted: {known})")
            else:
                cleaned[key] = value
            continue
        cleaned[key], found = _check_value(key, value, properties[key])
        problems.extend(found)
    problems.extend(f"'{key}' is required" for key in required if key not in cleaned)
    if problems:
        raise ToolError("; ".join(problems))
    return cleaned


# --- the registry --------------------------------------------------------------------------


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        name = tool.spec.name
        if name in self._tools:
            raise ValueError(f"tool {name!r} is already registered")
        if name in CONTROL_TOOLS:
            raise ValueError(f"{name!r} is a control tool; the executor handles it")
        self._tools[name] = tool

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def specs_for(self, allow_list: Sequence[str]) -> list[ToolSpec]:
        """Specs of the allowed tools this registry knows, in allow-list order, each once.

        Control tools and unknown names are left out (the executor adds control tools)."""
        specs: list[ToolSpec] = []
        seen: set[str] = set()
        for name in allow_list:
            tool = self._tools.get(name)
            if tool is not None and name not in seen:
                seen.add(name)
                specs.append(tool.spec)
        return specs

    def run(
        self,
        name: str,
        arguments: dict[str, Any],
        ctx: ToolContext,
        *,
        allowed: Collection[str] | None = None,
    ) -> tuple[str, bool]:
        """Run a tool: (result text, ok). ``allowed`` is the agent's allow-list (None: any
        registered tool). Every failure is returned as ``error: ...`` with ok False."""
        tool = self._tools.get(name)
        if tool is None:
            usable = [n for n in self._tools if allowed is None or n in allowed]
            known = ", ".join(sorted(usable)) or "none"
            return f"error: unknown tool '{name}' (available: {known})", False
        if allowed is not None and name not in allowed:
            return f"error: tool '{name}' is not available to this agent", False
        try:
            cleaned = validate_arguments(tool.spec.parameters, arguments)
        except ToolError as exc:
            return f"error: invalid arguments for {name}: {exc}", False
        try:
            result = tool.run(cleaned, ctx)
        except ToolError as exc:
            return f"error: {exc}", False
        except Exception as exc:
            # A bug, not the model's fault: log it fully, tell the model little.
            log.exception("tool %s failed (run %s)", name, ctx.run_id)
            return f"error: {name} failed unexpectedly ({type(exc).__name__})", False
        return _cap(str(result)), True


def _cap(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    cut = len(text) - MAX_RESULT_CHARS
    return text[:MAX_RESULT_CHARS] + f"\n… [{cut} more characters cut]"


def default_registry() -> ToolRegistry:
    """A registry with the built-in tools (calculator, current_time, search_thread)."""
    from podium_agent_worker.tools.calculator import CalculatorTool
    from podium_agent_worker.tools.clock import CurrentTimeTool
    from podium_agent_worker.tools.search import SearchThreadTool

    registry = ToolRegistry()
    registry.register(CalculatorTool())
    registry.register(CurrentTimeTool())
    registry.register(SearchThreadTool())
    return registry
