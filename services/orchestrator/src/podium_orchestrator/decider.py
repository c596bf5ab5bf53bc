"""Making decisions (docs/architecture.md, "Decisions"): the Orchestrator agent consulted at
most once per decision point of a step, and the typed ``Decision`` built from what it said (or
from a forced pattern, a fallback, the learned policy, an agent's handoff).

A step that loses a race is planned again on fresh state; the answers it already paid for are
reused for the same decision points, and the decisions that end up not applied are recorded
as superseded, with their cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from podium.decisions import (
    AgentParameters,
    CheckpointAction,
    Decision,
    DecisionKind,
    DecisionOutcome,
    DecisionSource,
    DecisionUsage,
    Dimensions,
)
from podium.llm import ProviderError, build_provider
from podium.patterns import DEFAULT_PATTERN
from podium.settings import Settings
from podium_orchestrator.agent import DecisionInput, DecisionResult, OrchestratorAgent, Proposal
from podium_orchestrator.patterns import Pattern
from podium_orchestrator.selection import Selection

_agents: dict[int, OrchestratorAgent] = {}
_lock = threading.Lock()


def orchestrator_agent(settings: Settings) -> OrchestratorAgent:
    """One Orchestrator agent per process and settings (providers are thread-safe)."""
    with _lock:
        agent = _agents.get(id(settings))
        if agent is None:
            agent = OrchestratorAgent(
                build_provider(settings, settings.orchestrator_provider or settings.llm_provider),
                settings.orchestrator_model or settings.llm_model,
                timeout_s=settings.orchestrator_timeout_s,
                max_tokens=settings.orchestrator_max_output_tokens,
                tool_choice=settings.orchestrator_tool_choice,
            )
            _agents[id(settings)] = agent
        return agent


class Decider:
    def __init__(self, agent: Callable[[], OrchestratorAgent]) -> None:
        self._agent = agent
        self._results: dict[str, DecisionResult] = {}
        self._built: dict[str, list[Decision]] = {}
        self._applied: set[str] = set()
        self.round_keys: list[str] = []

    def new_round(self) -> None:
        self.round_keys = []

    def consult(
        self, key: str, inp: DecisionInput, *, tokens_left: int, run_id: str
    ) -> DecisionResult:
        """The Orchestrator agent's answer for decision point ``key`` (asked once)."""
        self.round_keys.append(key)
        result = self._results.get(key)
        if result is None:
            if tokens_left <= 0:
                result = DecisionResult(None, f"budget_exhausted: {-tokens_left} tokens over")
            else:
                try:
                    agent = self._agent()
                except ProviderError as exc:  # the Orchestrator agent's provider is not set up
                    result = DecisionResult(None, f"provider_error: {exc}")
                else:
                    result = agent.decide(inp, metadata={"run_id": run_id})
            self._results[key] = result
        return result

    def built(self, key: str, decisions: list[Decision]) -> None:
        self._built[key] = decisions

    def applied(self) -> None:
        """The round's plan was applied: its decision points are done."""
        self._applied.update(self.round_keys)

    def unused(self) -> list[Decision]:
        """Decisions paid for in earlier rounds that the applied plan did not use."""
        used = self._applied | set(self.round_keys)
        return [
            d for key, ds in self._built.items() if key not in used for d in ds if d.usage.tokens
        ]


# --- building decisions -----------------------------------------------------------------------


def forced(
    pattern: str, selection: Selection, patterns: dict[str, Pattern], options: dict[str, Any]
) -> Decision:
    return Decision(
        dimensions=Dimensions(pattern=pattern, agent=selection.agent),
        source=DecisionSource.FORCED,
        rationale=f"Pattern '{pattern}' was forced by the request; {selection.reason}.",
        expected_outcome=patterns[pattern].expected(selection.agent, (), options),
    )


def fallback(
    selection: Selection,
    reason: str,
    usage: DecisionUsage,
    patterns: dict[str, Pattern],
    *,
    kind: DecisionKind = DecisionKind.PLAN,
) -> Decision:
    return Decision(
        dimensions=Dimensions(kind=kind, pattern=DEFAULT_PATTERN, agent=selection.agent),
        source=DecisionSource.FALLBACK,
        rationale=f"Fallback to '{DEFAULT_PATTERN}' ({reason}); {selection.reason}.",
        fallback_reason=reason,
        expected_outcome=patterns[DEFAULT_PATTERN].expected(selection.agent, (), {}),
        usage=usage,
    )


