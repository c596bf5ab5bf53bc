"""``parallel_team``: members work on the request at once, each in a clean sub-thread; the
orchestrator fans in through the store (no Celery chords) and merges — by a synthesiser agent,
a vote, or concatenation. Members that failed are reported, not fatal, unless all failed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from podium.decisions import MergeMode
from podium.lifecycle import CallView
from podium.store import CallStatus
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    Fail,
    RunView,
    Wait,
)


def team_of(agent: str, team: Sequence[str], options: dict[str, Any]) -> list[str]:
    return list(team) or [str(a) for a in options.get("default_team", [])] or [agent]


def merge_task(request: str, ok: list[CallView], failed: list[CallView]) -> str:
    parts = [f"Request:\n{request}\n", "Answers from the team:"]
    parts += [f"\n[{c.agent}]\n{c.output or ''}" for c in ok]
    if failed:
        parts.append("\nMembers whose work failed: " + ", ".join(c.agent for c in failed))
    parts.append("\nMerge these into one answer to the request.")
    return "\n".join(parts)


def concatenate(ok: list[CallView]) -> str:
    return "\n\n".join(f"[{c.agent}]\n{c.output or ''}" for c in ok)


def vote(ok: list[CallView]) -> str:
    # Exact-match majority on normalised text; ties go to the earliest member.
    counts = Counter(" ".join((c.output or "").split()).lower() for c in ok)
    best = max(counts.values())
    return next(
        c.output or "" for c in ok if counts[" ".join((c.output or "").split()).lower()] == best
    )


class ParallelTeamPattern:
    name = "parallel_team"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        return None

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        who = ", ".join(team_of(agent, team, options))
        return f"{who} answer in parallel and their answers are merged"

    def next_actions(self, view: RunView) -> list[Action]:
        members = view.by_role("member")
        if not members:
            return [
                Dispatch(
                    agent,
                    role="member",
                    step_index=i,
                    task=view.input,
                    context_mode="clean",
                    sub_thread=True,
                )
                for i, agent in enumerate(team_of(view.agent, view.team, view.options))
            ]
        if view.in_flight():
            return [Wait()]
        ok = [c for c in members if c.status == CallStatus.SUCCEEDED]
        failed = [c for c in members if c.failed]
        note = f"{len(failed)} of {len(members)} members failed" if failed else None
        if not ok:
            return [Fail("team_failed", f"all {len(members)} team members failed")]
        merge = view.merge or MergeMode(str(view.options.get("merge", "synthesizer")))
        if merge == MergeMode.VOTE:
            return [Complete(vote(ok), note=note, append_as="team")]
        if merge == MergeMode.CONCAT:
            return [Complete(concatenate(ok), note=note, append_as="team")]
        merges = view.by_role("merge")
        if not merges:
            synthesizer = str(view.options.get("synthesizer", "synthesizer"))
            return [
                Dispatch(
                    synthesizer,
                    role="merge",
                    task=merge_task(view.input, ok, failed),
                    context_mode="clean",
                )
            ]
        if merges[-1].status == CallStatus.SUCCEEDED:
            return [Complete(merges[-1].output or "", note=note)]
        return [
            Complete(
                concatenate(ok), note="synthesizer failed; answers concatenated", append_as="team"
            )
        ]
