"""Executing one AgentCall (DESIGN §1): claim it, build its context (compacting the thread if
it is over the agent's budget), run the LLM ↔ tools loop with retries and the fallback
provider chain, and commit the outcome exactly once.

Idempotency: a call already in a terminal state is skipped without spending on the provider;
the commit is a conditional update (``status = running``) plus a unique ``dedupe_key`` on the
agent's message, so a redelivered task never appends a second answer.

Liveness: while a call runs, this worker holds its lease (``podium.events.CallLeases``) and
renews it from one heartbeat thread. A redelivered message of a call whose lease is alive is
left to the worker executing it; a call whose lease lapsed (its worker died) is taken over
here, or re-sent by the orchestrator's reaper.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from podium.call_dispatch import complete_call
from podium.consumers import is_outage
from podium.events import call_lost_error
from podium.llm import ChatMessage, ChatRequest, ChatResult, ProviderError, ToolCall
from podium.llm.resilience import (
    AllProvidersFailed,
    RetryPolicy,
    Stopped,
    complete_with_fallback,
    provider_chain,
)
from podium.messages import AdvanceRun, ExecuteAgentCall
from podium.metrics import (
    AGENT_CALL_DURATION,
    AGENT_CALLS,
    AGENT_COST,
    AGENT_MODEL_CALLS,
    AGENT_TOKENS,
    AGENT_TTFT,
    TENANT_COST,
    TENANT_TOKENS,
    agent_label,
    model_label,
    tenant_label,
)
from podium.pricing import PriceTable
from podium.runtime import Runtime
from podium.store import (
    TERMINAL_CALL_STATUSES,
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    EventKind,
    Run,
    Thread,
    ThreadEvent,
    new_id,
    utcnow,
)
from podium.store.threads import append_event
from podium.tools_catalog import CONTROL_TOOLS
from podium_agent_worker.compaction import Entry, estimate_tokens, plan_compaction, summarize
from podium_agent_worker.context import CallContext, load_context, render
from podium_agent_worker.streaming import DeltaBatcher
from podium_agent_worker.tools import ToolContext, default_registry
from podium_agent_worker.tools.search_impl import search_events

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 0.25
# How long a finished call waits for the store to come back before giving up its commit.
COMMIT_PATIENCE_S = 120.0


class CallCancelled(Exception):
    pass


@dataclass
class Outcome:
    content: str = ""
    control: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    budget_stopped: bool = False
    provider: str | None = None
    model: str | None = None
    ttft_ms: float | None = None
    tool_steps: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: ChatResult, cost: float) -> None:
        self.input_tokens += result.usage.input_tokens
        self.output_tokens += result.usage.output_tokens
        self.cost_usd += cost
        self.provider, self.model = result.provider, result.model
        if self.ttft_ms is None:
            self.ttft_ms = result.ttft_ms


MIN_TURN_TOKENS = 16
BUDGET_STOP_MESSAGE = "I stopped here: this run's token budget is used up."


def _token_room(
    params: dict[str, Any], outcome: Outcome, messages: list[ChatMessage]
) -> int | None:
    """Output tokens the next LLM turn may use within the call's share of the run's token
    cap (``budget_tokens``, set by the orchestrator), or None without a cap. The input is
    estimated before the call (about 4 characters a token), so the bound is approximate by
    that estimate's error."""
    budget = params.get("budget_tokens")
    if budget is None:
        return None
    spent = outcome.input_tokens + outcome.output_tokens
    prompt = sum(estimate_tokens(m.content or "") for m in messages)
    return int(budget) - spent - prompt


