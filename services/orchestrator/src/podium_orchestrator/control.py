"""Control hand-backs from agents: ``handoff`` (redirect the request to another agent, who sees
the full thread) and ``delegate`` (a sub-task in a clean sub-thread, whose answer the
delegating agent then continues with). Guards: handoff ping-pong and count, delegation depth.

A call that handed control back is superseded by the call that continues its work (same role
and step), so patterns never see the hand-back itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from podium.runtime import Runtime
from podium.store import (
    TERMINAL_CALL_STATUSES,
    AgentCall,
    CallStatus,
    EventKind,
    OrchestrationContext,
    Run,
)
from podium.store.threads import append_event
from podium_orchestrator.decision import Choice, record
from podium_orchestrator.dispatch import Dispatcher, DispatchError
from podium_orchestrator.guards import record_guard
from podium_orchestrator.patterns import Dispatch, registry

ANSWER_YOURSELF = "Answer the request yourself now; handing it off or delegating is not possible."


def control_of(call: AgentCall) -> dict[str, Any] | None:
    result = call.result or {}
    if call.status == CallStatus.SUCCEEDED and result.get("control") in ("handoff", "delegate"):
        return result
    return None


class ControlHandler:
    def __init__(
        self,
        runtime: Runtime,
        session: Session,
        run: Run,
        context: OrchestrationContext,
        dispatcher: Dispatcher,
        emit: Callable[..., None],
    ) -> None:
        self.runtime = runtime
        self.session = session
        self.run = run
        self.context = context
        self.dispatcher = dispatcher
        self.emit = emit

    def handle(self, calls: list[AgentCall]) -> bool:
        """Act on hand-backs. True while any hand-back is unresolved (the pattern waits)."""
        children: dict[str, list[AgentCall]] = {}
        for c in calls:
            if c.parent_call_id:
                children.setdefault(c.parent_call_id, []).append(c)
        self.children = children
        unresolved = False
        for call in calls:
            control = control_of(call)
            if control is None or self._continuation(call) is not None:
                continue
            unresolved = True
            if control["control"] == "handoff":
                self._handoff(call, control, calls)
            else:
                self._delegate(call, control)
        return unresolved

    def _continuation(self, call: AgentCall) -> AgentCall | None:
        """The call that carries on after ``call`` handed back (same role, same depth)."""
        return next(
            (
                k
                for k in self.children.get(call.id, [])
                if k.role == call.role and k.depth == call.depth
            ),
            None,
        )

    # --- handoff --------------------------------------------------------------------------
    def _handoff(self, call: AgentCall, control: dict[str, Any], calls: list[AgentCall]) -> None:
        target = str(control.get("agent") or "")
        rationale = str(control.get("rationale") or "no reason given")
        handoffs = [c for c in calls if (control_of(c) or {}).get("control") == "handoff"]
        chain = [(c.agent, str((c.result or {}).get("agent"))) for c in handoffs]
        position = next(i for i, c in enumerate(handoffs) if c.id == call.id)
        earlier = chain[:position]
        spec, _ = registry(self.runtime.settings.patterns_file).get("handoff", (None, None))
        max_handoffs = int((spec.options if spec else {}).get("max_handoffs", 4))
        known = True
        try:
            self.dispatcher.agent(target)
        except DispatchError:
            known = False
        if not known or target == call.agent:
            reason = f"no agent named {target!r}" if not known else "it is yourself"
            self._continue(
                call, call.agent, f"Your handoff to {target!r} failed: {reason}. {ANSWER_YOURSELF}"
            )
            return
        if (call.agent, target) in earlier or position + 1 > max_handoffs:
            guard = "handoff_pingpong" if (call.agent, target) in earlier else "handoff_limit"
            path = " → ".join([chain[0][0], *[to for _, to in chain[: position + 1]]])
            record_guard(self.run, guard, path, self.emit)
            self._continue(
                call, target, f"Handoffs were stopped to avoid a loop. {ANSWER_YOURSELF}"
            )
            return
        if self.run.pattern == "direct":
            self.run.pattern = "handoff"
        choice = Choice(
            kind="handoff",
            source="agent handoff",
            pattern=self.run.pattern,
            agent=target,
            rationale=f"'{call.agent}' handed the request to '{target}': {rationale}",
            expected_outcome=f"'{target}' answers with the full thread as context",
        )
        seq = self.run.input_event_seq
        decision = record(
            self.session, self.run, self.context, choice, from_seq=seq, to_seq=seq, phase="handoff"
        )
        self.emit(
            "decision",
            seq=decision.seq,
            dimensions=decision.dimensions,
            rationale=decision.rationale,
            source=decision.source,
            fallback=None,
        )
        self._marker(call, f"{call.agent} hands the request to {target}: {rationale}")
        self.dispatcher.dispatch(
            Dispatch(
                target,
                role=call.role,
                step_index=call.step_index,
                task=call.task,
                context_mode=call.context_mode,
                control_tools=tuple(
                    t for t in call.params.get("control_tools", []) if t == "handoff"
                ),
            ),
            None,
            decision.seq,
            parent=call,
            depth=call.depth,
        )

    # --- delegation -----------------------------------------------------------------------
    def _delegate(self, call: AgentCall, control: dict[str, Any]) -> None:
        target = str(control.get("agent") or "")
        task = str(control.get("task") or "")
        child = next(
            (
                k
                for k in self.children.get(call.id, [])
                if k.role == "delegate" and k.depth == call.depth + 1
            ),
            None,
        )
        if child is None:
            limit = self.runtime.settings.max_delegation_depth
            if call.depth + 1 > limit:
                record_guard(
                    self.run, "delegation_depth", f"depth {call.depth + 1} > {limit}", self.emit
                )
                self._continue(
                    call,
                    call.agent,
                    f"Delegation to {target!r} was refused: the depth limit "
                    f"({limit}) is reached. Continue without it.",
                )
                return
            try:
                self.dispatcher.agent(target)
            except DispatchError:
                self._continue(
                    call,
                    call.agent,
                    f"Delegation failed: no agent named {target!r}. Continue without it.",
                )
                return
            self._marker(call, f"{call.agent} delegates to {target}: {task[:200]}")
            self.dispatcher.dispatch(
                Dispatch(
                    target,
                    role="delegate",
                    step_index=call.step_index,
                    task=task,
                    context_mode="clean",
                    sub_thread=True,
                ),
                None,
                call.decision_seq,
                parent=call,
                depth=call.depth + 1,
            )
            return
        final = self._resolve(child)
        if final is None:
            return  # the sub-task is still running (maybe delegating further)
        if final.status == CallStatus.SUCCEEDED:
            outcome = f"{target} answered:\n{final.output or ''}"
        else:
            why = (final.error or {}).get("message", final.status)
            outcome = f"{target} could not complete it ({why})."
        self._continue(
            call, call.agent, f"You delegated to {target}: {task}\n{outcome}\nContinue your work."
        )

    def _resolve(self, call: AgentCall) -> AgentCall | None:
        """The final call of a delegation chain, or None while it is still in progress."""
        if call.status not in TERMINAL_CALL_STATUSES:
            return None
        if control_of(call) is None:
            return call
        # The sub-task delegated in turn: follow its continuation.
        continuation = self._continuation(call)
        return self._resolve(continuation) if continuation is not None else None

    # --- helpers --------------------------------------------------------------------------
    def _continue(self, call: AgentCall, agent: str, note: str) -> None:
        task = f"{call.task}\n\n{note}" if call.task else note
        self.dispatcher.dispatch(
            Dispatch(
                agent,
                role=call.role,
                step_index=call.step_index,
                task=task,
                context_mode=call.context_mode,
            ),
            None,
            call.decision_seq,
            parent=call,
            depth=call.depth,
        )

    def _marker(self, call: AgentCall, text: str) -> None:
        append_event(
            self.session,
            tenant_id=self.run.tenant_id,
            thread_id=call.thread_id,
            kind=EventKind.DELEGATION,
            role="system",
            agent=call.agent,
            content=text,
            run_id=self.run.id,
            call_id=call.id,
        )
