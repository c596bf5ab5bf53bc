"""``advance(run_id)``: the orchestrator's step function (DESIGN §2).

A step loads the run, looks at what changed, asks the Orchestrator agent or the active
pattern for the next actions, persists them with the messages they cause (outbox, same
transaction), and returns. It never waits for an agent call. It is state-based, so a
duplicated trigger does no harm, and it is safe when two calls of one run finish at once: the
run row is locked on PostgreSQL and version-checked everywhere, and a step that loses the
race is redone on fresh state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from podium.messages import AdvanceRun, RunCompleted
from podium.metrics import BUDGET_HOLDS, RUN_DURATION, RUN_QUEUE_WAIT, RUNS_FINISHED, RUNS_STARTED
from podium.runtime import Runtime, Tx
from podium.store import (
    TERMINAL_CALL_STATUSES,
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    EventKind,
    OrchestrationContext,
    OrchestrationDecision,
    Run,
    RunStatus,
    Thread,
    ThreadEvent,
    utcnow,
)
from podium.store.threads import append_event
from podium_orchestrator.control import ControlHandler
from podium_orchestrator.decision import decide_first, decide_later
from podium_orchestrator.dispatch import Dispatcher, DispatchError
from podium_orchestrator.guards import caps_exceeded, deadline_passed, record_guard
from podium_orchestrator.patterns import (
    Complete,
    Consult,
    Dispatch,
    Fail,
    RunView,
    Wait,
    registry,
)

log = logging.getLogger(__name__)

MAX_STEP_RETRIES = 8
MAX_CONSULTS_PER_STEP = 4
MAX_QUESTIONS = 3


@dataclass
class StepResult:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finished: str | None = None
    pattern: str | None = None
    duration_s: float | None = None
    started_pattern: str | None = None
    queue_wait_s: float | None = None

    def emit(self, type_: str, **data: Any) -> None:
        self.events.append((type_, data))


class RunBusy(Exception):
    """Another step holds the run's lock; this trigger is retried shortly."""


def advance(runtime: Runtime, message: AdvanceRun) -> StepResult:
    for _ in range(MAX_STEP_RETRIES):
        try:
            with runtime.transaction() as tx:
                result = Step(runtime, tx).run(message.run_id)
        except StaleDataError:
            log.info("run %s changed under this step; redoing it", message.run_id)
            continue
        except OperationalError as exc:
            if (
                "could not obtain lock" in str(exc.orig)
                or exc.orig.__class__.__name__ == "LockNotAvailable"
            ):
                raise RunBusy(message.run_id) from exc
            raise
        _after_commit(runtime, message.run_id, result)
        return result
    raise RuntimeError(f"run {message.run_id}: step lost {MAX_STEP_RETRIES} races in a row")


def _after_commit(runtime: Runtime, run_id: str, result: StepResult) -> None:
    for type_, data in result.events:
        try:
            runtime.events.publish(run_id, type_, {"run_id": run_id, **data})
        except Exception as exc:  # the store is the truth; the stream is a view
            log.warning("event publish failed for run %s: %s", run_id, exc)
        if type_ == "run.budget_hold":
            BUDGET_HOLDS.labels(str(data.get("guard"))).inc()
    # Counted after the commit: a step redone after a lost race must not count twice.
    if result.queue_wait_s is not None:
        RUNS_STARTED.labels(result.started_pattern or "none").inc()
        RUN_QUEUE_WAIT.observe(result.queue_wait_s)
    if result.finished:
        pattern = result.pattern or "none"
        RUNS_FINISHED.labels(result.finished, pattern).inc()
        if result.duration_s is not None:
            RUN_DURATION.labels(pattern).observe(result.duration_s)


