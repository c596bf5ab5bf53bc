"""The Orchestrator agent: an LLM call that decides how a request is executed
(docs/architecture.md, "Decisions").

It answers with tool calls (or, for providers without tools, with JSON of the same shape);
every call carries a rationale. Whatever goes wrong — invalid output, a late answer, an
exhausted budget, a provider error — becomes a recorded fallback, never an exception.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from podium.decisions import AgentParameters, DecisionUsage, MergeMode
from podium.learning import REQUEST_CLASSES
from podium.llm import ChatMessage, ChatRequest, LLMProvider, ProviderError, ToolCall
from podium.tools_catalog import BUILTIN_TOOLS
from podium_orchestrator.tools import TOOL_NAMES, orchestrator_tools

SYSTEM_PROMPT = """You are the Orchestrator of Podium, a platform that runs AI agents.
You never answer the user yourself. You decide HOW the request is executed, by calling tools,
and every tool call must carry a short rationale.

Patterns:
{patterns}

Agents:
{agents}

How to decide:
- At the first decision call choose_pattern exactly once. Call route_to_agent to pick the lead
  agent when the default ({default_agent}) is not the best fit. For parallel_team or pipeline,
  call compose_team. Use set_agent_parameters only when the defaults clearly do not fit.
- Call ask_user only when the request cannot be executed without a clarification.
- At a later decision you see only what happened since your last decision: call finish if the
  request is fully answered, route_to_agent to give the next step to another agent, or
  choose_pattern with the current pattern to continue.
- Prefer the simplest pattern that will give a good answer: direct is cheapest.
{guidance}"""

JSON_INSTRUCTIONS = """
Your reply must be only a JSON object: {{"tool_calls": [{{"name": ..., "arguments": {{...}}}}]}}
using these tools (JSON schemas):
{schemas}"""


class InvalidDecision(ValueError):
    pass


@dataclass
class DecisionInput:
    phase: str  # "first" or "later"
    request: str
    context: list[ChatMessage]
    agents: dict[str, str]  # name -> description
    patterns: dict[str, str]  # name -> description
    default_agent: str
    history: str = ""
    question: str = ""
    guidance: str = ""


@dataclass(frozen=True)
class Proposal:
    """What the Orchestrator agent's tool calls said, validated against the tenant's agents
    and the patterns. The step turns it into a ``podium.decisions.Decision``."""

    pattern: str | None = None
    agent: str | None = None
    parameters: AgentParameters = field(default_factory=AgentParameters)
    team: tuple[str, ...] = ()
    merge: MergeMode | None = None
    question: str | None = None
    finish: bool = False
    answer: str | None = None
    request_class: str | None = None
    rationales: tuple[tuple[str, str], ...] = ()

    @property
    def rationale(self) -> str:
        return " ".join(f"[{tool}] {why}" for tool, why in self.rationales)


@dataclass(frozen=True)
class DecisionResult:
    proposal: Proposal | None
    fallback_reason: str | None
    usage: DecisionUsage = field(default_factory=DecisionUsage)


def render_messages(inp: DecisionInput, *, with_json: bool) -> list[ChatMessage]:
    tools = orchestrator_tools(sorted(inp.agents), sorted(inp.patterns))
    system = SYSTEM_PROMPT.format(
        patterns="\n".join(f"- {n}: {d}" for n, d in sorted(inp.patterns.items())),
        agents="\n".join(f"- {n}: {d}" for n, d in sorted(inp.agents.items())),
        default_agent=inp.default_agent,
        guidance=f"\nLessons learned for this tenant:\n{inp.guidance}" if inp.guidance else "",
    )
    if with_json:
        schemas = json.dumps({t.name: t.parameters for t in tools}, sort_keys=True)
        system += JSON_INSTRUCTIONS.format(schemas=schemas)
    # The request (or the question of a later decision) is the last message on its own, so
    # the model reads it as the thing to act on, after the context.
    if inp.phase == "first":
        context = "Conversation so far (oldest first):\n" + (_transcript(inp.context) or "(empty)")
        ask = f"The new request:\n{inp.request}\n\nDecide how to execute it."
    else:
        context = f"The request being executed:\n{inp.request}\n\n"
        if inp.history:
            context += f"Your decisions so far:\n{inp.history}\n\n"
        context += "New since your last decision:\n" + (_transcript(inp.context) or "(nothing)")
        ask = inp.question
    return [
        ChatMessage(role="system", content=system),
        ChatMessage(role="user", content=context),
        ChatMessage(role="user", content=ask),
    ]


def _transcript(messages: list[ChatMessage]) -> str:
    return "\n".join(f"{m.name or m.role}: {m.content}" for m in messages)


class OrchestratorAgent:
    def __init__(
        self,
        provider: LLMProvider,
        model: str,
        *,
        timeout_s: float,
        max_tokens: int,
        tool_choice: str = "required",
    ):
        self.provider = provider
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.tool_choice = tool_choice

    @property
    def uses_tools(self) -> bool:
        return bool(getattr(self.provider, "supports_tools", True))

    def decide(
        self, inp: DecisionInput, *, metadata: dict[str, Any] | None = None
    ) -> DecisionResult:
        """One decision. Never raises for what the model or its provider did wrong: that is a
        result without a proposal, with the reason to record."""
        with_json = not self.uses_tools
        request = ChatRequest(
            model=self.model,
            messages=render_messages(inp, with_json=with_json),
            temperature=0.0,  # the same input and learned state give the same decision
            max_tokens=self.max_tokens,
            tools=[] if with_json else orchestrator_tools(sorted(inp.agents), sorted(inp.patterns)),
            tool_choice="none" if with_json else self.tool_choice,
            timeout_s=self.timeout_s,
            metadata={"purpose": "orchestrator", "phase": inp.phase, **(metadata or {})},
        )
        started = time.perf_counter()

        def outcome(
            proposal: Proposal | None, reason: str | None, tokens: tuple[int, int] = (0, 0)
        ) -> DecisionResult:
            return DecisionResult(
                proposal,
                reason[:200] if reason else None,
                DecisionUsage(
                    input_tokens=tokens[0],
                    output_tokens=tokens[1],
                    latency_ms=(time.perf_counter() - started) * 1000,
                    provider=self.provider.name,
                    model=self.model,
                ),
            )

        try:
            result = self.provider.complete(request)
        except ProviderError as exc:
            kind = "timeout" if exc.kind.value == "timeout" else "provider_error"
            return outcome(None, f"{kind}: {exc.message}")
        tokens = (result.usage.input_tokens, result.usage.output_tokens)
        elapsed_s = time.perf_counter() - started
        if elapsed_s > self.timeout_s:
            return outcome(None, f"timeout: the decision took {elapsed_s * 1000:.0f} ms", tokens)
        try:
            calls = result.tool_calls or (parse_json_calls(result.content) if with_json else [])
            proposal = interpret(calls, inp)
        except InvalidDecision as exc:
            return outcome(None, f"invalid_output: {exc}", tokens)
        return outcome(proposal, None, tokens)


def parse_json_calls(content: str) -> list[ToolCall]:
    match = re.search(r"\{.*\}", content, re.DOTALL)
    if not match:
        raise InvalidDecision("the reply holds no JSON object")
    try:
        raw = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise InvalidDecision(f"the reply is not valid JSON ({exc.msg})") from exc
    entries = raw.get("tool_calls") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise InvalidDecision("the JSON has no tool_calls list")
    calls = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("arguments", {}), dict):
            raise InvalidDecision(f"tool_calls[{i}] is not an object with arguments")
        calls.append(
            ToolCall(
                id=f"json_{i}", name=str(entry.get("name")), arguments=entry.get("arguments", {})
            )
        )
    return calls


def _text(args: dict[str, Any], key: str, tool: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidDecision(f"{tool}: '{key}' must be a non-empty string")
    return value.strip()


def interpret(calls: list[ToolCall], inp: DecisionInput) -> Proposal:
    """Validate tool calls against the tenant's agents and the patterns, into one proposal."""
    if not calls:
        raise InvalidDecision("no tool was called")
    fields: dict[str, Any] = {}
    rationales: dict[str, str] = {}
    for call in calls:
        if call.name not in TOOL_NAMES:
            raise InvalidDecision(f"unknown tool {call.name!r}")
        args = call.arguments
        if "_raw" in args:
            raise InvalidDecision(f"{call.name}: arguments are not valid JSON")
        rationales[call.name] = _text(args, "rationale", call.name)
        if call.name == "choose_pattern":
            pattern = _text(args, "pattern", call.name)
            if pattern not in inp.patterns:
                raise InvalidDecision(f"unknown pattern {pattern!r}")
            fields["pattern"] = pattern
            # The class is a cheap by-product; a wrong one falls back to the rules, not the
            # whole decision.
            if args.get("request_class") in REQUEST_CLASSES:
                fields["request_class"] = str(args["request_class"])
        elif call.name == "route_to_agent":
            agent = _text(args, "agent", call.name)
            if agent not in inp.agents:
                raise InvalidDecision(f"unknown agent {agent!r}")
            fields["agent"] = agent
        elif call.name == "set_agent_parameters":
            fields["parameters"] = _parameters(args)
        elif call.name == "compose_team":
            fields.update(_team(args, inp))
        elif call.name == "ask_user":
            fields["question"] = _text(args, "question", call.name)
        elif call.name == "finish":
            fields["finish"] = True
            answer = args.get("answer")
            fields["answer"] = answer if isinstance(answer, str) and answer.strip() else None
    return Proposal(rationales=tuple(rationales.items()), **fields)


