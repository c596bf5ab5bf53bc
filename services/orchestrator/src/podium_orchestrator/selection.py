"""Agent selection for ``direct`` (docs/architecture.md, "Decisions"): the caller's choice, else an
@mention, else the thread's last agent, else the tenant default. Returns the agent and why it was
chosen."""

from __future__ import annotations

import re
from dataclasses import dataclass

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.-]{0,99})")


@dataclass(frozen=True)
class Selection:
    agent: str
    reason: str


def mentioned_agents(text: str, known: set[str]) -> list[str]:
    """Agents @mentioned in ``text``, in order of appearance, that exist for the tenant."""
    seen: list[str] = []
    for raw in MENTION.findall(text):
        name = raw.rstrip(".")  # "@coder." ends a sentence
        if name in known and name not in seen:
            seen.append(name)
    return seen


def select_agent(
    *,
    requested: str | None,
    text: str,
    last_agent: str | None,
    default_agent: str,
    known: set[str],
) -> Selection:
    if requested and requested in known:
        return Selection(requested, f"agent '{requested}' was requested by the caller")
    mentions = mentioned_agents(text, known)
    if mentions:
        return Selection(mentions[0], f"the prompt @mentions '{mentions[0]}'")
    if last_agent and last_agent in known:
        return Selection(last_agent, f"'{last_agent}' is the last agent that spoke in the thread")
    if default_agent in known:
        return Selection(default_agent, f"'{default_agent}' is the tenant's default agent")
    if known:
        first = sorted(known)[0]
        return Selection(
            first,
            f"the tenant default '{default_agent}' is not defined; '{first}' is the first agent",
        )
    raise LookupError("the tenant has no agents defined")
