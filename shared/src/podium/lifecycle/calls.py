"""Transitions of an agent call: claim it, record its tool steps and summaries, commit its
outcome once, cancel it, give it up as lost; and the reaper's re-sends.

Claim and commit are single conditional statements: a call moves ``pending -> running`` once,
and ``running -> succeeded | failed | cancelled`` once, whatever the redeliveries. Nothing here
waits on the network with a transaction open: the lease check of a takeover happens before
the statement that takes the call over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Connection, Update, bindparam, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from podium.events import call_lost_error
from podium.lifecycle import sql
from podium.lifecycle.finish import EndedByCall, end_with_call
from podium.lifecycle.snapshot import CallView
from podium.lifecycle.threads import append_event
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun, ExecuteAgentCall, SubmitAgentCall
from podium.queues import agents_queue
from podium.runtime import Runtime
from podium.store import (
    TERMINAL_CALL_STATUSES,
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    EventKind,
    Run,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_TERMINAL_RUN = [s.value for s in TERMINAL_RUN_STATUSES]
_OPEN = [CallStatus.PENDING.value, CallStatus.RUNNING.value]


@dataclass(frozen=True)
class ClaimedCall:
    call: CallView
    attempts: int
    context_until_seq: int
    # The run's thread, prompt and its seq: what the call's context is cut from.
    run_thread_id: str
    run_input: str
    run_input_event_seq: int


def load_claimed(session: Session, call_id: str) -> ClaimedCall:
    """A claimed call as its worker needs it, in the caller's read session."""
    row = (
        session.connection()
        .execute(
            select(
                AgentCall.__table__,
                Run.thread_id.label("run_thread_id"),
                Run.input.label("run_input"),
                Run.input_event_seq.label("run_input_event_seq"),
            )
            .join(Run, Run.id == AgentCall.run_id)
            .where(AgentCall.id == call_id)
        )
        .one()
    )
    return _claimed(row)


def _claimed(row: Any) -> ClaimedCall:
    return ClaimedCall(
        call=CallView.of(row),
        attempts=row.attempts,
        context_until_seq=row.context_until_seq,
        run_thread_id=row.run_thread_id,
        run_input=row.run_input,
        run_input_event_seq=row.run_input_event_seq,
    )


_calls = sql.table(AgentCall)
_runs = sql.table(Run)


def _run_column(column: Any) -> Any:
    """A column of the call's run, as a scalar subquery of an ``agent_calls`` statement
    (SQLite's RETURNING may not name another table, but may hold a subquery)."""
    return select(column).where(_runs.c.id == _calls.c.run_id).scalar_subquery()


_CLAIM = (
    update(_calls)
    .where(
        _calls.c.id == bindparam("p_call_id"),
        _calls.c.status == CallStatus.PENDING.value,
        exists().where(
            _runs.c.id == _calls.c.run_id,
            _runs.c.status.not_in(_TERMINAL_RUN),
            _runs.c.cancel_requested.is_(False),
        ),
    )
    .values(
        status=CallStatus.RUNNING.value,
        attempts=_calls.c.attempts + 1,
        started_at=bindparam("p_now", type_=_calls.c.started_at.type),
    )
    .returning(
        *_calls.c,
        _run_column(_runs.c.thread_id).label("run_thread_id"),
        _run_column(_runs.c.input).label("run_input"),
        _run_column(_runs.c.input_event_seq).label("run_input_event_seq"),
    )
)


def claim(
    runtime: Runtime, call_id: str, read: Callable[[Connection, ClaimedCall], T]
) -> tuple[ClaimedCall, T] | None:
    """``pending -> running``, if the call's run still wants it: the claimed call, and what
    ``read(connection, claimed)`` reads for it in the same short transaction (the worker's
    context). None: not claimed (some other delivery did, or there is nothing to do); see
    ``take_over`` for running calls."""
    with owned_transaction(runtime) as tx:
        row = tx.connection.execute(_CLAIM, {"p_call_id": call_id, "p_now": utcnow()}).first()
        if row is None:
            return None
        claimed = _claimed(row)
        return claimed, read(tx.connection, claimed)


@dataclass(frozen=True)
class CallState:
    status: CallStatus
    attempts: int
    pool: str
    run_id: str
    run_open: bool
    started_long_ago: bool


