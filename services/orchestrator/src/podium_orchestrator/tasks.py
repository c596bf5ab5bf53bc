"""The orchestrator's Celery task and background loops: the outbox sweep, the deadline
sweep and the reaper. Every message the loops send is staged through the run lifecycle and
published by the outbox."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, func, select

from podium import call_queue
from podium.call_queue import call_item, known_pools, parse_item
from podium.consumers import register_consumer
from podium.lifecycle import calls as call_lifecycle
from podium.lifecycle import runs as run_lifecycle
from podium.messages import AdvanceRun, RunCompleted, SubmitAgentCall
from podium.queues import TaskName
from podium.quotas import load_limits
from podium.runtime import Runtime
from podium.store import (
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    PostMortem,
    Run,
    RunStatus,
    Thread,
    utcnow,
)
from podium_orchestrator.step import advance

log = logging.getLogger(__name__)

WAKE_AGAIN_S = 30.0


def register_tasks(runtime: Runtime) -> None:
    register_consumer(
        runtime,
        name=TaskName.ADVANCE_RUN.value,
        model=AdvanceRun,
        handler=lambda message: advance(runtime, message),
        base_delay_s=0.1,
        max_retries=20,
    )


def deadline_sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Wake runs that passed their deadline while nothing else would step them (a call that
    hangs, a lost message): their next step fails them with ``deadline_exceeded``."""
    woken: dict[str, float] = {}
    while not stop.wait(max(runtime.settings.outbox_sweep_s / 2, 0.5)):
        try:
            now = time.monotonic()
            woken = {r: t for r, t in woken.items() if now - t < WAKE_AGAIN_S}
            # A wake-up already on its way is not piled up.
            due = [r for r in overdue_runs(runtime) if r not in woken]
            run_lifecycle.nudge(runtime, due, "deadline")
            woken.update(dict.fromkeys(due, now))
        except Exception as exc:
            log.warning("deadline sweep failed: %s", exc)


def overdue_runs(runtime: Runtime, limit: int = 200) -> list[str]:
    with runtime.db.read() as session:
        return list(
            session.scalars(
                select(Run.id)
                .where(
                    Run.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
                    Run.deadline_at < utcnow(),
                )
                .limit(limit)
            )
        )


