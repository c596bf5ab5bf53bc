"""The messages an agent call starts from: its instructions, the thread (from its latest
summary on, compacted when over the agent's context budget), and its task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from podium.lifecycle.calls import ClaimedCall
from podium.llm import ChatMessage
from podium.store import EventKind, ThreadEvent
from podium_agent_worker.compaction import Entry

CONTEXT_KINDS = (
    EventKind.USER_MESSAGE,
    EventKind.AGENT_MESSAGE,
    EventKind.SUMMARY,
    EventKind.TOOL_REQUEST,
    EventKind.TOOL_RESPONSE,
)
MAX_EVENTS = 400


@dataclass
class CallContext:
    instructions: str
    entries: list[Entry]
    task: str | None


def load_context(session: Session, claimed: ClaimedCall) -> CallContext:
    """The call's context, read after its claim, in the caller's read session."""
    call = claimed.call
    instructions = str(call.params.get("instructions", ""))
    if call.context_mode == "clean" and call.thread_id == claimed.run_thread_id:
        return CallContext(instructions, [], call.task or claimed.run_input)
    visible = [
        ThreadEvent.thread_id == call.thread_id,
        ThreadEvent.seq <= claimed.context_until_seq,
    ]
    if call.thread_id == claimed.run_thread_id:
        # Prompts of runs queued after this one are not this call's business.
        visible.append(
            or_(
                ThreadEvent.seq <= claimed.run_input_event_seq,
                ThreadEvent.run_id == call.run_id,
            )
        )
    return _load(session, visible, instructions, call.task)


def _load(session: Session, visible: list[Any], instructions: str, task: str | None) -> CallContext:
    # From the latest summary on, in one query (the summary's seq as a subquery).
    latest_summary = (
        select(func.coalesce(func.max(ThreadEvent.seq), 0))
        .where(*visible, ThreadEvent.kind == EventKind.SUMMARY.value)
        .correlate(None)  # its own scan of thread_events, not the outer query's row
        .scalar_subquery()
    )
    events = list(
        session.execute(
            select(
                ThreadEvent.seq,
                ThreadEvent.kind,
                ThreadEvent.role,
                ThreadEvent.agent,
                ThreadEvent.content,
            )
            .where(
                *visible,
                ThreadEvent.seq >= latest_summary,
                ThreadEvent.kind.in_([k.value for k in CONTEXT_KINDS]),
            )
            .order_by(ThreadEvent.seq.desc())
            .limit(MAX_EVENTS)
        )
    )
    events.reverse()
    entries = [Entry(e.seq, e.kind, e.role, e.agent, e.content) for e in events]
    return CallContext(instructions, entries, task)


def render(ctx: CallContext, agent: str) -> list[ChatMessage]:
    """Chat messages for the model. Other agents speak as labelled user turns, so the model
    answers as itself and does not take their words for its own."""
    messages = [ChatMessage(role="system", content=ctx.instructions or f"You are {agent}.")]
    for entry in ctx.entries:
        if entry.kind == EventKind.SUMMARY:
            messages.append(ChatMessage(role="system", content=entry.content))
        elif entry.kind == EventKind.USER_MESSAGE:
            messages.append(ChatMessage(role="user", content=entry.content))
        elif entry.kind == EventKind.AGENT_MESSAGE and entry.agent == agent:
            messages.append(ChatMessage(role="assistant", content=entry.content, name=agent))
        elif entry.kind == EventKind.AGENT_MESSAGE:
            messages.append(ChatMessage(role="user", content=f"[{entry.agent}] {entry.content}"))
        else:  # tool traffic of earlier calls, as plain text
            messages.append(
                ChatMessage(
                    role="user", content=f"[{entry.kind} {entry.agent or ''}] {entry.content}"
                )
            )
    if ctx.task:
        messages.append(ChatMessage(role="user", content=ctx.task))
    return messages
