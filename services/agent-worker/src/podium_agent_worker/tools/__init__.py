"""Tools agents may call: the registry and the built-ins (specs in podium.tools_catalog)."""

from podium_agent_worker.tools.base import (
    MAX_RESULT_CHARS,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    default_registry,
    validate_arguments,
)

__all__ = [
    "MAX_RESULT_CHARS",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "default_registry",
    "validate_arguments",
]
