"""Scripted behaviour for the simulated provider: rules that match a request and say what the
"model" answers, so demos and tests can drive any decision or tool call deterministically
(like a fake model shipped for tests).

A script is YAML::

    rules:
      - when:                      # every key given must match
          purpose: orchestrator    # request.metadata["purpose"]: orchestrator | agent | summary
          agent: critic            # request.metadata["agent"]
          role: critic             # request.metadata["role"] (the call's part in its pattern)
          last_user: "(?i)review"  # regex searched in the latest user message
          contains: "APPROVED"     # regex searched in all messages
          tools: [route_to_agent]  # these tools are offered
          turn: 0                  # tool results already in this request (tool loops)
          meta: {phase: first}     # other request.metadata keys that must be equal
        respond:
          content: "text"          # and/or
          tool_calls: [{name: choose_pattern, arguments: {pattern: direct, rationale: "..."}}]
          latency_ms: 0            # optional: override the latency of this answer
          error: server            # optional: fail this call with that error kind

The first matching rule wins; a configured script's rules come before the packaged defaults
(``simulated_default.yaml``). No match: the provider's generated answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from podium.llm.base import ChatRequest


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = ""
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)
    latency_ms: float | None = Field(default=None, ge=0)
    error: str | None = None


class ScriptCondition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: str | None = None
    agent: str | None = None
    role: str | None = None
    last_user: str | None = None
    contains: str | None = None
    tools: list[str] | None = None
    turn: int | None = None
    # Any other request.metadata keys that must be equal (e.g. {phase: later}).
    meta: dict[str, Any] | None = None


class ScriptRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: ScriptCondition = Field(default_factory=ScriptCondition)
    respond: ScriptResponse

    def matches(self, request: ChatRequest) -> bool:
        cond, meta = self.when, request.metadata
        for key in ("purpose", "agent", "role"):
            wanted = getattr(cond, key)
            if wanted is not None and meta.get(key) != wanted:
                return False
        if cond.meta is not None and any(meta.get(k) != v for k, v in cond.meta.items()):
            return False
        if cond.tools is not None:
            offered = {t.name for t in request.tools}
            if not set(cond.tools) <= offered:
                return False
        if cond.turn is not None:
            turns = sum(1 for m in request.messages if m.role == "tool")
            if turns != cond.turn:
                return False
        if cond.last_user is not None:
            last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            if not re.search(cond.last_user, last):
                return False
        if cond.contains is not None:
            text = "\n".join(m.content for m in request.messages)
            if not re.search(cond.contains, text):
                return False
        return True


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[ScriptRule] = Field(default_factory=list)

    def match(self, request: ChatRequest) -> ScriptResponse | None:
        for rule in self.rules:
            if rule.matches(request):
                return rule.respond
        return None


DEFAULT_SCRIPT = Path(__file__).with_name("simulated_default.yaml")


def load_script(path: str | Path | None) -> Script:
    """The rules of ``path`` (if any) followed by the packaged default rules."""
    rules: list[ScriptRule] = []
    for source in [p for p in (path, DEFAULT_SCRIPT) if p]:
        raw = yaml.safe_load(Path(source).read_text()) or {}
        rules.extend(Script.model_validate(raw).rules)
    script = Script(rules=rules)
    for rule in script.rules:  # fail at load time, not on the first request
        for pattern in (rule.when.last_user, rule.when.contains):
            if pattern is not None:
                re.compile(pattern)
    return script
