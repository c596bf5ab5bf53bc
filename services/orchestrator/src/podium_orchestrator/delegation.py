"""Delegation, in every pattern: an agent that calls ``delegate`` hands a sub-task to another
agent, in a clean sub-thread, and continues once the sub-task's answer is in. The delegating
call is then superseded by its continuation (same role and step), so patterns never see the
hand-back itself. The delegation depth is a guard.

Pure: from the run's calls to the actions that resolve open delegations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from podium.lifecycle import CallView, ThreadMessage
from podium.store import EventKind
from podium_orchestrator.patterns import Dispatch, GuardHit

TOOL = "delegate"


@dataclass
class Delegations:
    actions: list[Dispatch | GuardHit] = field(default_factory=list)
    markers: list[ThreadMessage] = field(default_factory=list)
    # True while a delegation is unresolved: the pattern waits.
    open: bool = False


def continuation(call: CallView, children: dict[str, list[CallView]]) -> CallView | None:
    """The call that carries on after ``call`` handed back (same role, same depth)."""
    return next(
        (k for k in children.get(call.id, []) if k.role == call.role and k.depth == call.depth),
        None,
    )


def effective(calls: Sequence[CallView]) -> list[CallView]:
    """The calls a pattern reasons about: hand-backs that have a continuation are replaced by
    it, and delegated sub-calls are internal."""
    children = _children(calls)
    return [
        c
        for c in calls
        if c.role != "delegate" and not (c.handed_back and continuation(c, children) is not None)
    ]


def _children(calls: Sequence[CallView]) -> dict[str, list[CallView]]:
    out: dict[str, list[CallView]] = {}
    for c in calls:
        if c.parent_call_id:
            out.setdefault(c.parent_call_id, []).append(c)
    return out


def resolve(calls: Sequence[CallView], agents: frozenset[str], max_depth: int) -> Delegations:
    children = _children(calls)
    out = Delegations()
    for call in calls:
        if call.handed_back != TOOL or continuation(call, children) is not None:
            continue
        out.open = True
        control = call.control or {}
        target = str(control.get("agent") or "")
        task = str(control.get("task") or "")
        child = next(
            (k for k in children.get(call.id, []) if k.role == "delegate"),
            None,
        )
        if child is None:
            _start(call, target, task, agents, max_depth, out)
            continue
        final = _final(child, children)
        if final is None:
            continue  # the sub-task is still running (maybe delegating further)
        if final.failed:
            why = (final.error or {}).get("message", str(final.status))
            outcome = f"{target} could not complete it ({why})."
        else:
            outcome = f"{target} answered:\n{final.output or ''}"
        out.actions.append(
            _continue(call, f"You delegated to {target}: {task}\n{outcome}\nContinue your work.")
        )
    return out


def _start(
    call: CallView,
    target: str,
    task: str,
    agents: frozenset[str],
    max_depth: int,
    out: Delegations,
) -> None:
    if call.depth + 1 > max_depth:
        out.actions.append(GuardHit("delegation_depth", f"depth {call.depth + 1} > {max_depth}"))
        out.actions.append(
            _continue(
                call,
                f"Delegation to {target!r} was refused: the depth limit ({max_depth}) is "
                "reached. Continue without it.",
            )
        )
        return
    if target not in agents:
        out.actions.append(
            _continue(call, f"Delegation failed: no agent named {target!r}. Continue without it.")
        )
        return
    out.markers.append(
        ThreadMessage(
            thread_id=call.thread_id,
            kind=EventKind.DELEGATION,
            role="system",
            agent=call.agent,
            content=f"{call.agent} delegates to {target}: {task[:200]}",
            call_id=call.id,
        )
    )
    out.actions.append(
        Dispatch(
            target,
            role="delegate",
            step_index=call.step_index,
            task=task,
            context_mode="clean",
            sub_thread=True,
            decision_seq=call.decision_seq,
            parent_call_id=call.id,
            depth=call.depth + 1,
        )
    )


def _final(call: CallView, children: dict[str, list[CallView]]) -> CallView | None:
    """The final call of a delegation chain, or None while it is still in progress."""
    if call.in_flight:
        return None
    if call.handed_back is None:
        return call
    # The sub-task delegated or handed off in turn: follow its continuation.
    after = continuation(call, children)
    return _final(after, children) if after is not None else None


def _continue(call: CallView, note: str) -> Dispatch:
    return Dispatch(
        call.agent,
        role=call.role,
        step_index=call.step_index,
        task=f"{call.task}\n\n{note}" if call.task else note,
        context_mode=call.context_mode,
        decision_seq=call.decision_seq,
        parent_call_id=call.id,
        depth=call.depth,
        thread_id=call.thread_id,
    )
