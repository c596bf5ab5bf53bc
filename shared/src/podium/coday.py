"""Coday agent definitions → Podium's agents API (``podium agents import``).

Coday (https://github.com/whoz-oss/coday) describes agents in YAML with camelCase fields
(``aiProvider``, ``modelName``, ``maxOutputTokens``, ``integrations``...). This module turns one
such mapping into the body of ``PUT /v1/agents/{name}``. Podium's own snake_case field names
are accepted too, and win when both spellings are given. Anything Podium has no equivalent
for is reported as a warning instead of failing the import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from podium.tools_catalog import KNOWN_TOOL_NAMES

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# Provider spellings, compared case-insensitively (Coday has used both "OPENAI" and "openai").
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "claude": "anthropic",
    "simulated": "simulated",
}

# Coday camelCase field → our field.
CODAY_FIELDS = {
    "aiProvider": "provider",
    "modelName": "model",
    "maxOutputTokens": "max_output_tokens",
}

OWN_FIELDS = (
    "description",
    "instructions",
    "provider",
    "model",
    "temperature",
    "max_output_tokens",
    "tools",
    "sub_agents",
    "pool",
)

# Coday fields Podium has no use for; dropped with a warning.
IGNORED_CODAY_FIELDS = (
    "teams",
    "modelSize",
    "openaiAssistantId",
    "mandatoryDocs",
    "optionalDocs",
)


class CodayImportError(ValueError):
    """A definition that cannot be imported; the message names the agent."""


def _label(doc: dict[str, Any], index: int | None = None) -> str:
    name = doc.get("name")
    if isinstance(name, str) and name:
        return f"agent {name!r}"
    return f"agent #{index + 1}" if index is not None else "agent"


def _map_provider(agent: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CodayImportError(f"{agent}: aiProvider must be a string, got {value!r}")
    mapped = PROVIDERS.get(value.strip().lower())
    if mapped is None:
        raise CodayImportError(
            f"{agent}: AI provider {value!r} is not supported by Podium; "
            f"use one of {sorted(set(PROVIDERS.values()))} (or omit it for the default)"
        )
    return mapped


def _tool_lookup() -> dict[str, str]:
    return {t.lower(): t for t in KNOWN_TOOL_NAMES}


def _map_integrations(agent: str, integrations: Any, warnings: list[str]) -> list[str]:
    """Coday integrations (name → tool names, empty meaning all) → our tool allow-list."""
    if integrations is None:
        return []
    if isinstance(integrations, list):
        # Tolerate a bare list of integration names (all tools of each).
        integrations = {str(name): [] for name in integrations}
    if not isinstance(integrations, dict):
        raise CodayImportError(
            f"{agent}: integrations must be a mapping of integration name to tool names"
        )
    known = _tool_lookup()
    tools: list[str] = []
    for key, value in integrations.items():
        integration = str(key)
        listed: Any = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(listed, list):
            raise CodayImportError(
                f"{agent}: integration {integration!r} must list tool names, got {listed!r}"
            )
        as_tool = known.get(integration.lower())
        if as_tool is not None:
            tools.append(as_tool)
        missing: list[str] = []
        for raw in listed:
            tool = known.get(str(raw).lower())
            if tool is None:
                missing.append(str(raw))
            else:
                tools.append(tool)
        if as_tool is None and not listed:
            warnings.append(
                f"{agent}: integration {integration!r} is not available in Podium; "
                "its tools were not granted"
            )
        elif missing:
            warnings.append(
                f"{agent}: integration {integration!r}: tools {missing} are not available in "
                "Podium and were not granted"
            )
    return tools


def _string_list(agent: str, field: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CodayImportError(f"{agent}: {field} must be a list of names, got {value!r}")
    return list(value)


def coday_to_agent(doc: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """One Coday (or Podium) agent mapping → ``(name, PUT body, warnings)``.

    Raises ``CodayImportError`` (naming the agent) for a missing or invalid name, an
    unsupported provider, or a malformed ``integrations``. Values are otherwise passed through
    for the API to validate (temperature range, tool names given in ``tools``...).
    """
    if not isinstance(doc, dict):
        raise CodayImportError(f"an agent definition must be a mapping, got {doc!r}")
    agent = _label(doc)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CodayImportError(f"{agent}: `name` is required")
    name = name.strip()
    if not NAME_RE.fullmatch(name):
        raise CodayImportError(
            f"{agent}: the name must be 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    warnings: list[str] = []
    body: dict[str, Any] = {}

    for key in doc:
        if key == "name":
            continue
        if key in IGNORED_CODAY_FIELDS:
            warnings.append(f"{agent}: field {key!r} has no Podium equivalent; ignored")
        elif key not in OWN_FIELDS and key not in CODAY_FIELDS and key != "integrations":
            warnings.append(f"{agent}: unknown field {key!r}; ignored")

    for field in ("description", "instructions"):
        if doc.get(field) is not None:
            body[field] = str(doc[field]).strip()

    # Coday spellings first, then ours (which win).
    for coday_field, field in CODAY_FIELDS.items():
        if coday_field in doc and field in doc and doc[coday_field] != doc[field]:
            warnings.append(
                f"{agent}: both {coday_field!r} and {field!r} are given; using {field!r}"
            )
    provider = doc["provider"] if "provider" in doc else doc.get("aiProvider")
    mapped = _map_provider(agent, provider)
    if mapped is not None:
        body["provider"] = mapped
    model = doc["model"] if "model" in doc else doc.get("modelName")
    if model is not None:
        body["model"] = str(model)
    if doc.get("temperature") is not None:
        body["temperature"] = doc["temperature"]
    max_tokens = (
        doc["max_output_tokens"] if "max_output_tokens" in doc else doc.get("maxOutputTokens")
    )
    if max_tokens is not None:
        body["max_output_tokens"] = max_tokens

    tools = _string_list(agent, "tools", doc.get("tools"))
    tools += _map_integrations(agent, doc.get("integrations"), warnings)
    if "tools" in doc or "integrations" in doc:
        body["tools"] = list(dict.fromkeys(tools))
    if "sub_agents" in doc:
        body["sub_agents"] = _string_list(agent, "sub_agents", doc["sub_agents"])
    if doc.get("pool") is not None:
        body["pool"] = str(doc["pool"])
    return name, body, warnings


def agent_documents(loaded: Iterable[Any]) -> list[dict[str, Any]]:
    """The agent mappings in parsed YAML documents. Each document is one agent mapping, a
    list of them, or a mapping with an ``agents:`` list (as in a Coday project file)."""
    found: list[dict[str, Any]] = []
    for doc in loaded:
        if doc is None:
            continue
        if isinstance(doc, dict) and "agents" in doc and "name" not in doc:
            items = doc["agents"]
            if not isinstance(items, list):
                raise CodayImportError("`agents:` must be a list of agent definitions")
        elif isinstance(doc, dict):
            items = [doc]
        elif isinstance(doc, list):
            items = doc
        else:
            raise CodayImportError(
                "expected an agent mapping, a list of agents, or a mapping with an `agents:` list"
            )
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise CodayImportError(
                    f"agent #{index + 1} must be a mapping, got {type(item).__name__}"
                )
            found.append(item)
    return found


def load_agents_yaml(text: str) -> list[dict[str, Any]]:
    """Parse YAML text (several ``---`` documents allowed) into agent mappings."""
    try:
        return agent_documents(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise CodayImportError(f"invalid YAML: {exc}") from exc