def state(runtime: Runtime, call_id: str, *, grace_s: float) -> CallState | None:
    """Where an unclaimable call stands (a short read)."""
    with runtime.db.read() as session:
        row = session.execute(
            select(
                AgentCall.status,
                AgentCall.attempts,
                AgentCall.pool,
                AgentCall.run_id,
                Run.status,
                Run.cancel_requested,
                AgentCall.started_at,
            )
            .join(Run, Run.id == AgentCall.run_id)
            .where(AgentCall.id == call_id)
        ).first()
    if row is None:
        return None
    started = row[6]
    return CallState(
        status=CallStatus(row[0]),
        attempts=row[1],
        pool=row[2],
        run_id=row[3],
        run_open=row[4] not in _TERMINAL_RUN and not row[5],
        started_long_ago=started is None or utcnow() - started > timedelta(seconds=grace_s),
    )


def take_over(runtime: Runtime, call_id: str, attempts: int, *, grace_s: float) -> bool:
    """A ``running`` call whose worker was lost (its lease lapsed: checked by the caller
    before this) is claimed again, if nobody did since (``attempts`` unchanged) and it was
    started more than ``grace_s`` ago (a worker that just claimed it has not taken its lease
    yet)."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    with owned_transaction(runtime) as tx:
        won = tx.connection.execute(
            update(AgentCall)
            .where(
                AgentCall.id == call_id,
                AgentCall.status == CallStatus.RUNNING.value,
                AgentCall.attempts == attempts,
                AgentCall.started_at < cutoff,
            )
            .values(attempts=attempts + 1, started_at=utcnow())
        ).rowcount
    return bool(won)


def cancel_open(runtime: Runtime, call_id: str, run_id: str) -> bool:
    """A call whose run was cancelled or ended: cancelled, and the run stepped."""
    with owned_transaction(runtime) as tx:
        done = tx.connection.execute(
            update(AgentCall)
            .where(AgentCall.id == call_id, AgentCall.status.in_(_OPEN))
            .values(status=CallStatus.CANCELLED.value, finished_at=utcnow())
        ).rowcount
        if done:
            tx.send(AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    return bool(done)


def give_up_lost(runtime: Runtime, call_id: str, run_id: str, attempts: int) -> bool:
    """A call started ``attempts`` times whose worker was lost each time: failed with
    ``call_lost``, and its run stepped, so its pattern reports the failure cleanly."""
    with owned_transaction(runtime) as tx:
        failed = tx.connection.execute(
            update(AgentCall)
            .where(
                AgentCall.id == call_id,
                AgentCall.status == CallStatus.RUNNING.value,
                AgentCall.attempts == attempts,
            )
            .values(
                status=CallStatus.FAILED.value,
                error=call_lost_error(attempts),
                finished_at=utcnow(),
            )
        ).rowcount
        if failed:
            tx.send(AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    if failed:
        log.error("call %s of run %s lost %d times: failed (call_lost)", call_id, run_id, attempts)
    return bool(failed)


# --- while it runs ----------------------------------------------------------------------------


def record_tool_step(
    runtime: Runtime, call: CallView, *, key: str, request: str, response: str, tool: str, ok: bool
) -> None:
    """The tool request and response of one step, appended once (``key`` deduplicates a
    redelivered call's replay)."""
    try:
        with owned_transaction(runtime) as tx:
            for kind, content in (
                (EventKind.TOOL_REQUEST, request),
                (EventKind.TOOL_RESPONSE, response),
            ):
                append_event(
                    tx.connection,
                    tenant_id=call.tenant_id,
                    thread_id=call.thread_id,
                    kind=kind,
                    role="tool",
                    agent=call.agent,
                    content=content,
                    run_id=call.run_id,
                    call_id=call.id,
                    data={"tool": tool, "ok": ok},
                    dedupe_key=f"tool:{call.id}:{key}:{kind.value}",
                )
    except IntegrityError:
        pass  # a redelivered call already recorded this step


def append_summary(
    runtime: Runtime, call: CallView, *, text: str, covers_through_seq: int
) -> int | None:
    """A summary of the thread up to ``covers_through_seq``; None if another call wrote the
    same summary first."""
    try:
        with owned_transaction(runtime) as tx:
            _, seq = append_event(
                tx.connection,
                tenant_id=call.tenant_id,
                thread_id=call.thread_id,
                kind=EventKind.SUMMARY,
                role="system",
                content=text,
                run_id=call.run_id,
                call_id=call.id,
                data={"covers_through_seq": covers_through_seq},
                dedupe_key=f"summary:{call.thread_id}:{covers_through_seq}",
            )
            return seq
    except IntegrityError:
        return None


# --- the end ------------------------------------------------------------------------------------


@dataclass
class CallResult:
    """How a call ended, as committed."""

    status: CallStatus
    output: str | None = None
    control: dict[str, Any] | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tool_steps: int = 0
    error: dict[str, Any] | None = None
    # What the call actually ran with (model, temperature, max_output_tokens, tools).
    used: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "status": self.status.value,
            "output": self.output,
            "result": self.control,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "tool_steps": self.tool_steps,
            "error": self.error,
            "used": self.used or None,
        }
        if self.provider is not None:
            values["provider"] = self.provider
        if self.model is not None:
            values["model"] = self.model
        return values