def outbox_sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Re-publish outbox rows whose immediate publish never happened (crash, broker outage)."""
    while not stop.wait(runtime.settings.outbox_sweep_s):
        try:
            sent = runtime.relay.sweep()
            if sent:
                log.info("outbox sweep re-published %d message(s)", sent)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)


# --- the reaper -------------------------------------------------------------------------------

ACTIVE_CALL_STATUSES = (CallStatus.PENDING.value, CallStatus.RUNNING.value)
# Finished runs older than this are not checked for a lost learner notification.
POSTMORTEM_WINDOW = timedelta(hours=1)
# A lost learner notification is re-sent at most this many times.
POSTMORTEM_RESENDS = 3
REAPER_BATCH = 500
# A reservation whose run is not in the store this long after admission was never written.
RESERVATION_GRACE_S = 120.0


class Reaper:
    """Finds the work whose message was lost and sends it again (docs/architecture.md,
    "Guarantees"). Every re-send goes through the run lifecycle and the outbox.

    Every message is published through the outbox, but a published message can still be lost:
    held by a worker that was SIGKILLed (the broker gives it back only after the visibility
    timeout, ``2 * PODIUM_CALL_TIMEOUT_S + 600 s``), dropped by a broker restarted without
    persistence, or consumed by an orchestrator killed mid-step. Each pass looks at the
    store, the source of truth, for:

    - ``queued`` runs older than ``reaper_stall_s``, ``running`` runs with no call in flight
      whose last call ended more than ``reaper_stall_s`` ago, and ``awaiting_input`` runs
      whose question has been answered: an AdvanceRun is sent (the step is idempotent: a run
      that does not need it returns at once);
    - ``pending`` calls older than ``reaper_stall_s``: their ExecuteAgentCall is sent again (a
      duplicate is dropped by the worker's claim);
    - ``running`` calls whose lease lapsed on two passes in a row (their worker died): sent
      again, to be taken over, until started ``call_max_attempts`` times; then failed with
      ``call_lost`` and their run stepped, so the pattern reports the failure cleanly;
    - runs finished within the hour without a post-mortem: their RunCompleted is sent again
      (the learner is idempotent per run), at most ``POSTMORTEM_RESENDS`` times.

    Re-sends of one item back off exponentially from ``reaper_stall_s``, so a long backlog
    is not flooded with duplicates. Runs past their deadline are failed by the deadline sweep.
    Several orchestrators may each run a reaper: duplicates are harmless, only wasted.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        # key -> (times sent, monotonic time before which it is not sent again)
        self._sent: dict[str, tuple[int, float]] = {}
        # running calls whose lease was missing at an earlier pass -> when first seen missing
        self._suspects: dict[str, float] = {}
        self.totals: Counter[str] = Counter()

    # --- rate limiting ------------------------------------------------------------------------
    def _due(self, key: str, now: float, limit: int | None = None) -> bool:
        count, not_before = self._sent.get(key, (0, 0.0))
        return now >= not_before and (limit is None or count < limit)

    def _mark(self, key: str, now: float) -> None:
        count, _ = self._sent.get(key, (0, 0.0))
        backoff = self.settings.reaper_stall_s * 2 ** min(count, 4)
        self._sent[key] = (count + 1, now + backoff)

    def _forget(self, now: float) -> None:
        horizon = self.settings.reaper_stall_s * 64
        self._sent = {k: v for k, v in self._sent.items() if now - v[1] < horizon}

    # --- one pass -----------------------------------------------------------------------------
    def run_once(self) -> Counter[str]:
        now = time.monotonic()
        self._forget(now)
        done: Counter[str] = Counter()
        self._stalled_runs(now, done)
        self._pending_calls(now, done)
        self._lost_calls(now, done)
        self._lost_postmortems(now, done)
        self._unsettled_reservations(done)
        self._stale_slots(done)
        if done:
            log.warning("reaper: %s", ", ".join(f"{k}={v}" for k, v in sorted(done.items())))
            self.totals.update(done)
        return done

    def _stalled_runs(self, now: float, done: Counter[str]) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.reaper_stall_s)
        in_flight = exists().where(
            AgentCall.run_id == Run.id, AgentCall.status.in_(ACTIVE_CALL_STATUSES)
        )
        last_end = (
            select(func.max(AgentCall.finished_at))
            .where(AgentCall.run_id == Run.id)
            .correlate(Run)
            .scalar_subquery()
        )
        with self.runtime.db.session() as session:
            queued = list(
                session.scalars(
                    select(Run.id)
                    .where(Run.status == RunStatus.QUEUED.value, Run.created_at < cutoff)
                    .order_by(Run.created_at)
                    .limit(REAPER_BATCH)
                )
            )
            idle = list(
                session.scalars(
                    select(Run.id)
                    .where(
                        Run.status == RunStatus.RUNNING.value,
                        ~in_flight,
                        func.coalesce(last_end, Run.started_at, Run.created_at) < cutoff,
                    )
                    .limit(REAPER_BATCH)
                )
            )
            waiting = session.execute(
                select(Run.id, Run.awaiting, Thread.event_count)
                .join(Thread, Thread.id == Run.thread_id)
                .where(Run.status == RunStatus.AWAITING_INPUT.value)
                .limit(REAPER_BATCH)
            ).all()
        # A run that asked the user a question, whose thread has grown since: answered, and
        # the trigger of that answer may be the message that was lost.
        answered = [
            run_id
            for run_id, awaiting, events in waiting
            if events > int((awaiting or {}).get("asked_seq", events))
        ]
        for run_ids, reason, label in (
            (queued, "run.created", "queued_runs_retriggered"),
            (idle, "call.finished", "idle_runs_retriggered"),
            (answered, "user.answered", "answered_runs_retriggered"),
        ):
            due = [r for r in run_ids if self._due(f"run:{r}", now)]
            run_lifecycle.nudge(self.runtime, due, reason)
            for run_id in due:
                self._mark(f"run:{run_id}", now)
            done[label] += len(due)

    def _pending_calls(self, now: float, done: Counter[str]) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.reaper_stall_s)
        with self.runtime.db.session() as session:
            rows = session.execute(
                select(AgentCall.id, AgentCall.run_id, AgentCall.pool, AgentCall.tenant_id)
                .join(Run, Run.id == AgentCall.run_id)
                .where(
                    AgentCall.status == CallStatus.PENDING.value,
                    AgentCall.created_at < cutoff,
                    Run.status.not_in([s.value for s in TERMINAL_RUN_STATUSES]),
                )
                .order_by(AgentCall.created_at)
                .limit(REAPER_BATCH)
            ).all()
        by_pool: dict[str, list[tuple[str, str, str]]] = {}
        for call_id, run_id, pool, tenant_id in rows:
            by_pool.setdefault(pool, []).append((call_id, run_id, tenant_id))
        wall = time.time()
        caps: dict[str, int] = {}
        resubmit: list[SubmitAgentCall] = []
        resend: list[tuple[str, str, str]] = []
        for pool, calls in by_pool.items():
            states = self.runtime.fair.state(pool, [call_item(c, r) for c, r, _ in calls])
            for call_id, run_id, tenant_id in calls:
                item = call_item(call_id, run_id)
                state = states.get(item, "unknown")
                if state == "queued":
                    continue  # waiting for its tenant's turn: slow, not lost
                if state == "inflight":
                    picked = self.runtime.fair.inflight_since(pool, item)
                    if picked is not None and wall - picked < self.settings.reaper_stall_s:
                        continue  # released just now after a long wait
                key = f"call:{call_id}"
                if not self._due(key, now):
                    continue
                self._mark(key, now)
                if state == "unknown":
                    # Never reached the dispatcher (killed after the commit, Redis lost it).
                    if tenant_id not in caps:
                        caps[tenant_id] = self._call_cap(tenant_id)
                    resubmit.append(
                        SubmitAgentCall(
                            call_id=call_id,
                            run_id=run_id,
                            tenant_id=tenant_id,
                            pool=pool,
                            tenant_cap=caps[tenant_id],
                        )
                    )
                else:
                    # Released to the pool, but its message was lost.
                    resend.append((call_id, run_id, pool))
        call_lifecycle.resubmit(self.runtime, resubmit)
        call_lifecycle.resend(self.runtime, resend)
        done["pending_calls_resubmitted"] += len(resubmit)
        done["pending_calls_resent"] += len(resend)

    def _stale_slots(self, done: Counter[str]) -> None:
        """Fair-dispatch slots held by calls that ended without giving them back (their
        worker died after the commit): freed, so the tenant's cap and the window recover."""
        with self.runtime.db.session() as session:
            pools = known_pools(session, self.settings)
        wall = time.time()
        for pool in pools:
            held = self.runtime.fair.inflight_items(pool)
            old = [i for i, at in held.items() if wall - at > self.settings.reaper_stall_s]
            if not old:
                continue
            calls = {parse_item(i)[0]: i for i in old}
            over = call_lifecycle.finished_states(self.runtime, list(calls))
            for call_id, item in calls.items():
                if over[call_id]:
                    call_queue.complete(
                        self.runtime.fair, self.runtime.celery, pool, call_id, parse_item(item)[1]
                    )
                    done["fair_slots_freed"] += 1

    def _call_cap(self, tenant_id: str) -> int:
        with self.runtime.db.session() as session:
            return load_limits(session, self.settings, tenant_id).concurrent_calls

    def _unsettled_reservations(self, done: Counter[str]) -> None:
        """Reservations on tenant budgets whose run ended (the settle after its commit was
        lost) are settled; those of runs that were never written are released."""
        held = self.runtime.quotas.reservations()
        if not held:
            return
        found: dict[str, tuple[str, dict[str, Any] | None, float]] = {}
        with self.runtime.db.session() as session:
            ids = [r.run_id for r in held]
            for start in range(0, len(ids), REAPER_BATCH):
                for run_id, status, usage, cost in session.execute(
                    select(Run.id, Run.status, Run.usage, Run.cost_usd).where(
                        Run.id.in_(ids[start : start + REAPER_BATCH])
                    )
                ):
                    found[run_id] = (status, usage, cost)
        wall = time.time()
        for r in held:
            row = found.get(r.run_id)
            if row is None:
                if wall - r.since > RESERVATION_GRACE_S:
                    self.runtime.quotas.settle(r.tenant_id, r.run_id, 0, 0.0)
                    done["reservations_released"] += 1
            elif row[0] in TERMINAL_RUN_STATUSES:
                usage = row[1] or {}
                tokens = sum(
                    int(usage.get(k, 0))
                    for k in ("input_tokens", "output_tokens", "orchestrator_tokens")
                )
                if self.runtime.quotas.settle(r.tenant_id, r.run_id, tokens, float(row[2])):
                    done["reservations_settled"] += 1

    def _lost_calls(self, now: float, done: Counter[str]) -> None:
        grace = timedelta(seconds=self.settings.call_lease_s)
        with self.runtime.db.session() as session:
            rows = session.execute(
                select(AgentCall.id, AgentCall.run_id, AgentCall.pool, AgentCall.attempts)
                .where(
                    AgentCall.status == CallStatus.RUNNING.value,
                    AgentCall.started_at < utcnow() - grace,
                )
                .limit(REAPER_BATCH)
            ).all()
        if not rows:
            self._suspects.clear()
            return
        alive = self.runtime.leases.alive([r[0] for r in rows])
        # Two strikes, a heartbeat apart: a lease briefly missing (Redis restarted, renewal
        # under way) is not a lost worker.
        strike = self.settings.call_lease_s / 3
        suspects: dict[str, float] = {}
        resend: list[tuple[str, str, str]] = []
        for call_id, run_id, pool, attempts in rows:
            if call_id in alive:
                continue
            first_seen = self._suspects.get(call_id, now)
            suspects[call_id] = first_seen
            if now - first_seen < strike:
                continue
            if attempts >= self.settings.call_max_attempts:
                if call_lifecycle.give_up_lost(self.runtime, call_id, run_id, attempts):
                    done["lost_calls_failed"] += 1
                continue
            key = f"call:{call_id}:{attempts}"
            if self._due(key, now):
                resend.append((call_id, run_id, pool))
                self._mark(key, now)
        call_lifecycle.resend(self.runtime, resend)
        done["lost_calls_resent"] += len(resend)
        self._suspects = suspects

    def _lost_postmortems(self, now: float, done: Counter[str]) -> None:
        wall = utcnow()
        with self.runtime.db.session() as session:
            rows = session.execute(
                select(Run.id, Run.tenant_id, Run.status)
                .where(
                    Run.status.in_([s.value for s in TERMINAL_RUN_STATUSES]),
                    Run.finished_at > wall - POSTMORTEM_WINDOW,
                    Run.finished_at < wall - timedelta(seconds=self.settings.reaper_stall_s),
                    ~exists().where(PostMortem.run_id == Run.id),
                )
                .limit(REAPER_BATCH)
            ).all()
        due = [
            RunCompleted(run_id=run_id, tenant_id=tenant_id, status=status)
            for run_id, tenant_id, status in rows
            if self._due(f"postmortem:{run_id}", now, limit=POSTMORTEM_RESENDS)
        ]
        run_lifecycle.notify_learner(self.runtime, due)
        for message in due:
            self._mark(f"postmortem:{message.run_id}", now)
        done["run_completed_resent"] += len(due)


def reaper_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Run the reaper every ``reaper_interval_s`` (if ``reaper_enabled``)."""
    if not runtime.settings.reaper_enabled:
        log.warning("the reaper is disabled (PODIUM_REAPER_ENABLED=false): lost work stays lost")
        return
    reaper = Reaper(runtime)
    while not stop.wait(runtime.settings.reaper_interval_s):
        try:
            reaper.run_once()
        except Exception as exc:  # store or broker down: the next pass tries again
            log.warning("reaper pass failed: %s", exc)
