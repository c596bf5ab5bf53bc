"""The orchestrator's core in-process, with no Redis and no database: a fake model that
answers the Orchestrator agent with scripted tool calls (like pydantic-ai's TestModel), an
in-memory world (agents, thread events, the learner's record), and an in-memory run that
applies each StepPlan the way the lifecycle does, so a pattern can be driven to its end with
agent calls completed by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from podium.decisions import Decision
from podium.learning import REQUEST_CLASSES
from podium.lifecycle import CallView, ContextState, RunSnapshot, RunState, StepPlan
from podium.llm import ChatRequest, ChatResult, ToolCall, Usage
from podium.roster import DEFAULT_ROSTER
from podium.settings import Settings
from podium.store import CallStatus, EventKind, RunStatus, new_id, utcnow
from podium_orchestrator.agent import OrchestratorAgent
from podium_orchestrator.decider import Decider
from podium_orchestrator.decision_context import EventView
from podium_orchestrator.next_step import plan_step
from podium_orchestrator.patterns import registry
from podium_orchestrator.policy import Stat
from podium_orchestrator.world import AgentSpec, Roster

Reply = list[ToolCall] | str | Exception


def tool(name: str, rationale: str = "because", **arguments: Any) -> ToolCall:
    return ToolCall(id=new_id(), name=name, arguments={"rationale": rationale, **arguments})


class FakeModel:
    """An LLM provider answering from a script: each call takes the next reply (tool calls,
    text, or an exception to raise); a function instead of a list decides per request."""

    name = "fake"
    supports_tools = True

    def __init__(self, *replies: Reply, by_request: Callable[[ChatRequest], Reply] | None = None):
        self.replies = list(replies)
        self.by_request = by_request
        self.requests: list[ChatRequest] = []
        # Set by FakeRun: fails the call if the world's reads still hold their connection.
        self.world: FakeWorld | None = None

    def complete(self, request: ChatRequest, on_delta: Any = None) -> ChatResult:
        assert self.world is None or not self.world.holding, "LLM call while reads are held"
        self.requests.append(request)
        if self.by_request is not None:
            reply = self.by_request(request)
        elif self.replies:
            reply = self.replies.pop(0)
        else:
            raise AssertionError(f"the fake model got an unscripted request: {request.metadata}")
        if isinstance(reply, Exception):
            raise reply
        usage = Usage(input_tokens=100, output_tokens=20)
        if isinstance(reply, str):
            return ChatResult(content=reply, usage=usage, provider=self.name, model="fake-1")
        return ChatResult(tool_calls=reply, usage=usage, provider=self.name, model="fake-1")


def default_roster(**changes: dict[str, Any]) -> Roster:
    agents = {}
    for raw in DEFAULT_ROSTER:
        spec = {
            "description": "",
            "instructions": "",
            "provider": None,
            "model": None,
            "temperature": 0.0,
            "max_output_tokens": 1024,
            "tools": [],
            "pool": "default",
            **raw,
            **changes.get(str(raw["name"]), {}),
        }
        spec["tools"] = tuple(spec["tools"])
        agents[str(raw["name"])] = AgentSpec(**spec)
    return Roster(agents, "assistant")


@dataclasses.dataclass
class FakeWorld:
    roster_: Roster = dataclasses.field(default_factory=default_roster)
    events: list[EventView] = dataclasses.field(default_factory=list)
    record: dict[str, list[Stat]] = dataclasses.field(default_factory=dict)
    cap: int = 0
    holding: bool = False

    def release(self) -> None:
        self.holding = False

    def held(self) -> FakeWorld:
        # Like StoreWorld, a read holds a connection until the next release.
        self.holding = True
        return self

    def roster(self, tenant_id: str) -> Roster:
        return self.held().roster_

    def call_cap(self, tenant_id: str) -> int:
        return self.cap

    def thread_before(self, thread_id: str, seq: int) -> list[EventView]:
        return [e for e in self.held().events if e.seq < seq]

    def delta(self, thread_id: str, after_seq: int) -> tuple[list[EventView], int]:
        newer = [e for e in self.held().events if e.seq > after_seq]
        return newer, len(newer)

    def answer_after(self, thread_id: str, seq: int) -> str | None:
        return next(
            (
                e.content
                for e in self.held().events
                if e.seq > seq and e.kind == EventKind.USER_MESSAGE
            ),
            None,
        )

    def stats(self, tenant_id: str, request_class: str) -> list[Stat]:
        assert request_class in REQUEST_CLASSES
        return self.held().record.get(request_class, [])

    def lessons(self, tenant_id: str, request_class: str) -> list[str]:
        return []

    def say(self, kind: EventKind, content: str, agent: str | None = None) -> int:
        seq = len(self.events) + 1
        self.events.append(EventView(seq, kind, agent, content))
        return seq


class FakeRun:
    """One run in memory: steps are planned as in production and their plans applied here."""

    def __init__(
        self,
        prompt: str,
        model: FakeModel,
        *,
        world: FakeWorld | None = None,
        settings: Settings | None = None,
        pattern: str | None = None,
        agent: str | None = None,
        limits: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.world = world or FakeWorld()
        model.world = self.world
        self.settings = settings or Settings(
            llm_provider="simulated", orchestrator_token_budget=20000
        )
        seq = self.world.say(EventKind.USER_MESSAGE, prompt)
        now = utcnow()
        self.run = RunState(
            id=new_id(),
            tenant_id="tenant",
            thread_id="thread",
            status=RunStatus.QUEUED,
            version=1,
            cancel_requested=False,
            input=prompt,
            input_event_seq=seq,
            requested_agent=agent,
            requested_pattern=pattern,
            pattern=None,
            limits=limits if limits is not None else {"iterations": 100},
            guards=(),
            awaiting=None,
            request_class=None,
            deadline_at=now + timedelta(minutes=10),
            created_at=now,
            started_at=None,
        )
        self.context = ContextState("ctx", 0, self.settings.orchestrator_token_budget, 0, None, 0)
        self.calls: list[CallView] = []
        self.decisions: list[Decision] = []
        self.thread_free = True
        self.plans: list[StepPlan] = []
        self.agent = OrchestratorAgent(model, "fake-1", timeout_s=30, max_tokens=512)

    def snapshot(self) -> RunSnapshot:
        return RunSnapshot(
            self.run,
            self.context,
            tuple(self.calls),
            tuple(self.decisions),
            None,
            self.thread_free,
        )

    def step(self, decider: Decider | None = None) -> StepPlan:
        decider = decider or Decider(lambda: self.agent)
        plan, _ = plan_step(
            self.snapshot(),
            self.world,
            decider,
            registry(self.settings.patterns_file),
            self.settings,
        )
        self.apply(plan)
        return plan

    def apply(self, plan: StepPlan) -> None:
        """What podium.lifecycle.runs.apply_step does, in memory."""
        self.plans.append(plan)
        if not plan.writes:
            return
        run = self.run
        changes: dict[str, Any] = {"version": run.version + 1}
        if plan.start:
            changes.update(status=RunStatus.RUNNING, started_at=utcnow())
        if plan.answer is not None:
            changes.update(
                status=RunStatus.RUNNING, awaiting={**(run.awaiting or {}), "answer": plan.answer}
            )
        if plan.pattern:
            changes["pattern"] = plan.pattern
        if plan.request_class:
            changes["request_class"] = plan.request_class
        if plan.hold:
            changes["status"] = RunStatus.BUDGET_HOLD
        changes["guards"] = (*run.guards, *plan.guards)
        self.decisions += plan.decisions
        for seq, outcome in plan.outcomes.items():
            self.decisions = [
                d.with_outcome(outcome) if d.seq == seq else d for d in self.decisions
            ]
        for message in plan.messages:
            if message.thread_id == run.thread_id:
                self.world.say(message.kind, message.content, message.agent)
        for call in plan.calls:
            self.calls.append(
                CallView(
                    id=call.id,
                    run_id=run.id,
                    tenant_id=run.tenant_id,
                    agent=call.agent,
                    pool=call.pool,
                    status=CallStatus.PENDING,
                    role=call.role,
                    step_index=call.step_index,
                    decision_seq=call.decision_seq,
                    thread_id=call.sub_thread.id if call.sub_thread else call.thread_id,
                    parent_call_id=call.parent_call_id,
                    depth=call.depth,
                    task=call.task,
                    context_mode=call.context_mode,
                    params=call.params,
                    output=None,
                    error=None,
                    control=None,
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=0.0,
                    created_at=utcnow(),
                )
            )
        cursor = plan.context.cursor_seq
        if plan.question is not None:
            cursor = self.world.say(EventKind.AGENT_MESSAGE, plan.question.text, "orchestrator")
            history = [*(run.awaiting or {}).get("history", []), plan.question.text]
            changes.update(
                status=RunStatus.AWAITING_INPUT,
                awaiting={"question": plan.question.text, "asked_seq": cursor, "history": history},
            )
        self.context = dataclasses.replace(
            self.context,
            cursor_seq=cursor if cursor is not None else self.context.cursor_seq,
            tokens_used=self.context.tokens_used + plan.context.tokens_added,
            summary=plan.context.summary
            if plan.context.summarized_through_seq is not None
            else self.context.summary,
            summarized_through_seq=plan.context.summarized_through_seq
            or self.context.summarized_through_seq,
        )
        if plan.end is not None:
            self.calls = [
                dataclasses.replace(c, status=CallStatus.CANCELLED) if c.in_flight else c
                for c in self.calls
            ]
            changes.update(status=plan.end.status)
            if plan.end.output is not None:
                self.output = plan.end.output
            self.end = plan.end
        self.run = dataclasses.replace(run, **changes)

    def finish_call(
        self,
        call: CallView,
        output: str = "done",
        *,
        status: CallStatus = CallStatus.SUCCEEDED,
        control: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        finished = dataclasses.replace(
            call,
            status=status,
            output=output,
            control=control,
            error=error,
            input_tokens=10,
            output_tokens=5,
        )
        self.calls = [finished if c.id == call.id else c for c in self.calls]
        if status == CallStatus.SUCCEEDED and control is None and call.thread_id == "thread":
            self.world.say(EventKind.AGENT_MESSAGE, output, call.agent)

    def open_calls(self) -> list[CallView]:
        return [c for c in self.calls if c.in_flight]

    def drive(
        self,
        answer: Callable[[CallView], str] = lambda c: f"{c.agent} did {c.role} {c.step_index}",
        max_steps: int = 50,
    ) -> None:
        """Step and complete calls until the run ends."""
        self.step()
        for _ in range(max_steps):
            if self.run.terminal:
                return
            pending = self.open_calls()
            if not pending:
                raise AssertionError(f"run stuck in {self.run.status} with nothing in flight")
            for call in pending:
                self.finish_call(call, answer(call))
                self.step()
        raise AssertionError("run did not end")
