"""What the Orchestrator agent sees (DESIGN §1, §3).

The first decision of a run sees the thread (its latest summary and the messages after it,
bounded); later decisions see only the delta: thread events after the context's cursor and
the outcomes of earlier decisions. The decision history has its own token budget: past it,
the oldest decisions are folded into the context's summary, so later prompts stay flat no
matter how long the run or the thread grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.llm import ChatMessage
from podium.store import EventKind, OrchestrationContext, OrchestrationDecision, ThreadEvent

FIRST_CONTEXT_EVENTS = 40
DELTA_EVENTS = 12
MESSAGE_CHARS = 1200
DELTA_MESSAGE_CHARS = 500
SHOWN_KINDS = (EventKind.USER_MESSAGE, EventKind.AGENT_MESSAGE, EventKind.SUMMARY)


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _message(event: ThreadEvent, limit: int) -> ChatMessage:
    content = event.content if len(event.content) <= limit else event.content[:limit] + " […]"
    if event.kind == EventKind.USER_MESSAGE:
        return ChatMessage(role="user", content=content, name="user")
    if event.kind == EventKind.SUMMARY:
        return ChatMessage(role="system", content=content, name="summary")
    return ChatMessage(role="assistant", content=content, name=event.agent or "agent")


def first_context(session: Session, thread_id: str, until_seq: int) -> list[ChatMessage]:
    """The thread before the request: the latest summary and the messages after it."""
    events = list(
        session.scalars(
            select(ThreadEvent)
            .where(
                ThreadEvent.thread_id == thread_id,
                ThreadEvent.seq < until_seq,
                ThreadEvent.kind.in_([k.value for k in SHOWN_KINDS]),
            )
            .order_by(ThreadEvent.seq.desc())
            .limit(FIRST_CONTEXT_EVENTS)
        )
    )
    events.reverse()
    for i in range(len(events) - 1, -1, -1):
        if events[i].kind == EventKind.SUMMARY:
            events = events[i:]
            break
    return [_message(e, MESSAGE_CHARS) for e in events]


def delta_context(
    session: Session, thread_id: str, after_seq: int
) -> tuple[list[ChatMessage], int]:
    """Messages after the cursor (bounded), and the seq the cursor moves to."""
    events = list(
        session.scalars(
            select(ThreadEvent)
            .where(
                ThreadEvent.thread_id == thread_id,
                ThreadEvent.seq > after_seq,
                ThreadEvent.kind.in_([k.value for k in SHOWN_KINDS]),
            )
            .order_by(ThreadEvent.seq.desc())
            .limit(DELTA_EVENTS)
        )
    )
    events.reverse()
    newest = max((e.seq for e in events), default=after_seq)
    return [_message(e, DELTA_MESSAGE_CHARS) for e in events], newest


def decision_line(d: OrchestrationDecision) -> str:
    dims = d.dimensions
    outcome = (d.actual_outcome or {}).get("status", "pending")
    what = f"pattern={dims.get('pattern')} agent={dims.get('agent')}"
    if dims.get("team"):
        what += f" team={dims.get('team')}"
    if dims.get("action"):
        what += f" action={dims.get('action')}"
    fallback = f" (fallback: {d.fallback_reason})" if d.fallback_reason else ""
    return f"#{d.seq} [{d.source}] {what}{fallback} → {outcome}"


def history(
    context: OrchestrationContext, decisions: Sequence[OrchestrationDecision], budget_tokens: int
) -> str:
    """The decision history within its budget; folds the oldest into context.summary."""
    recent = [d for d in decisions if d.seq > context.summarized_through_seq]
    lines = [decision_line(d) for d in recent]

    def rendered() -> str:
        head = f"Summary of earlier decisions: {context.summary}\n" if context.summary else ""
        return head + "\n".join(lines)

    while lines and estimate_tokens(rendered()) > budget_tokens and len(recent) > 1:
        oldest = recent.pop(0)
        lines.pop(0)
        folded = (
            f"#{oldest.seq} {oldest.dimensions.get('pattern')}/{oldest.dimensions.get('agent')}"
        )
        context.summary = f"{context.summary}; {folded}" if context.summary else folded
        # Keep the summary itself bounded: only the newest folded entries survive.
        context.summary = context.summary[-budget_tokens * 2 :]
        context.summarized_through_seq = oldest.seq
    return rendered()