def planned(
    proposal: Proposal,
    selection: Selection,
    requested_agent: str | None,
    usage: DecisionUsage,
    patterns: dict[str, Pattern],
    options: dict[str, dict[str, Any]],
) -> Decision:
    """A plan decision from what the Orchestrator agent proposed."""
    pattern = proposal.pattern or DEFAULT_PATTERN
    agent = requested_agent or proposal.agent or selection.agent
    rationale = proposal.rationale
    if proposal.agent is None:
        rationale += f" [agent] {selection.reason}."
    if proposal.question:
        expected = "the user answers the question"
    else:
        expected = patterns[pattern].expected(agent, proposal.team, options.get(pattern, {}))
    return Decision(
        dimensions=Dimensions(
            pattern=pattern,
            agent=agent,
            parameters=proposal.parameters,
            team=proposal.team,
            merge=proposal.merge,
            question=proposal.question,
            finish=proposal.finish,
            answer=proposal.answer,
            request_class=proposal.request_class,
            class_source="orchestrator agent" if proposal.request_class else None,
        ),
        source=DecisionSource.ORCHESTRATOR,
        rationale=rationale.strip(),
        expected_outcome=expected,
        usage=usage,
    )


def rejected(decision: Decision, reason: str) -> Decision:
    return decision.with_outcome(DecisionOutcome(status="rejected", reason=reason))


def overruled(
    decision: Decision,
    to_pattern: str,
    rationale: str,
    patterns: dict[str, Pattern],
    options: dict[str, Any],
) -> Decision:
    """The learned policy's plan instead of ``decision``: same agent and parameters, and the
    team where the new pattern can run it (said in the note where it cannot)."""
    dims = decision.dimensions
    team, note = dims.team, None
    if team and patterns[to_pattern].accepts(dims.agent, team, options) is not None:
        team, note = (), f"the team {list(dims.team)} does not apply to {to_pattern}"
    return Decision(
        dimensions=dims.model_copy(
            update={
                "pattern": to_pattern,
                "team": team,
                "overruled": dims.pattern,
                "guidance": None,
                "note": note,
            }
        ),
        source=DecisionSource.POLICY,
        rationale=rationale,
        expected_outcome=patterns[to_pattern].expected(dims.agent, team, options),
    )


def checkpoint(
    result: DecisionResult,
    name: str,
    current: Decision,
    pattern: str,
) -> Decision:
    """A checkpoint's decision: continue, finish, or re-route the next step. It records the
    run's actual pattern, and the parameters the next calls run with (the plan's, overridden
    by what the checkpoint set)."""
    dims = current.dimensions
    base: dict[str, Any] = {
        "kind": DecisionKind.CHECKPOINT,
        "pattern": pattern,
        "checkpoint": name,
        "team": dims.team,
        "merge": dims.merge,
    }
    proposal = result.proposal
    if proposal is None:
        reason = result.fallback_reason or "invalid_output"
        return Decision(
            dimensions=Dimensions(
                agent=dims.agent,
                parameters=dims.parameters,
                action=CheckpointAction.CONTINUE,
                **base,
            ),
            source=DecisionSource.FALLBACK,
            rationale=f"Fallback: continue the current pattern ({reason}).",
            fallback_reason=reason,
            usage=result.usage,
        )
    action = (
        CheckpointAction.FINISH
        if proposal.finish
        else (CheckpointAction.REROUTE if proposal.agent else CheckpointAction.CONTINUE)
    )
    note = None
    if proposal.pattern is not None and proposal.pattern != pattern:
        note = (
            f"choose_pattern {proposal.pattern} is not applied at a checkpoint; {pattern} goes on"
        )
    return Decision(
        dimensions=Dimensions(
            agent=proposal.agent or dims.agent,
            parameters=proposal.parameters.over(dims.parameters),
            action=action,
            note=note,
            **base,
        ),
        source=DecisionSource.ORCHESTRATOR,
        rationale=proposal.rationale,
        usage=result.usage,
    )


def handoff(
    from_agent: str, to_agent: str, rationale: str, governing: Decision, pattern: str
) -> Decision:
    """An agent redirected the request: the target continues under the same parameters."""
    return Decision(
        dimensions=Dimensions(
            kind=DecisionKind.HANDOFF,
            pattern=pattern,
            agent=to_agent,
            parameters=governing.dimensions.parameters,
        ),
        source=DecisionSource.HANDOFF,
        rationale=f"'{from_agent}' handed the request to '{to_agent}': {rationale}",
        expected_outcome=f"'{to_agent}' answers with the full thread as context",
    )


def tools_note(
    parameters: AgentParameters, agents: Sequence[str], tools_of: Callable[[str], Sequence[str]]
) -> str | None:
    """Where a decided tool allow-list names tools an agent of the decision does not have:
    said, since those calls run without them."""
    if parameters.tools is None:
        return None
    missing = {agent: [t for t in parameters.tools if t not in tools_of(agent)] for agent in agents}
    missing = {a: m for a, m in missing.items() if m}
    if not missing:
        return None
    return "tools not available to: " + "; ".join(f"{a} lacks {m}" for a, m in missing.items())