class Step:
    def __init__(self, runtime: Runtime, tx: Tx) -> None:
        self.runtime = runtime
        self.tx = tx
        self.session: Session = tx.session
        self.result = StepResult()

    # --- entry ----------------------------------------------------------------------------
    def run(self, run_id: str) -> StepResult:
        query = select(Run).where(Run.id == run_id)
        if self.runtime.db.is_postgres:
            # NOWAIT: a step already holds the run; retry later instead of parking a thread.
            query = query.with_for_update(nowait=True)
        run = self.session.scalars(query).one_or_none()
        if run is None:
            log.warning("advance: run %s does not exist; ignoring", run_id)
            return self.result
        if run.status in TERMINAL_RUN_STATUSES:
            return self.result
        context = self.session.scalars(
            select(OrchestrationContext).where(OrchestrationContext.run_id == run.id)
        ).one()
        if run.cancel_requested:
            self._cancel_calls(run)
            self._finish(run, context, RunStatus.CANCELLED)
            return self.result
        if deadline_passed(run):
            record_guard(
                run, "deadline", f"deadline {run.deadline_at:%H:%M:%S} passed", self.result.emit
            )
            self._cancel_calls(run)
            self._finish(
                run,
                context,
                RunStatus.FAILED,
                error={
                    "code": "deadline_exceeded",
                    "message": "the run passed its wall-clock deadline",
                },
            )
            return self.result
        if run.status == RunStatus.BUDGET_HOLD:
            return self.result  # waits for POST /v1/runs/{id}/resume
        if run.status == RunStatus.QUEUED:
            if not self._claim_thread(run):
                return self.result  # another run owns the thread; it hands over when it ends
            run.status = RunStatus.RUNNING
            run.started_at = utcnow()
            self.result.queue_wait_s = max(0.0, (run.started_at - run.created_at).total_seconds())
            self.result.emit("run.started", thread_id=run.thread_id)
            decision = decide_first(self.runtime, self.session, run, context)
            self._emit_decision(decision)
            applied = self._apply_plan(run, context, decision)
            self.result.started_pattern = run.pattern or "none"
            if not applied:
                return self.result
        elif run.status == RunStatus.AWAITING_INPUT and not self._answered(run, context):
            return self.result
        self._progress(run, context)
        return self.result

    # --- plans, questions, finishing early ------------------------------------------------
    def _apply_plan(
        self, run: Run, context: OrchestrationContext, decision: OrchestrationDecision
    ) -> bool:
        """Apply a plan decision; False if the run stops here (question asked, finished)."""
        dims = decision.dimensions
        if dims.get("question"):
            asked = len((run.awaiting or {}).get("history", []))
            if asked < MAX_QUESTIONS:
                self._ask(run, context, decision, str(dims["question"]))
                return False
            record_guard(run, "question_cap", f"{asked} questions already asked", self.result.emit)
        if dims.get("finish") and dims.get("kind") == "plan":
            answer = str(dims.get("answer") or "")
            if answer:
                self._append_answer(run, "orchestrator", answer)
                run.output = answer
                decision.actual_outcome = {"status": "completed", "agent_calls": 0}
                self._finish(run, context, RunStatus.COMPLETED)
                return False
        run.pattern = str(dims.get("pattern") or "direct")
        return True

    def _ask(
        self,
        run: Run,
        context: OrchestrationContext,
        decision: OrchestrationDecision,
        question: str,
    ) -> None:
        event = self._append_answer(run, "orchestrator", question)
        awaiting = dict(run.awaiting or {})
        awaiting.update(
            {"question": question, "decision_seq": decision.seq, "asked_seq": event.seq}
        )
        awaiting["history"] = [*awaiting.get("history", []), question]
        run.awaiting = awaiting
        run.status = RunStatus.AWAITING_INPUT
        run.step = "awaiting_input"
        context.cursor_seq = event.seq
        self.result.emit("run.awaiting_input", question=question)

    def _answered(self, run: Run, context: OrchestrationContext) -> bool:
        asked_seq = int((run.awaiting or {}).get("asked_seq", 0))
        answer = self.session.scalars(
            select(ThreadEvent)
            .where(
                ThreadEvent.thread_id == run.thread_id,
                ThreadEvent.seq > asked_seq,
                ThreadEvent.kind == EventKind.USER_MESSAGE.value,
            )
            .order_by(ThreadEvent.seq)
            .limit(1)
        ).first()
        if answer is None:
            return False
        awaiting = dict(run.awaiting or {})
        awaiting["answer"] = answer.content
        run.awaiting = awaiting
        run.status = RunStatus.RUNNING
        run.step = None
        decision = decide_later(
            self.runtime,
            self.session,
            run,
            context,
            kind="plan",
            question=(
                f"You asked the user: {awaiting.get('question')}\nThe user answered (above). "
                "Decide how to execute the request now: choose_pattern, and route_to_agent or "
                "compose_team as needed."
            ),
        )
        self._emit_decision(decision)
        return self._apply_plan(run, context, decision)

    # --- the pattern loop -----------------------------------------------------------------
    def _progress(self, run: Run, context: OrchestrationContext) -> None:
        dispatcher = Dispatcher(self.runtime, self.tx, run, self.result.emit)
        calls = self._calls(run)
        control = ControlHandler(
            self.runtime, self.session, run, context, dispatcher, self.result.emit
        )
        if control.handle(calls):
            return  # a handoff or delegation took this step
        for _ in range(MAX_CONSULTS_PER_STEP):
            view = self._view(run, context, calls)  # a consult adds decisions, not calls
            _, pattern = registry(self.runtime.settings.patterns_file)[run.pattern or "direct"]
            actions = pattern.next_actions(view)
            consult = next((a for a in actions if isinstance(a, Consult)), None)
            if consult is None:
                break
            decision = decide_later(
                self.runtime,
                self.session,
                run,
                context,
                kind="checkpoint",
                question=consult.question,
                checkpoint=consult.checkpoint,
            )
            self._emit_decision(decision)
        else:
            raise RuntimeError(f"run {run.id}: pattern kept consulting")
        dispatches = [a for a in actions if isinstance(a, Dispatch)]
        if dispatches:
            hit = caps_exceeded(run, _spent(calls, context), len(calls) + len(dispatches))
            if hit is not None:
                record_guard(run, hit[0], hit[1], self.result.emit)
                run.status = RunStatus.BUDGET_HOLD
                run.step = "budget_hold"
                self.result.emit("run.budget_hold", guard=hit[0], detail=hit[1], limits=run.limits)
                return
        plan = self._plan_decision(context)
        if dispatches:
            dispatcher.split_budget(len(dispatches), calls, context.tokens_used)
        for action in actions:
            if isinstance(action, Dispatch):
                try:
                    dispatcher.dispatch(action, view, plan.seq)
                except DispatchError as exc:
                    plan.actual_outcome = {"status": "failed", "error": exc.code}
                    self._finish(
                        run,
                        context,
                        RunStatus.FAILED,
                        error={"code": exc.code, "message": exc.message},
                    )
                    return
            elif isinstance(action, Complete):
                if action.append_as:
                    self._append_answer(run, action.append_as, action.output)
                run.output = action.output
                plan.actual_outcome = {
                    "status": "completed",
                    "agent_calls": len(calls),
                    "note": action.note,
                }
                self._finish(run, context, RunStatus.COMPLETED, note=action.note)
                return
            elif isinstance(action, Fail):
                plan.actual_outcome = {"status": "failed", "error": action.code}
                self._finish(
                    run,
                    context,
                    RunStatus.FAILED,
                    error={"code": action.code, "message": action.message},
                )
                return
            elif isinstance(action, Wait):
                pass

    def _calls(self, run: Run) -> list[AgentCall]:
        return list(
            self.session.scalars(
                select(AgentCall)
                .where(AgentCall.run_id == run.id)
                .order_by(AgentCall.created_at, AgentCall.id)
            )
        )

    def _plan_decision(self, context: OrchestrationContext) -> OrchestrationDecision:
        decisions = self._decisions(context)
        plans = [d for d in decisions if d.dimensions.get("kind", "plan") in ("plan", "handoff")]
        return plans[-1] if plans else decisions[-1]

    def _decisions(self, context: OrchestrationContext) -> list[OrchestrationDecision]:
        return list(
            self.session.scalars(
                select(OrchestrationDecision)
                .where(OrchestrationDecision.context_id == context.id)
                .order_by(OrchestrationDecision.seq)
            )
        )

    def _view(self, run: Run, context: OrchestrationContext, calls: list[AgentCall]) -> RunView:
        decisions = self._decisions(context)
        plans = [d for d in decisions if d.dimensions.get("kind", "plan") == "plan"]
        plan = plans[-1] if plans else decisions[-1]
        dims = plan.dimensions
        request = run.input
        if run.awaiting and run.awaiting.get("answer"):
            request += f"\n\n(The user clarified: {run.awaiting['answer']})"
        spec = registry(self.runtime.settings.patterns_file)[run.pattern or "direct"][0]
        return RunView(
            run_id=run.id,
            input=request,
            agent=str(dims.get("agent")),
            parameters=dict(dims.get("parameters") or {}),
            team=list(dims.get("team") or []),
            merge=dims.get("merge"),
            options=spec.options,
            calls=effective_calls(calls),
            checkpoints={
                str(d.dimensions["checkpoint"]): d.dimensions
                for d in decisions
                if d.dimensions.get("kind") == "checkpoint" and d.dimensions.get("checkpoint")
            },
        )

    # --- thread ownership, answers, events ------------------------------------------------
    def _claim_thread(self, run: Run) -> bool:
        """Runs of one thread execute one at a time, oldest first."""
        oldest = self.session.scalars(
            select(Run.id)
            .where(
                Run.thread_id == run.thread_id,
                Run.status.not_in([s.value for s in TERMINAL_RUN_STATUSES]),
            )
            .order_by(Run.created_at, Run.id)
            .limit(1)
        ).first()
        if oldest != run.id:
            return False
        claimed = self.session.execute(
            update(Thread)
            .where(
                Thread.id == run.thread_id,
                (Thread.active_run_id.is_(None)) | (Thread.active_run_id == run.id),
            )
            .values(active_run_id=run.id)
            .execution_options(synchronize_session=False)
        )
        return bool(claimed.rowcount)  # type: ignore[attr-defined]

    def _append_answer(self, run: Run, agent: str, content: str) -> ThreadEvent:
        return append_event(
            self.session,
            tenant_id=run.tenant_id,
            thread_id=run.thread_id,
            kind=EventKind.AGENT_MESSAGE,
            role="assistant",
            agent=agent,
            content=content,
            run_id=run.id,
        )

    def _emit_decision(self, decision: OrchestrationDecision) -> None:
        self.result.emit(
            "decision",
            seq=decision.seq,
            dimensions=decision.dimensions,
            rationale=decision.rationale,
            source=decision.source,
            fallback=decision.fallback_reason,
        )

    def _cancel_calls(self, run: Run) -> None:
        self.session.execute(
            update(AgentCall)
            .where(
                AgentCall.run_id == run.id,
                AgentCall.status.in_([CallStatus.PENDING.value, CallStatus.RUNNING.value]),
            )
            .values(status=CallStatus.CANCELLED, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    def _finish(
        self,
        run: Run,
        context: OrchestrationContext,
        status: RunStatus,
        *,
        error: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> None:
        totals = self.session.execute(
            select(
                func.coalesce(func.sum(AgentCall.input_tokens), 0),
                func.coalesce(func.sum(AgentCall.output_tokens), 0),
                func.coalesce(func.sum(AgentCall.cost_usd), 0.0),
            ).where(AgentCall.run_id == run.id)
        ).one()
        usage = {
            "tokens": float(totals[0] + totals[1]) + context.tokens_used,
            "cost_usd": float(totals[2]),
        }
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        run.step = None
        run.cost_usd = usage["cost_usd"]
        run.usage = {
            "input_tokens": int(totals[0]),
            "output_tokens": int(totals[1]),
            "orchestrator_tokens": context.tokens_used,
            "cost_usd": round(usage["cost_usd"], 6),
        }
        # The run's reservation on the tenant's budgets becomes its real usage, once the
        # end is committed (the reaper settles it if this process dies first).
        self.tx.after_commit.append(
            partial(
                self.runtime.quotas.settle,
                run.tenant_id,
                run.id,
                int(usage["tokens"]),
                usage["cost_usd"],
            )
        )
        context.outcome = {
            "status": status.value,
            "error": error,
            "note": note,
            "guards": run.guards,
        }
        self.session.execute(
            update(Thread)
            .where(Thread.id == run.thread_id, Thread.active_run_id == run.id)
            .values(active_run_id=None)
            .execution_options(synchronize_session=False)
        )
        next_run = self.session.scalars(
            select(Run.id)
            .where(
                Run.thread_id == run.thread_id,
                Run.status == RunStatus.QUEUED.value,
                Run.id != run.id,
            )
            .order_by(Run.created_at, Run.id)
            .limit(1)
        ).first()
        if next_run is not None:
            self.tx.send(AdvanceRun(run_id=next_run, reason="thread.released"))
        self.tx.send(RunCompleted(run_id=run.id, tenant_id=run.tenant_id, status=status.value))
        self.result.finished = status.value
        self.result.pattern = run.pattern
        self.result.duration_s = (run.finished_at - run.created_at).total_seconds()
        self.result.emit(
            f"run.{status.value}",
            status=status.value,
            output=run.output,
            error=error,
            usage=run.usage,
            note=note,
        )


def _spent(calls: list[AgentCall], context: OrchestrationContext) -> dict[str, float]:
    """What the run has used so far: its calls and the Orchestrator's own decisions."""
    return {
        "tokens": float(sum(c.input_tokens + c.output_tokens for c in calls)) + context.tokens_used,
        "cost_usd": float(sum(c.cost_usd for c in calls)),
    }


def effective_calls(calls: list[AgentCall]) -> list[AgentCall]:
    """The calls a pattern reasons about: a call that handed control back (handoff,
    delegation) is replaced by its continuation, and delegated sub-calls are internal."""
    return [
        c
        for c in calls
        if c.role != "delegate"
        and not (c.status == CallStatus.SUCCEEDED and (c.result or {}).get("control"))
    ]


__all__ = ["TERMINAL_CALL_STATUSES", "Step", "StepResult", "advance", "effective_calls"]