def _team(args: dict[str, Any], inp: DecisionInput) -> dict[str, Any]:
    members = args.get("members")
    if not isinstance(members, list) or not members:
        raise InvalidDecision("compose_team: 'members' must be a non-empty list")
    unknown = [m for m in members if m not in inp.agents]
    if unknown:
        raise InvalidDecision(f"compose_team: unknown agents {unknown}")
    if len(members) > 8:
        raise InvalidDecision("compose_team: at most 8 members")
    merge = args.get("merge")
    if merge is not None and merge not in [m.value for m in MergeMode]:
        raise InvalidDecision(f"compose_team: unknown merge {merge!r}")
    return {
        "team": tuple(str(m) for m in members),
        "merge": MergeMode(merge) if merge is not None else None,
    }


def _parameters(args: dict[str, Any]) -> AgentParameters:
    known = {"model", "temperature", "max_output_tokens", "tools", "rationale"}
    extra = sorted(set(args) - known)
    if extra:
        raise InvalidDecision(f"set_agent_parameters: unknown arguments {extra}")
    tools = args.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise InvalidDecision("set_agent_parameters: 'tools' must be a list of tool names")
        unknown = [t for t in tools if t not in BUILTIN_TOOLS]
        if unknown:
            raise InvalidDecision(f"set_agent_parameters: unknown tools {unknown}")
    temperature = args.get("temperature")
    if isinstance(temperature, bool):
        raise InvalidDecision("set_agent_parameters: temperature must be a number within 0..2")
    try:
        return AgentParameters(
            model=args.get("model"),
            temperature=temperature,
            max_output_tokens=args.get("max_output_tokens"),
            tools=tuple(dict.fromkeys(tools)) if tools is not None else None,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidDecision(f"set_agent_parameters: {problems}") from exc
