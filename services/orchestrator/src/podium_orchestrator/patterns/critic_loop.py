"""``critic_loop``: a producer answers, a critic reviews, the producer revises — until the
critic approves or ``max_rounds`` reviews have happened. A team names the producer, or the
producer and the critic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from podium.store import CallStatus
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    RunView,
    Wait,
    failure_of,
)

APPROVED = re.compile(r"^\W*approved\b", re.IGNORECASE)

REVIEW_TASK = (
    "Review the latest draft answer above against the user's request. Start your reply with "
    "APPROVED if it needs no change; otherwise start with REVISE and list specific fixes."
)
REVISE_TASK = (
    "Revise your previous answer so that it addresses every point of the latest review above. "
    "Reply with the complete revised answer only."
)


def roles_of(agent: str, team: Sequence[str], options: dict[str, Any]) -> tuple[str, str]:
    """(producer, critic)."""
    critic = str(options.get("critic", "critic"))
    if len(team) >= 2:
        return team[0], team[1]
    if len(team) == 1:
        return team[0], critic
    return agent, critic


class CriticLoopPattern:
    name = "critic_loop"
    control_tools: tuple[str, ...] = ()

    def accepts(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str | None:
        if len(team) > 2:
            return f"critic_loop takes a producer and a critic; it cannot run the team {list(team)}"
        return None

    def expected(self, agent: str, team: Sequence[str], options: dict[str, Any]) -> str:
        producer, critic = roles_of(agent, team, options)
        return f"'{producer}' drafts an answer that '{critic}' approves within the round limit"

    def next_actions(self, view: RunView) -> list[Action]:
        if view.in_flight():
            return [Wait()]
        producer, critic = roles_of(view.agent, view.team, view.options)
        max_rounds = int(view.options.get("max_rounds", 3))
        drafts = view.by_role("producer")
        reviews = view.by_role("critic")
        failed = next((c for c in view.calls if c.failed), None)
        if failed is not None:
            if failed.role == "critic" and drafts:
                # A failed review should not lose a good draft.
                return [Complete(drafts[-1].output or "", note="critic failed; draft returned")]
            return [failure_of(failed)]
        if not drafts:
            return [Dispatch(producer, role="producer", step_index=0)]
        if len(reviews) < len(drafts):
            return [Dispatch(critic, role="critic", step_index=len(reviews), task=REVIEW_TASK)]
        last_review = reviews[-1]
        if last_review.status == CallStatus.SUCCEEDED and APPROVED.search(last_review.output or ""):
            return [
                Complete(drafts[-1].output or "", note=f"approved after {len(reviews)} review(s)")
            ]
        if len(reviews) >= max_rounds:
            return [
                Complete(
                    drafts[-1].output or "",
                    note=f"not approved after {max_rounds} rounds; last draft returned",
                )
            ]
        return [Dispatch(producer, role="producer", step_index=len(drafts), task=REVISE_TASK)]
