"""The messages an agent call starts from: its instructions, the thread (from its latest
summary on, compacted when over the agent's context budget), and its task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, or_, select

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


def _context_query(same_thread: bool) -> Select[Any]:
    """The visible events from the latest summary on, newest first, in one query (the
    summary's seq as a subquery). In the run's own thread, prompts of runs queued after this
    one are not the call's business."""
    events = ThreadEvent.__table__
    visible = [
        events.c.thread_id == bindparam("p_thread_id"),
        events.c.seq <= bindparam("p_until_seq"),
    ]
    if same_thread:
        visible.append(
            or_(events.c.seq <= bindparam("p_input_seq"), events.c.run_id == bindparam("p_run_id"))
        )
    latest_summary = (
        select(func.coalesce(func.max(events.c.seq), 0))
        .where(*visible, events.c.kind == EventKind.SUMMARY.value)
        .correlate(None)  # its own scan of thread_events, not the outer query's row
        .scalar_subquery()
    )
    return (
        select(events.c.seq, events.c.kind, events.c.role, events.c.agent, events.c.content)
        .where(
            *visible,
            events.c.seq >= latest_summary,
            events.c.kind.in_([k.value for k in CONTEXT_KINDS]),
        )
        .order_by(events.c.seq.desc())
        .limit(MAX_EVENTS)
    )


# Built once each, run on the claim's connection.
_IN_RUN_THREAD = _context_query(same_thread=True)
_IN_OTHER_THREAD = _context_query(same_thread=False)


def load_context(connection: Connection, claimed: ClaimedCall) -> CallContext:
    """The call's context, read after its claim, on the caller's connection."""
    call = claimed.call
    instructions = str(call.params.get("instructions", ""))
    same_thread = call.thread_id == claimed.run_thread_id
    if call.context_mode == "clean" and same_thread:
        return CallContext(instructions, [], call.task or claimed.run_input)
    params: dict[str, Any] = {
        "p_thread_id": call.thread_id,
        "p_until_seq": claimed.context_until_seq,
    }
    if same_thread:
        params |= {"p_input_seq": claimed.run_input_event_seq, "p_run_id": call.run_id}
    query = _IN_RUN_THREAD if same_thread else _IN_OTHER_THREAD
    events = list(connection.execute(query, params))
    events.reverse()
    entries = [Entry(e.seq, e.kind, e.role, e.agent, e.content) for e in events]
    return CallContext(instructions, entries, call.task)


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