@dataclass(frozen=True)
class Committed:
    """A call's outcome, committed; with its run's end when the commit ended the run."""

    ended: EndedByCall | None = None


@cache
def _commit_statement(keys: frozenset[str]) -> Update:
    """``running ->`` its end, setting the result's columns ``keys`` (one statement per set)."""
    return (
        update(_calls)
        .where(_calls.c.id == bindparam("p_call_id"), _calls.c.status == CallStatus.RUNNING.value)
        .values(
            {
                key: bindparam(f"p_{key}", type_=_calls.c[key].type)
                for key in sorted(keys | {"finished_at", "message_event_id"})
            }
        )
    )


def commit(
    runtime: Runtime, call: CallView, result: CallResult, answer: str | None
) -> Committed | None:
    """Commit the call's outcome once (``running ->`` its end). None if it was not running
    any more (cancelled meanwhile, or another delivery committed first). The answer becomes
    the agent's message in the call's thread, once (deduplicated by the call's id).

    A call marked ``ends_run`` that succeeded ends its run in the same transaction when
    nothing else is left to decide (``end_with_call``); every other commit wakes the
    orchestrator for the run's next step."""
    # The answer's event id is chosen first, so the call and its message are written with
    # one statement each.
    event_id = new_id() if answer else None
    columns = result.columns()
    with owned_transaction(runtime) as tx:
        session = tx.connection
        won = session.execute(
            _commit_statement(frozenset(columns)),
            {
                **{f"p_{key}": value for key, value in columns.items()},
                "p_call_id": call.id,
                "p_finished_at": utcnow(),
                "p_message_event_id": event_id,
            },
        ).rowcount
        if not won:
            return None
        if answer:
            append_event(
                session,
                tenant_id=call.tenant_id,
                thread_id=call.thread_id,
                kind=EventKind.AGENT_MESSAGE,
                role="assistant",
                agent=call.agent,
                content=answer,
                run_id=call.run_id,
                call_id=call.id,
                dedupe_key=f"call:{call.id}",
                event_id=event_id,
                thread_values={"last_agent": call.agent},
            )
        if call.ends_run and result.status == CallStatus.SUCCEEDED and not result.control:
            ended = end_with_call(runtime, tx, call, result.output or "")
            if ended is not None:
                return Committed(ended)
        tx.send(AdvanceRun(run_id=call.run_id, reason="call.finished", call_id=call.id))
        return Committed()


# --- repair (the reaper) ------------------------------------------------------------------------


def resend(runtime: Runtime, calls: list[tuple[str, str, str]]) -> None:
    """Publish ExecuteAgentCall again for ``(call_id, run_id, pool)`` whose message was lost
    (a duplicate is dropped by the worker's claim)."""
    if not calls:
        return
    with owned_transaction(runtime) as tx:
        for call_id, run_id, pool in calls:
            tx.send(ExecuteAgentCall(call_id=call_id, run_id=run_id), queue=agents_queue(pool))


def resubmit(runtime: Runtime, submissions: list[SubmitAgentCall]) -> None:
    """Hand calls the fair dispatcher lost (Redis restarted) to it again."""
    if not submissions:
        return
    with owned_transaction(runtime) as tx:
        for message in submissions:
            tx.send(message, queue=f"fair:{message.pool}")


def finished_states(runtime: Runtime, call_ids: list[str]) -> dict[str, bool]:
    """Which of ``call_ids`` are over (missing ones count as over)."""
    with runtime.db.read() as session:
        found = dict(
            session.execute(
                select(AgentCall.id, AgentCall.status).where(AgentCall.id.in_(call_ids))
            ).all()
        )
    terminal = {s.value for s in TERMINAL_CALL_STATUSES}
    return {c: found.get(c, CallStatus.CANCELLED.value) in terminal for c in call_ids}


__all__ = [
    "CallResult",
    "CallState",
    "ClaimedCall",
    "Committed",
    "append_summary",
    "cancel_open",
    "claim",
    "commit",
    "finished_states",
    "give_up_lost",
    "load_claimed",
    "record_tool_step",
    "resend",
    "resubmit",
    "state",
    "take_over",
]
