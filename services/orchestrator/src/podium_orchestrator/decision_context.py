"""What the Orchestrator agent sees (docs/architecture.md, "The OrchestrationContext").

The first decision of a run sees the thread before the request (its latest summary and the
messages after it, bounded). A later decision sees only the delta: thread events after the
context's cursor, the newest in full and the older ones summarised in a line each, and the
earlier decisions with their outcomes as they stand when it is made. The decision history
has its own token budget: past it, the oldest decisions are folded into the context's
summary, so later prompts stay flat however long the run grows.

Everything here is pure: the step reads the events, these functions shape them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from podium.decisions import Decision
from podium.lifecycle import CallView
from podium.llm import ChatMessage
from podium.store import EventKind

FIRST_CONTEXT_EVENTS = 40
DELTA_EVENTS = 12
# Older delta events are summarised, each in a line of at most this many characters, and the
# summary as a whole in at most DELTA_SUMMARY_CHARS.
DELTA_LINE_CHARS = 80
DELTA_SUMMARY_CHARS = 1200
COUNT_LINE_CHARS = 150
MESSAGE_CHARS = 1200
DELTA_MESSAGE_CHARS = 500
SHOWN_KINDS = (EventKind.USER_MESSAGE, EventKind.AGENT_MESSAGE, EventKind.SUMMARY)


@dataclass(frozen=True)
class EventView:
    seq: int
    kind: str
    agent: str | None
    content: str


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 4)] + " […]"


def _message(event: EventView, limit: int) -> ChatMessage:
    content = _clip(event.content, limit)
    if event.kind == EventKind.USER_MESSAGE:
        return ChatMessage(role="user", content=content, name="user")
    if event.kind == EventKind.SUMMARY:
        return ChatMessage(role="system", content=content, name="summary")
    return ChatMessage(role="assistant", content=content, name=event.agent or "agent")


def first_context(events: Sequence[EventView]) -> list[ChatMessage]:
    """The thread before the request, oldest first, from its latest summary on."""
    events = list(events)
    for i in range(len(events) - 1, -1, -1):
        if events[i].kind == EventKind.SUMMARY:
            events = events[i:]
            break
    return [_message(e, MESSAGE_CHARS) for e in events]


@dataclass(frozen=True)
class Delta:
    messages: list[ChatMessage]
    # The newest seq the delta covers: where the context's cursor moves.
    newest: int


def delta_context(events: Sequence[EventView], total: int) -> Delta:
    """The events after the cursor (``events``, oldest first, possibly only the newest of
    ``total``): the newest DELTA_EVENTS in full, the older ones summarised in one message."""
    events = list(events)
    shown, older = events[-DELTA_EVENTS:], events[:-DELTA_EVENTS]
    messages: list[ChatMessage] = []
    hidden = total - len(events)
    if older or hidden > 0:
        messages.append(ChatMessage(role="system", content=summarise(older, hidden), name="delta"))
    messages += [_message(e, DELTA_MESSAGE_CHARS) for e in shown]
    return Delta(messages, max((e.seq for e in events), default=0))


def summarise(older: Sequence[EventView], hidden: int) -> str:
    """One line per older message (who, and how it starts), within DELTA_SUMMARY_CHARS."""
    count = len(older) + hidden
    head = f"{count} earlier message(s) since your last decision, in short:"
    lines: list[str] = []
    # Room is kept for the line that counts what has no line of its own.
    used = len(head) + COUNT_LINE_CHARS
    for event in reversed(older):  # the newest of the older ones matter most
        who = "user" if event.kind == EventKind.USER_MESSAGE else (event.agent or event.kind)
        line = f"- {who}: {_clip(' '.join(event.content.split()), DELTA_LINE_CHARS)}"
        if used + len(line) + 1 > DELTA_SUMMARY_CHARS:
            break
        lines.insert(0, line)
        used += len(line) + 1
    left_out = count - len(lines)
    if left_out:
        speakers = Counter(
            "user" if e.kind == EventKind.USER_MESSAGE else (e.agent or e.kind)
            for e in older[: len(older) - len(lines)]
        )
        who = ", ".join(f"{n} from {s}" for s, n in speakers.most_common()) or "not loaded"
        lines.insert(0, _clip(f"- {left_out} older message(s) not shown ({who})", COUNT_LINE_CHARS))
    return "\n".join([head, *lines])


def outcome_so_far(decision: Decision, calls: Sequence[CallView]) -> str:
    """A decision's outcome as it stands: recorded, or read off the calls it started."""
    if decision.outcome is not None:
        return decision.outcome.status
    mine = [c for c in calls if c.decision_seq == decision.seq]
    if not mine:
        action = decision.dimensions.action
        return f"{action.value}" if action is not None else "no agent call yet"
    by_status = Counter(str(c.status) for c in mine)
    return f"{len(mine)} call(s): " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))


def decision_line(decision: Decision, calls: Sequence[CallView]) -> str:
    dims = decision.dimensions
    what = f"{dims.kind.value} pattern={dims.pattern} agent={dims.agent}"
    if dims.team:
        what += f" team={list(dims.team)}"
    if dims.action is not None:
        what += f" action={dims.action.value}"
    fallback = f" (fallback: {decision.fallback_reason})" if decision.fallback_reason else ""
    return f"#{decision.seq} [{decision.source.value}]{fallback} {what} → " + outcome_so_far(
        decision, calls
    )


@dataclass(frozen=True)
class History:
    text: str
    # Set when older decisions were folded: the context's new summary and how far it reaches.
    summary: str | None = None
    summarized_through_seq: int | None = None


def history(
    summary: str | None,
    summarized_through_seq: int,
    decisions: Sequence[Decision],
    calls: Sequence[CallView],
    budget_tokens: int,
) -> History:
    """The decision history within ``budget_tokens``; the oldest decisions are folded into
    the summary (kept within half the budget) until the rest fits."""
    limit = budget_tokens * 4  # estimate_tokens counts 4 characters a token
    recent = [d for d in decisions if d.seq > summarized_through_seq]
    lines = [decision_line(d, calls) for d in recent]
    folded = False

    def rendered() -> str:
        head = f"Summary of earlier decisions: {summary}\n" if summary else ""
        return head + "\n".join(lines)

    while len(rendered()) > limit and len(lines) > 1:
        oldest = recent.pop(0)
        lines.pop(0)
        dims = oldest.dimensions
        entry = f"#{oldest.seq} {dims.pattern}/{dims.agent}"
        summary = f"{summary}; {entry}" if summary else entry
        summary = summary[-(limit // 2) :]  # only the newest folded entries survive
        summarized_through_seq = oldest.seq
        folded = True
    text = rendered()
    if len(text) > limit:  # one decision alone is over the budget: cut it, not the budget
        text = text[: max(0, limit - 2)] + " …" if limit >= 2 else ""
    return History(
        text,
        summary if folded else None,
        summarized_through_seq if folded else None,
    )
