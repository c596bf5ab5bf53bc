"""Executing one AgentCall (docs/architecture.md, "Agent calls"): claim it, run its LLM ↔
tools loop with no transaction held, and commit its outcome exactly once, all state changes
going through the run lifecycle.

Idempotency: a call already over is skipped without spending on the provider; the commit is
conditional (``running ->`` its end) and the agent's message is deduplicated by the call's id,
so a redelivered task never appends a second answer.

Liveness: while a call runs this worker holds its lease (leases.py). A redelivered message of
a call whose lease is alive is left to the worker running it; a call whose lease lapsed (its
worker died) is taken over here, or re-sent by the orchestrator's reaper, until it has been
started ``call_max_attempts`` times.

Errors: a provider error that retrying cannot fix (authentication, a missing key, an unknown
model, a bad request) fails the call at once, with the provider's message in the call, the
run and its events; transient ones were already retried by the provider chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select

from podium import call_queue
from podium.consumers import is_outage
from podium.lifecycle import CallView
from podium.lifecycle import calls as call_lifecycle
from podium.lifecycle.calls import CallResult, ClaimedCall, Committed
from podium.lifecycle.finish import EndedByCall
from podium.llm import ProviderError
from podium.llm.resilience import AllProvidersFailed, RetryPolicy
from podium.messages import ExecuteAgentCall
from podium.metrics import (
    AGENT_CALL_DURATION,
    AGENT_CALLS,
    AGENT_COST,
    AGENT_MODEL_CALLS,
    AGENT_TOKENS,
    AGENT_TTFT,
    RUN_DURATION,
    RUNS_FINISHED,
    TENANT_COST,
    TENANT_TOKENS,
    agent_label,
    model_label,
    tenant_label,
)
from podium.pricing import PriceTable
from podium.runtime import Runtime
from podium.store import TERMINAL_CALL_STATUSES, AgentCall, CallStatus
from podium_agent_worker.agent_loop import AgentLoop, CallCancelled, Outcome
from podium_agent_worker.call_context import CallContext, load_context
from podium_agent_worker.leases import LeaseHolder
from podium_agent_worker.stop_watch import StopWatch
from podium_agent_worker.tools import default_registry

log = logging.getLogger(__name__)

# How long a claimed call waits for the store to come back before giving up.
COMMIT_PATIENCE_S = 120.0

T = TypeVar("T")


class Executor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.leases = LeaseHolder(runtime)
        self.stop_watch = StopWatch(runtime)
        self.loop = AgentLoop(
            runtime,
            default_registry(),
            PriceTable.load(self.settings.prices_file),
            RetryPolicy.from_settings(self.settings),
            self._stopped,
        )
        # A call claimed this recently without a lease may be a worker between its claim and
        # its lease: not taken over.
        self.takeover_grace_s = self.settings.call_lease_s / 3

    def execute(self, message: ExecuteAgentCall) -> str | None:
        loaded = self._claim(message)
        if loaded is None:
            self._free_slot_if_finished(message)
            return None
        claimed, context = loaded
        self.stop_watch.watch(message.call_id)
        try:
            status = self._execute(claimed, context)
        finally:
            self.stop_watch.forget(message.call_id)
            self.leases.drop(message.call_id)
        # Not on an exception: a call requeued at shutdown or retried keeps its slot.
        call_queue.complete(
            self.runtime.fair,
            self.runtime.celery,
            claimed.call.pool,
            message.call_id,
            message.run_id,
        )
        return status

    # --- claim ------------------------------------------------------------------------------
    def _claim(self, message: ExecuteAgentCall) -> tuple[ClaimedCall, CallContext] | None:
        """Claim the call (and hold its lease) with its context, or say why not in the log."""
        call_id = message.call_id
        claimed = call_lifecycle.claim(self.runtime, call_id, load_context)
        if claimed is not None:
            self.leases.hold(call_id)
            return claimed
        state = call_lifecycle.state(self.runtime, call_id, grace_s=self.takeover_grace_s)
        if state is None:
            log.warning("call %s does not exist; dropping the message", call_id)
            return None
        if state.status in TERMINAL_CALL_STATUSES:
            return None  # already done: a redelivery spends nothing
        if not state.run_open:
            call_lifecycle.cancel_open(self.runtime, call_id, state.run_id)
            return None
        if state.status != CallStatus.RUNNING:
            return None
        if self.leases.alive_elsewhere(call_id) or not state.started_long_ago:
            # A duplicate delivery (reaper re-send, visibility-timeout restore) of a call a
            # live worker is executing: that worker commits it.
            log.info("call %s is running elsewhere; duplicate delivery dropped", call_id)
            return None
        if state.attempts >= self.settings.call_max_attempts:
            # Started that many times and lost every time (a call that kills its worker?):
            # stop here; the run's pattern decides what a failed call means.
            call_lifecycle.give_up_lost(self.runtime, call_id, state.run_id, state.attempts)
            return None
        if call_lifecycle.take_over(
            self.runtime, call_id, state.attempts, grace_s=self.takeover_grace_s
        ):
            log.warning("call %s lost its worker (lease lapsed); taken over", call_id)
            self.leases.hold(call_id)
            # Taken over and leased: from here the call is this worker's, so a store outage
            # is waited out rather than giving the call up to another takeover.
            try:
                return self._patiently(f"call {call_id}", lambda: self._load(call_id))
            except BaseException:
                self.leases.drop(call_id)
                raise
        return None

    def _free_slot_if_finished(self, message: ExecuteAgentCall) -> None:
        """A message for a call that is already over (cancelled while it waited for its
        turn, or a redelivery) still holds a fair-dispatch slot: give it back."""
        with self.runtime.db.read() as session:
            row = session.execute(
                select(AgentCall.status, AgentCall.pool).where(AgentCall.id == message.call_id)
            ).first()
        if row is not None and row[0] in TERMINAL_CALL_STATUSES:
            call_queue.complete(
                self.runtime.fair, self.runtime.celery, row[1], message.call_id, message.run_id
            )

    # --- cancellation -------------------------------------------------------------------------
    def _stopped(self, call: CallView) -> bool:
        return self.stop_watch.stopped(call.id)

    # --- run, then commit once ----------------------------------------------------------------
    def _load(self, call_id: str) -> tuple[ClaimedCall, CallContext]:
        """The claimed call and its context, in one short read."""
        with self.runtime.db.read() as session:
            claimed = call_lifecycle.load_claimed(session, call_id)
            return claimed, load_context(session.connection(), claimed)

    def _execute(self, claimed: ClaimedCall, context: CallContext) -> str:
        call = claimed.call
        self._publish(call, "agent_call.started", {"agent": call.agent, "role": call.role})
        started = time.perf_counter()
        primary = call.params.get("provider") or self.settings.llm_provider
        requested = call.params.get("model") or self.settings.llm_model
        try:
            outcome = self.loop.run(call, context)
        except CallCancelled:
            self._commit(call, CallResult(CallStatus.CANCELLED), None)
            self._publish(call, "agent_call.cancelled", {"agent": call.agent})
            AGENT_CALLS.labels(agent_label(call.agent), primary, "cancelled").inc()
            AGENT_MODEL_CALLS.labels(primary, model_label(requested, primary), "cancelled").inc()
            return CallStatus.CANCELLED
        except (AllProvidersFailed, ProviderError) as exc:
            return self._failed(call, exc, (time.perf_counter() - started) * 1000)
        return self._succeeded(call, outcome, (time.perf_counter() - started) * 1000, primary)

    def _failed(
        self, call: CallView, exc: AllProvidersFailed | ProviderError, latency_ms: float
    ) -> str:
        last = exc.last_error if isinstance(exc, AllProvidersFailed) else exc
        attempts = [a.__dict__ for a in exc.attempts] if isinstance(exc, AllProvidersFailed) else []
        error = {
            "code": f"provider_{last.kind.value}",
            "message": str(last),
            "provider": last.provider,
            "retryable": last.retryable,
            "attempts": attempts,
        }
        log.error("call %s (%s) failed: %s", call.id, call.agent, last)
        self._commit(
            call,
            CallResult(
                CallStatus.FAILED, error=error, latency_ms=latency_ms, provider=last.provider
            ),
            None,
        )
        self._publish(call, "agent_call.failed", {"agent": call.agent, "error": error})
        AGENT_CALLS.labels(agent_label(call.agent), last.provider, "failed").inc()
        requested = call.params.get("model") or self.settings.llm_model
        AGENT_MODEL_CALLS.labels(
            last.provider, model_label(requested, last.provider), "failed"
        ).inc()
        return CallStatus.FAILED

    def _succeeded(self, call: CallView, outcome: Outcome, latency_ms: float, primary: str) -> str:
        result = CallResult(
            CallStatus.SUCCEEDED,
            output=outcome.content,
            control=outcome.control,
            provider=outcome.provider,
            model=outcome.model,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            cost_usd=outcome.cost_usd,
            latency_ms=latency_ms,
            ttft_ms=outcome.ttft_ms,
            tool_steps=outcome.tool_steps,
            error={"retries": outcome.attempts} if outcome.attempts else None,
            used=outcome.used,
        )
        answer = None if outcome.control else outcome.content
        committed = self._commit(call, result, answer)
        if committed is None:
            return CallStatus.SUCCEEDED
        provider = outcome.provider or primary
        self._publish(
            call,
            "agent_call.completed",
            {
                "agent": call.agent,
                "role": call.role,
                "provider": provider,
                "usage": {
                    "input_tokens": outcome.input_tokens,
                    "output_tokens": outcome.output_tokens,
                    "cost_usd": round(outcome.cost_usd, 6),
                    "latency_ms": round(latency_ms, 1),
                    "tool_steps": outcome.tool_steps,
                },
                "control": outcome.control,
            },
        )
        AGENT_CALLS.labels(agent_label(call.agent), provider, "succeeded").inc()
        AGENT_CALL_DURATION.labels(provider).observe(latency_ms / 1000)
        AGENT_TOKENS.labels(provider, "input").inc(outcome.input_tokens)
        AGENT_TOKENS.labels(provider, "output").inc(outcome.output_tokens)
        model = model_label(outcome.model, provider)
        AGENT_MODEL_CALLS.labels(provider, model, "succeeded").inc()
        AGENT_COST.labels(provider, model).inc(outcome.cost_usd)
        if outcome.ttft_ms is not None:
            AGENT_TTFT.labels(provider).observe(outcome.ttft_ms / 1000)
        tenant = tenant_label(call.tenant_id)
        TENANT_TOKENS.labels(tenant, "input").inc(outcome.input_tokens)
        TENANT_TOKENS.labels(tenant, "output").inc(outcome.output_tokens)
        TENANT_COST.labels(tenant).inc(outcome.cost_usd)
        if committed.ended is not None:
            self._run_ended(call, committed.ended)
        return CallStatus.SUCCEEDED

    def _run_ended(self, call: CallView, ended: EndedByCall) -> None:
        """The run this call's commit ended: its end event after the call's, and counted as
        the orchestrator counts the runs it ends."""
        for type_, data in ended.events:
            try:
                self.runtime.events.publish(call.run_id, type_, {"run_id": call.run_id, **data})
            except Exception as exc:  # the store is the truth; the stream is a view
                log.warning("event publish failed for run %s: %s", call.run_id, exc)
        pattern = ended.pattern or "none"
        RUNS_FINISHED.labels(ended.status.value, pattern).inc()
        RUN_DURATION.labels(pattern).observe(ended.duration_s)

    def _commit(self, call: CallView, result: CallResult, answer: str | None) -> Committed | None:
        """Commit the outcome once. A store outage is waited out rather than thrown away:
        redoing the call would spend on the provider again for a result already in hand."""
        return self._patiently(
            f"commit {call.id}",
            lambda: call_lifecycle.commit(self.runtime, call, result, answer),
        )

    def _patiently(self, what: str, work: Callable[[], T]) -> T:
        """``work``, retried while the store is unreachable (up to COMMIT_PATIENCE_S, the
        lease renewed meanwhile)."""
        deadline = time.monotonic() + COMMIT_PATIENCE_S
        delay = 0.25
        while True:
            try:
                return work()
            except Exception as exc:
                if not is_outage(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s waits for the store: %s", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _publish(self, call: CallView, type_: str, data: dict[str, Any]) -> None:
        try:
            self.runtime.events.publish(
                call.run_id, type_, {"run_id": call.run_id, "call_id": call.id, **data}
            )
        except Exception as exc:
            log.warning("event publish failed for run %s: %s", call.run_id, exc)