class Executor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.tools = default_registry()
        self.prices = PriceTable.load(self.settings.prices_file)
        self.policy = RetryPolicy.from_settings(self.settings)
        # Leases this process holds, {call_id: token}, renewed by the heartbeat thread.
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        signals.worker_shutdown.connect(self._release_all, weak=False)

    # --- leases -----------------------------------------------------------------------------
    def _lease_alive(self, call_id: str) -> bool:
        try:
            return call_id in self.runtime.leases.alive([call_id])
        except Exception as exc:  # Redis down: cannot tell, so the call is taken over
            log.warning("lease check of call %s failed: %s", call_id, exc)
            return False

    def _hold(self, call_id: str, token: str) -> None:
        with self._held_lock:
            self._held[call_id] = token
        self._ensure_heartbeat()
        try:
            self.runtime.leases.acquire(call_id, token)
        except Exception as exc:  # the heartbeat re-creates it once Redis is back
            log.warning("lease of call %s not taken: %s", call_id, exc)

    def _drop(self, call_id: str, only: str | None = None) -> None:
        """Release the lease on ``call_id`` (only if held with token ``only``, when given)."""
        with self._held_lock:
            token = self._held.get(call_id)
            if token is None or (only is not None and token != only):
                return
            del self._held[call_id]
        try:
            self.runtime.leases.release(call_id, token)
        except Exception as exc:  # it expires by itself
            log.debug("lease of call %s not released: %s", call_id, exc)

    def _release_all(self, **_: Any) -> None:
        """Worker shutting down: whatever it still holds was cancelled and requeued."""
        for call_id in list(self._held):
            self._drop(call_id)

    def _ensure_heartbeat(self) -> None:
        # One thread per process (a prefork child starts its own).
        if self._heartbeat_pid == os.getpid():
            return
        self._heartbeat_pid = os.getpid()
        threading.Thread(target=self._heartbeat, name="podium-lease-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        interval = self.settings.call_lease_s / 3
        while True:
            time.sleep(interval)
            with self._held_lock:
                held = dict(self._held)
            try:
                self.runtime.leases.renew(held)
            except Exception as exc:
                log.warning("lease heartbeat failed (%d calls): %s", len(held), exc)

    # --- phase 1: claim -------------------------------------------------------------------
    def _claim(self, message: ExecuteAgentCall) -> tuple[AgentCall, Run, CallContext] | None:
        token = new_id()
        try:
            return self._claim_once(message, token)
        except Exception:
            self._drop(message.call_id, only=token)  # the claim did not commit
            raise

    def _claim_once(
        self, message: ExecuteAgentCall, token: str
    ) -> tuple[AgentCall, Run, CallContext] | None:
        with self.runtime.transaction() as tx:
            session = tx.session
            query = select(AgentCall).where(AgentCall.id == message.call_id)
            if self.runtime.db.is_postgres:
                query = query.with_for_update()
            call = session.scalars(query).one_or_none()
            if call is None:
                log.warning("call %s does not exist; dropping the message", message.call_id)
                return None
            if call.status in TERMINAL_CALL_STATUSES:
                return None  # already done: a redelivery spends nothing
            if call.status == CallStatus.RUNNING and (
                call.id in self._held or self._lease_alive(call.id)
            ):
                # A duplicate delivery (reaper re-send, visibility-timeout restore) of a call
                # a live worker is executing: that worker commits it.
                log.info("call %s is running elsewhere; duplicate delivery dropped", call.id)
                return None
            run = session.get(Run, call.run_id)
            if run is None or run.cancel_requested or run.status in TERMINAL_RUN_STATUSES:
                call.status = CallStatus.CANCELLED
                call.finished_at = utcnow()
                tx.send(AdvanceRun(run_id=call.run_id, reason="call.finished", call_id=call.id))
                return None
            if call.status == CallStatus.RUNNING:
                if call.attempts >= self.settings.call_max_attempts:
                    # Started that many times and lost every time (a call that kills its
                    # worker?): stop here, the run's pattern decides what a failed call means.
                    call.status = CallStatus.FAILED
                    call.error = call_lost_error(call.attempts)
                    call.finished_at = utcnow()
                    tx.send(AdvanceRun(run_id=call.run_id, reason="call.finished", call_id=call.id))
                    return None
                log.warning("call %s lost its worker (lease lapsed); taking it over", call.id)
            call.status = CallStatus.RUNNING
            call.attempts += 1
            call.started_at = utcnow()
            # Taken before the commit, so a concurrent delivery waiting on the row lock sees it.
            self._hold(call.id, token)
            context = load_context(session, call, run)
            session.flush()
            session.expunge(call)
            session.expunge(run)
            return call, run, context

    # --- cancellation ---------------------------------------------------------------------
    def _stopped(self, call: AgentCall) -> bool:
        try:
            with self.runtime.db.session() as session:
                row = session.execute(
                    select(AgentCall.status, Run.cancel_requested)
                    .join(Run, Run.id == AgentCall.run_id)
                    .where(AgentCall.id == call.id)
                ).first()
        except Exception as exc:
            if not is_outage(exc):
                raise
            # The store is down: keep going; the commit waits for it (see _commit).
            log.debug("cancel check of call %s skipped: %s", call.id, exc)
            return False
        return row is None or row[0] != CallStatus.RUNNING or bool(row[1])

    # --- compaction -----------------------------------------------------------------------
    def _compact(self, call: AgentCall, ctx: CallContext, outcome: Outcome) -> None:
        plan = plan_compaction(
            ctx.entries,
            self.settings.agent_context_budget_tokens,
            self.settings.agent_keep_recent_tokens,
        )
        if plan is None:
            return
        older, recent = plan
        chain = provider_chain(self.settings, call.params.get("provider"), [])
        model = call.params.get("model") or self.settings.llm_model
        text, usage = summarize(chain[0], model, older)
        outcome.input_tokens += usage.input_tokens
        outcome.output_tokens += usage.output_tokens
        last_seq = older[-1].seq
        try:
            with self.runtime.db.session() as session:
                event = append_event(
                    session,
                    tenant_id=call.tenant_id,
                    thread_id=call.thread_id,
                    kind=EventKind.SUMMARY,
                    role="system",
                    content=text,
                    run_id=call.run_id,
                    call_id=call.id,
                    data={"covers_through_seq": last_seq},
                    dedupe_key=f"summary:{call.thread_id}:{last_seq}",
                )
                seq = event.seq
        except IntegrityError:
            seq = last_seq  # another call summarised the same range first
        ctx.entries = [Entry(seq, EventKind.SUMMARY, "system", None, text), *recent]

    # --- phase 2: the LLM ↔ tools loop (no transaction held) -----------------------------
    def _loop(self, call: AgentCall, ctx: CallContext) -> Outcome:
        params = call.params
        outcome = Outcome()
        self._compact(call, ctx, outcome)
        messages = render(ctx, call.agent)
        allowed = [t for t in params.get("tools", []) if t not in CONTROL_TOOLS]
        specs = self.tools.specs_for(allowed) + [
            CONTROL_TOOLS[t] for t in params.get("control_tools", []) if t in CONTROL_TOOLS
        ]
        chain = provider_chain(
            self.settings, params.get("provider"), self.settings.fallback_providers
        )
        last_check = [time.monotonic()]

        def should_stop() -> bool:
            now = time.monotonic()
            if now - last_check[0] < CANCEL_CHECK_S:
                return False
            last_check[0] = now
            return self._stopped(call)

        def on_flush() -> None:
            if should_stop():
                raise CallCancelled

        batcher = DeltaBatcher(
            self.runtime.events,
            call.run_id,
            call.id,
            call.agent,
            self.settings.delta_flush_ms,
            on_flush=on_flush,
        )
        tool_ctx = ToolContext(call.tenant_id, call.thread_id, call.run_id, self._searcher(call))
        max_steps = self.settings.agent_max_tool_steps
        last_content = ""
        for step in range(max_steps + 1):
            if step and self._stopped(call):
                raise CallCancelled
            max_tokens = int(params.get("max_output_tokens", 1024))
            room = _token_room(params, outcome, messages)
            if room is not None:
                if step and room < MIN_TURN_TOKENS:
                    # Another turn would break the run's token cap: answer with what we have.
                    outcome.content = last_content or BUDGET_STOP_MESSAGE
                    outcome.budget_stopped = True
                    return outcome
                max_tokens = max(MIN_TURN_TOKENS, min(max_tokens, room))
            request = ChatRequest(
                model=params.get("model") or self.settings.llm_model,
                messages=messages,
                temperature=float(params.get("temperature", 0.0)),
                max_tokens=max_tokens,
                tools=specs if step < max_steps else [],
                timeout_s=self.settings.call_timeout_s,
                metadata={
                    "purpose": "agent",
                    "agent": call.agent,
                    "role": call.role,
                    "step": step,
                    "call_id": call.id,
                    "run_id": call.run_id,
                },
            )
            try:
                rr = complete_with_fallback(
                    chain, request, policy=self.policy, on_delta=batcher, should_stop=should_stop
                )
            except Stopped:
                raise CallCancelled from None
            batcher.flush()
            result = rr.result
            outcome.add(
                result,
                self.prices.estimate(
                    result.model,
                    result.provider,
                    result.usage.input_tokens,
                    result.usage.output_tokens,
                ).usd,
            )
            outcome.attempts += [a.__dict__ for a in rr.attempts if a.error]
            if not result.tool_calls:
                outcome.content = result.content
                return outcome
            control = next((tc for tc in result.tool_calls if tc.name in CONTROL_TOOLS), None)
            if control is not None:
                outcome.content = result.content
                outcome.control = {"control": control.name, **control.arguments}
                return outcome
            outcome.tool_steps += 1
            last_content = result.content or last_content
            messages.append(
                ChatMessage(role="assistant", content=result.content, tool_calls=result.tool_calls)
            )
            for index, tc in enumerate(result.tool_calls):
                text, ok = self.tools.run(tc.name, tc.arguments, tool_ctx, allowed=allowed)
                self._record_tool(call, step, index, tc, text, ok)
                messages.append(
                    ChatMessage(role="tool", content=text, tool_call_id=tc.id, name=tc.name)
                )
        raise AssertionError("unreachable: the last step offers no tools")

    def _searcher(self, call: AgentCall) -> Any:
        def search(query: str, limit: int) -> list[dict[str, Any]]:
            with self.runtime.db.session() as session:
                rows = session.execute(
                    select(
                        ThreadEvent.seq, ThreadEvent.role, ThreadEvent.agent, ThreadEvent.content
                    )
                    .where(
                        ThreadEvent.thread_id == call.thread_id,
                        ThreadEvent.kind.in_(
                            [EventKind.USER_MESSAGE.value, EventKind.AGENT_MESSAGE.value]
                        ),
                    )
                    .order_by(ThreadEvent.seq.desc())
                    .limit(1000)
                ).all()
            return search_events([(r[0], r[1], r[2], r[3]) for r in rows], query, limit)

        return search

    def _record_tool(
        self, call: AgentCall, step: int, index: int, tc: ToolCall, text: str, ok: bool
    ) -> None:
        self._publish(
            call.run_id,
            "agent_call.tool",
            {
                "call_id": call.id,
                "agent": call.agent,
                "tool": tc.name,
                "ok": ok,
            },
        )
        try:
            with self.runtime.db.session() as session:
                for kind, content in (
                    (
                        EventKind.TOOL_REQUEST,
                        f"{tc.name}({json.dumps(tc.arguments, sort_keys=True)})",
                    ),
                    (EventKind.TOOL_RESPONSE, text),
                ):
                    append_event(
                        session,
                        tenant_id=call.tenant_id,
                        thread_id=call.thread_id,
                        kind=kind,
                        role="tool",
                        agent=call.agent,
                        content=content,
                        run_id=call.run_id,
                        call_id=call.id,
                        data={"tool": tc.name, "ok": ok},
                        dedupe_key=f"tool:{call.id}:{step}:{index}:{kind.value}",
                    )
        except IntegrityError:
            pass  # a redelivered call already recorded this step

    # --- phase 3: commit once -------------------------------------------------------------
    def _commit(self, call: AgentCall, values: dict[str, Any], answer: str | None) -> bool:
        """Commit the outcome once. A store outage is waited out (up to COMMIT_PATIENCE_S,
        the lease renewed meanwhile) rather than thrown away: redoing the call would spend on
        the provider again for a result already in hand."""
        deadline = time.monotonic() + COMMIT_PATIENCE_S
        delay = 0.25
        while True:
            try:
                return self._commit_once(call, values, answer)
            except Exception as exc:
                if not is_outage(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("commit of call %s waits for the store: %s", call.id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _commit_once(self, call: AgentCall, values: dict[str, Any], answer: str | None) -> bool:
        with self.runtime.transaction() as tx:
            session = tx.session
            won = session.execute(
                update(AgentCall)
                .where(AgentCall.id == call.id, AgentCall.status == CallStatus.RUNNING.value)
                .values(finished_at=utcnow(), **values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not won:
                return False  # cancelled meanwhile, or another delivery committed first
            if answer:
                event = append_event(
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
                )
                session.flush()
                session.execute(
                    update(AgentCall)
                    .where(AgentCall.id == call.id)
                    .values(message_event_id=event.id)
                    .execution_options(synchronize_session=False)
                )
                session.execute(
                    update(Thread)
                    .where(Thread.id == call.thread_id)
                    .values(last_agent=call.agent)
                    .execution_options(synchronize_session=False)
                )
            tx.send(AdvanceRun(run_id=call.run_id, reason="call.finished", call_id=call.id))
            return True

    def _publish(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        try:
            self.runtime.events.publish(run_id, type_, {"run_id": run_id, **data})
        except Exception as exc:
            log.warning("event publish failed for run %s: %s", run_id, exc)

    def execute(self, message: ExecuteAgentCall) -> str | None:
        claimed = self._claim(message)
        if claimed is None:
            self._free_slot_if_finished(message)
            return None
        try:
            status = self._execute(*claimed)
        finally:
            self._drop(message.call_id)
        # Not on an exception: a call requeued at shutdown or retried keeps its slot.
        complete_call(self.runtime, claimed[0].pool, message.call_id, message.run_id)
        return status

    def _free_slot_if_finished(self, message: ExecuteAgentCall) -> None:
        """A message for a call that is already over (cancelled while it waited for its
        turn, or a redelivery) still holds a fair-dispatch slot: give it back."""
        with self.runtime.db.session() as session:
            row = session.execute(
                select(AgentCall.status, AgentCall.pool).where(AgentCall.id == message.call_id)
            ).first()
        if row is not None and row[0] in TERMINAL_CALL_STATUSES:
            complete_call(self.runtime, row[1], message.call_id, message.run_id)

    def _execute(self, call: AgentCall, _run: Run, ctx: CallContext) -> str | None:
        self._publish(
            call.run_id,
            "agent_call.started",
            {"call_id": call.id, "agent": call.agent, "role": call.role},
        )
        started = time.perf_counter()
        primary = call.params.get("provider") or self.settings.llm_provider
        try:
            outcome = self._loop(call, ctx)
        except CallCancelled:
            self._commit(call, {"status": CallStatus.CANCELLED}, None)
            self._publish(
                call.run_id, "agent_call.cancelled", {"call_id": call.id, "agent": call.agent}
            )
            AGENT_CALLS.labels(agent_label(call.agent), primary, "cancelled").inc()
            requested = call.params.get("model") or self.settings.llm_model
            AGENT_MODEL_CALLS.labels(primary, model_label(requested, primary), "cancelled").inc()
            return CallStatus.CANCELLED
        except (AllProvidersFailed, ProviderError) as exc:
            last = exc.last_error if isinstance(exc, AllProvidersFailed) else exc
            attempts = (
                [a.__dict__ for a in exc.attempts] if isinstance(exc, AllProvidersFailed) else []
            )
            error = {
                "code": f"provider_{last.kind.value}",
                "message": str(last),
                "attempts": attempts,
            }
            latency = (time.perf_counter() - started) * 1000
            self._commit(
                call,
                {
                    "status": CallStatus.FAILED,
                    "error": error,
                    "latency_ms": latency,
                    "provider": last.provider,
                },
                None,
            )
            self._publish(
                call.run_id,
                "agent_call.failed",
                {"call_id": call.id, "agent": call.agent, "error": error},
            )
            AGENT_CALLS.labels(agent_label(call.agent), last.provider, "failed").inc()
            requested = call.params.get("model") or self.settings.llm_model
            model = model_label(requested, last.provider)
            AGENT_MODEL_CALLS.labels(last.provider, model, "failed").inc()
            return CallStatus.FAILED
        latency_ms = (time.perf_counter() - started) * 1000
        values = {
            "status": CallStatus.SUCCEEDED,
            "output": outcome.content,
            "result": outcome.control,
            "provider": outcome.provider,
            "model": outcome.model,
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "cost_usd": outcome.cost_usd,
            "latency_ms": latency_ms,
            "ttft_ms": outcome.ttft_ms,
            "tool_steps": outcome.tool_steps,
            "error": {"retries": outcome.attempts} if outcome.attempts else None,
        }
        answer = None if outcome.control else outcome.content
        if self._commit(call, values, answer):
            provider = outcome.provider or primary
            usage = {
                "input_tokens": outcome.input_tokens,
                "output_tokens": outcome.output_tokens,
                "cost_usd": round(outcome.cost_usd, 6),
                "latency_ms": round(latency_ms, 1),
                "tool_steps": outcome.tool_steps,
            }
            self._publish(
                call.run_id,
                "agent_call.completed",
                {
                    "call_id": call.id,
                    "agent": call.agent,
                    "role": call.role,
                    "provider": provider,
                    "usage": usage,
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
        return CallStatus.SUCCEEDED
