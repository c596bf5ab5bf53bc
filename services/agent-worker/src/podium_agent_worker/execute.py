"""Executing one AgentCall: build the prompt from the thread, call the provider with
streaming, and commit the answer exactly once.

Idempotency: a call already in a terminal state is skipped without spending on the provider,
and the commit is a conditional update (``status = running``) plus a unique ``dedupe_key`` on
the agent's message, so a redelivered task can never append a second answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select, update

from podium.llm import ChatMessage, ChatRequest, LLMProvider, ProviderError, build_provider
from podium.messages import AdvanceRun, ExecuteAgentCall
from podium.metrics import AGENT_CALL_DURATION, AGENT_CALLS, AGENT_TOKENS, agent_label
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
    utcnow,
)
from podium.store.threads import append_event
from podium_agent_worker.streaming import DeltaBatcher

log = logging.getLogger(__name__)

# Thread events an agent sees, newest last (compaction replaces this cap in a later issue).
CONTEXT_EVENTS = 50
RETRY_DELAYS_S = (0.2, 0.8, 2.0)
CANCEL_CHECK_S = 0.25


class CallCancelled(Exception):
    pass


class Executor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._providers: dict[str, LLMProvider] = {}

    def provider(self, name: str | None) -> LLMProvider:
        key = name or self.runtime.settings.llm_provider
        if key not in self._providers:
            self._providers[key] = build_provider(self.runtime.settings, key)
        return self._providers[key]

    # --- phase 1: claim --------------------------------------------------------------------
    def _claim(self, message: ExecuteAgentCall) -> tuple[AgentCall, list[ChatMessage]] | None:
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
            run = session.get(Run, call.run_id)
            if run is None or run.cancel_requested or run.status in TERMINAL_RUN_STATUSES:
                call.status = CallStatus.CANCELLED
                call.finished_at = utcnow()
                tx.send(AdvanceRun(run_id=call.run_id, reason="call.finished", call_id=call.id))
                return None
            call.status = CallStatus.RUNNING
            call.attempts += 1
            call.started_at = utcnow()
            events = list(
                session.scalars(
                    select(ThreadEvent)
                    .where(
                        ThreadEvent.thread_id == call.thread_id,
                        ThreadEvent.seq <= call.context_until_seq,
                        ThreadEvent.kind.in_(
                            [EventKind.USER_MESSAGE.value, EventKind.AGENT_MESSAGE.value]
                        ),
                    )
                    .order_by(ThreadEvent.seq.desc())
                    .limit(CONTEXT_EVENTS)
                )
            )
            messages = [
                ChatMessage(role="system", content=str(call.params.get("instructions", "")))
            ]
            for event in reversed(events):
                if event.kind == EventKind.USER_MESSAGE:
                    messages.append(ChatMessage(role="user", content=event.content))
                else:
                    messages.append(
                        ChatMessage(role="assistant", content=event.content, name=event.agent)
                    )
            session.expunge(call)
            return call, messages

    # --- phase 2: call the provider (no transaction held) ---------------------------------
    def _cancel_requested(self, run_id: str) -> bool:
        with self.runtime.db.session() as session:
            return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))

    def _call_provider(
        self, call: AgentCall, messages: list[ChatMessage]
    ) -> tuple[Any, LLMProvider]:
        params = call.params
        provider = self.provider(params.get("provider"))
        settings = self.runtime.settings
        last_check = [time.monotonic()]

        def check_cancel() -> None:
            now = time.monotonic()
            if now - last_check[0] >= CANCEL_CHECK_S:
                last_check[0] = now
                if self._cancel_requested(call.run_id):
                    raise CallCancelled

        batcher = DeltaBatcher(
            self.runtime.events,
            call.run_id,
            call.id,
            call.agent,
            settings.delta_flush_ms,
            on_flush=check_cancel,
        )
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            request = ChatRequest(
                model=params.get("model") or settings.llm_model,
                messages=messages,
                temperature=float(params.get("temperature", 0.0)),
                max_tokens=int(params.get("max_output_tokens", 1024)),
                timeout_s=settings.call_timeout_s,
                metadata={"agent": call.agent, "attempt": attempt, "call_id": call.id},
            )
            try:
                result = provider.complete(request, on_delta=batcher)
                batcher.flush()
                return result, provider
            except ProviderError as exc:
                if not exc.retryable or delay is None:
                    raise
                log.info("call %s: %s; retrying in %.1fs", call.id, exc, delay)
                time.sleep(max(delay, exc.retry_after_s or 0))
        raise AssertionError("unreachable")

    # --- phase 3: commit once -------------------------------------------------------------
    def _commit(self, call: AgentCall, values: dict[str, Any], answer: str | None) -> bool:
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
            if answer is not None:
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
            return None
        call, messages = claimed
        self._publish(call.run_id, "agent_call.started", {"call_id": call.id, "agent": call.agent})
        started = time.perf_counter()
        provider_name = call.params.get("provider") or self.runtime.settings.llm_provider
        try:
            result, provider = self._call_provider(call, messages)
        except CallCancelled:
            self._commit(call, {"status": CallStatus.CANCELLED}, None)
            self._publish(call.run_id, "agent_call.cancelled", {"call_id": call.id})
            AGENT_CALLS.labels(agent_label(call.agent), provider_name, "cancelled").inc()
            return CallStatus.CANCELLED
        except ProviderError as exc:
            error = {"code": f"provider_{exc.kind.value}", "message": str(exc)}
            latency = (time.perf_counter() - started) * 1000
            self._commit(
                call,
                {
                    "status": CallStatus.FAILED,
                    "error": error,
                    "latency_ms": latency,
                    "provider": exc.provider,
                },
                None,
            )
            self._publish(call.run_id, "agent_call.failed", {"call_id": call.id, "error": error})
            AGENT_CALLS.labels(agent_label(call.agent), exc.provider, "failed").inc()
            return CallStatus.FAILED
        latency_ms = (time.perf_counter() - started) * 1000
        values = {
            "status": CallStatus.SUCCEEDED,
            "output": result.content,
            "provider": result.provider,
            "model": result.model,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "latency_ms": latency_ms,
            "ttft_ms": result.ttft_ms,
        }
        if self._commit(call, values, result.content):
            usage = {
                "input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens,
                "latency_ms": round(latency_ms, 1),
            }
            self._publish(
                call.run_id,
                "agent_call.completed",
                {
                    "call_id": call.id,
                    "agent": call.agent,
                    "provider": provider.name,
                    "usage": usage,
                },
            )
            AGENT_CALLS.labels(agent_label(call.agent), provider.name, "succeeded").inc()
            AGENT_CALL_DURATION.labels(provider.name).observe(latency_ms / 1000)
            AGENT_TOKENS.labels(provider.name, "input").inc(result.usage.input_tokens)
            AGENT_TOKENS.labels(provider.name, "output").inc(result.usage.output_tokens)
        return CallStatus.SUCCEEDED
