"""One agent call's LLM ↔ tools loop, with no transaction held: its context compacted when over
the agent's budget, each turn through the provider chain (retries, then fallbacks), token
deltas batched into the run's stream, tool steps recorded through the lifecycle, and
cancellation checked between turns and flushes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from podium.lifecycle import CallView
from podium.lifecycle import calls as call_lifecycle
from podium.llm import ChatMessage, ChatRequest, ChatResult, ToolCall
from podium.llm.resilience import RetryPolicy, Stopped, complete_with_fallback, provider_chain
from podium.pricing import PriceTable
from podium.runtime import Runtime
from podium.store import EventKind, ThreadEvent
from podium.tools_catalog import CONTROL_TOOLS
from podium_agent_worker.call_context import CallContext, render
from podium_agent_worker.compaction import Entry, estimate_tokens, plan_compaction, summarize
from podium_agent_worker.streaming import DeltaBatcher
from podium_agent_worker.tools import ToolContext, ToolRegistry
from podium_agent_worker.tools.search_impl import search_events

log = logging.getLogger(__name__)

MIN_TURN_TOKENS = 16
BUDGET_STOP_MESSAGE = "I stopped here: this run's token budget is used up."


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
    # What the first LLM request of the call carried.
    used: dict[str, Any] = field(default_factory=dict)

    def add(self, result: ChatResult, cost: float) -> None:
        self.input_tokens += result.usage.input_tokens
        self.output_tokens += result.usage.output_tokens
        self.cost_usd += cost
        self.provider, self.model = result.provider, result.model
        if self.ttft_ms is None:
            self.ttft_ms = result.ttft_ms


def token_room(params: dict[str, Any], outcome: Outcome, messages: list[ChatMessage]) -> int | None:
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


class AgentLoop:
    def __init__(
        self,
        runtime: Runtime,
        tools: ToolRegistry,
        prices: PriceTable,
        policy: RetryPolicy,
        stopped: Callable[[CallView], bool],
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.tools = tools
        self.prices = prices
        self.policy = policy
        self.stopped = stopped

    def run(self, call: CallView, ctx: CallContext) -> Outcome:
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

        def should_stop() -> bool:
            return self.stopped(call)

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
            if step and self.stopped(call):
                raise CallCancelled
            max_tokens = int(params.get("max_output_tokens", 1024))
            room = token_room(params, outcome, messages)
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
            if not outcome.used:
                outcome.used = {
                    "model": request.model,
                    "temperature": request.temperature,
                    "max_output_tokens": request.max_tokens,
                    "tools": allowed,
                }
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

    def _compact(self, call: CallView, ctx: CallContext, outcome: Outcome) -> None:
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
        seq = call_lifecycle.append_summary(
            self.runtime, call, text=text, covers_through_seq=last_seq
        )
        # None: another call summarised the same range first.
        ctx.entries = [Entry(seq or last_seq, EventKind.SUMMARY, "system", None, text), *recent]

    def _searcher(self, call: CallView) -> Any:
        def search(query: str, limit: int) -> list[dict[str, Any]]:
            with self.runtime.db.read() as session:
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
        self, call: CallView, step: int, index: int, tc: ToolCall, text: str, ok: bool
    ) -> None:
        try:
            self.runtime.events.publish(
                call.run_id,
                "agent_call.tool",
                {
                    "run_id": call.run_id,
                    "call_id": call.id,
                    "agent": call.agent,
                    "tool": tc.name,
                    "ok": ok,
                },
            )
        except Exception as exc:  # the stream is a view; the thread records the step below
            log.warning("event publish failed for run %s: %s", call.run_id, exc)
        call_lifecycle.record_tool_step(
            self.runtime,
            call,
            key=f"{step}:{index}",
            request=f"{tc.name}({json.dumps(tc.arguments, sort_keys=True)})",
            response=text,
            tool=tc.name,
            ok=ok,
        )
