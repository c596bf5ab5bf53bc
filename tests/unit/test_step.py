"""The orchestrator's step in-process, with a fake model and an in-memory run: decisions (the
Orchestrator agent's, forced, fallback, rejected, learned), the step's order (cancel, deadline,
thread, questions, caps), and that an answer paid for is never asked twice."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from podium.decisions import CheckpointAction, DecisionKind, DecisionSource
from podium.llm import ProviderError, ProviderErrorKind
from podium.settings import Settings
from podium.store import CallStatus, EventKind, RunStatus, utcnow
from podium_orchestrator.decider import Decider
from podium_orchestrator.policy import Stat
from tests.support.fake_run import FakeModel, FakeRun, FakeWorld, tool


def test_the_orchestrator_agents_decision_is_recorded_and_started():
    model = FakeModel(
        [
            tool("choose_pattern", "Quality matters.", pattern="critic_loop"),
            tool("route_to_agent", "It is code.", agent="coder"),
            tool("set_agent_parameters", "Short drafts.", temperature=0.2, max_output_tokens=300),
        ]
    )
    run = FakeRun("Write a retry helper", model)
    plan = run.step()
    assert plan.start and plan.pattern == "critic_loop"
    [decision] = plan.decisions
    assert decision.seq == 1 and decision.source == DecisionSource.ORCHESTRATOR
    dims = decision.dimensions
    assert (dims.pattern, dims.agent) == ("critic_loop", "coder")
    assert (dims.parameters.temperature, dims.parameters.max_output_tokens) == (0.2, 300)
    assert decision.rationale.startswith("[choose_pattern] Quality matters.")
    assert decision.usage.tokens == 120
    [call] = plan.calls
    assert (call.agent, call.role, call.decision_seq) == ("coder", "producer", 1)
    assert (call.params["temperature"], call.params["max_output_tokens"]) == (0.2, 300)
    assert plan.context.cursor_seq == 1 and plan.context.tokens_added == 120
    # The first decision saw the request and nothing later.
    assert "Write a retry helper" in model.requests[0].messages[-1].content


def test_a_forced_pattern_needs_no_llm_call():
    run = FakeRun("Explain backpressure", FakeModel(), pattern="pipeline", agent="coder")
    plan = run.step()
    [decision] = plan.decisions
    assert decision.source == DecisionSource.FORCED
    assert (decision.dimensions.pattern, decision.dimensions.agent) == ("pipeline", "coder")
    assert decision.usage.tokens == 0 and run.model.requests == []
    assert [c.agent for c in plan.calls] == ["researcher"]  # the default sequence


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ([tool("choose_pattern", pattern="swarm")], "invalid_output: unknown pattern 'swarm'"),
        ("I think direct is best.", "invalid_output: no tool was called"),
        (ProviderError(ProviderErrorKind.SERVER, "boom", provider="fake"), "provider_error"),
        (
            [tool("set_agent_parameters", temperature=7)],
            "invalid_output: set_agent_parameters: temperature",
        ),
    ],
)
def test_an_unusable_answer_falls_back_with_its_reason(reply, reason):
    run = FakeRun("Hello", FakeModel(reply))
    plan = run.step()
    [decision] = plan.decisions
    assert decision.source == DecisionSource.FALLBACK
    assert decision.fallback_reason.startswith(reason)
    assert (decision.dimensions.pattern, decision.dimensions.agent) == ("direct", "assistant")
    assert [c.agent for c in plan.calls] == ["assistant"]


def test_a_team_its_pattern_cannot_run_is_rejected_with_the_reason():
    model = FakeModel(
        [
            tool("choose_pattern", pattern="direct"),
            tool("compose_team", members=["coder", "critic"]),
        ]
    )
    plan = FakeRun("Hello", model).step()
    rejected, fallback = plan.decisions
    assert rejected.outcome.status == "rejected"
    assert "cannot run the team ['coder', 'critic']" in rejected.outcome.reason
    assert fallback.source == DecisionSource.FALLBACK
    assert fallback.fallback_reason.startswith("rejected: direct runs one lead agent")
    assert [c.decision_seq for c in plan.calls] == [fallback.seq]


def test_a_one_member_pipeline_team_is_honoured():
    model = FakeModel(
        [tool("choose_pattern", pattern="pipeline"), tool("compose_team", members=["coder"])]
    )
    run = FakeRun("Refactor this", model)
    run.drive()
    assert [(c.role, c.agent) for c in run.calls] == [("stage", "coder")]
    assert run.run.status == RunStatus.COMPLETED


def test_a_cancelled_run_ends_and_its_open_calls_are_cancelled():
    run = FakeRun("Hello", FakeModel([tool("choose_pattern", pattern="direct")]))
    run.step()
    run.run = dataclasses.replace(run.run, cancel_requested=True)
    plan = run.step()
    assert plan.end.status == RunStatus.CANCELLED
    assert plan.outcomes == {1: plan.outcomes[1]} and plan.outcomes[1].status == "cancelled"
    assert all(c.status == CallStatus.CANCELLED for c in run.calls)


def test_a_run_past_its_deadline_fails_with_the_guard():
    run = FakeRun("Hello", FakeModel())
    run.run = dataclasses.replace(run.run, deadline_at=utcnow() - timedelta(seconds=1))
    plan = run.step()
    assert plan.end.status == RunStatus.FAILED
    assert plan.end.error["code"] == "deadline_exceeded"
    assert [g["guard"] for g in plan.guards] == ["deadline"]


def test_a_run_waits_for_its_thread_without_deciding():
    run = FakeRun("Hello", FakeModel())
    run.thread_free = False
    plan = run.step()
    assert not plan.writes and run.model.requests == []


def test_ask_user_waits_for_the_answer_then_decides_again():
    model = FakeModel(
        [tool("ask_user", question="Which language?")],
        [tool("choose_pattern", pattern="direct"), tool("route_to_agent", agent="coder")],
    )
    run = FakeRun("Write an example", model)
    plan = run.step()
    assert plan.question.text == "Which language?" and not plan.calls
    assert run.run.status == RunStatus.AWAITING_INPUT
    assert not run.step().writes  # no answer yet
    run.world.say(EventKind.USER_MESSAGE, "Python")
    plan = run.step()
    assert plan.answer == "Python"
    assert plan.decisions[0].dimensions.agent == "coder"
    assert "You asked the user: Which language?" in model.requests[1].messages[-1].content
    assert "Python" in model.requests[1].messages[1].content  # the delta shows the answer
    assert [c.agent for c in plan.calls] == ["coder"]


def test_questions_are_capped():
    run = FakeRun("Write", FakeModel(by_request=lambda r: [tool("ask_user", question="Why?")]))
    for answer in ("a", "b", "c"):
        run.step()
        assert run.run.status == RunStatus.AWAITING_INPUT
        run.world.say(EventKind.USER_MESSAGE, answer)
    plan = run.step()
    assert [g["guard"] for g in plan.guards] == ["question_cap"]
    assert plan.calls and run.run.status == RunStatus.RUNNING


def test_finish_with_an_answer_completes_without_an_agent_call():
    run = FakeRun("Hi", FakeModel([tool("finish", answer="Hello to you too.")]))
    plan = run.step()
    assert plan.end.status == RunStatus.COMPLETED
    assert (plan.end.output, plan.end.answer_as) == ("Hello to you too.", "orchestrator")
    assert plan.decisions[0].outcome.status == "completed" and not plan.calls


def test_an_exhausted_budget_falls_back_without_asking_the_model():
    run = FakeRun("Hello", FakeModel())
    run.context = dataclasses.replace(run.context, tokens_used=run.context.token_budget)
    plan = run.step()
    assert plan.decisions[0].fallback_reason.startswith("budget_exhausted")
    assert run.model.requests == []


def test_the_learned_policy_overrules_a_pattern_with_a_poor_record():
    world = FakeWorld(
        record={
            "chat": [
                Stat("pattern", "critic_loop", good=1, samples=20),
                Stat("pattern", "direct", good=18, samples=20),
            ]
        }
    )
    settings = Settings(llm_provider="simulated", policy_min_samples=5, policy_threshold=0.5)
    model = FakeModel([tool("choose_pattern", pattern="critic_loop")])
    plan = FakeRun("Hello there", model, world=world, settings=settings).step()
    chosen, learned = plan.decisions
    assert chosen.dimensions.guidance and "critic_loop" in chosen.dimensions.guidance
    assert learned.source == DecisionSource.POLICY
    assert (learned.dimensions.pattern, learned.dimensions.overruled) == ("direct", "critic_loop")
    assert [c.decision_seq for c in plan.calls] == [learned.seq]


def test_a_checkpoint_records_the_actual_pattern_and_its_parameters_reach_the_next_step():
    replies = {
        "first": [
            tool("choose_pattern", pattern="plan_execute"),
            tool("set_agent_parameters", temperature=0.5),
        ],
        "later": [
            tool("choose_pattern", pattern="direct"),  # not applied at a checkpoint
            tool("route_to_agent", agent="coder"),
            tool("set_agent_parameters", max_output_tokens=200),
        ],
    }
    model = FakeModel(by_request=lambda r: replies[r.metadata["phase"]])
    run = FakeRun("Migrate", model)
    run.drive(answer=lambda c: "1. one\n2. two" if c.role == "planner" else "ok")
    _, checkpoint = run.decisions
    assert checkpoint.kind == DecisionKind.CHECKPOINT
    assert checkpoint.dimensions.pattern == "plan_execute"
    assert "choose_pattern direct is not applied" in checkpoint.dimensions.note
    assert checkpoint.dimensions.action == CheckpointAction.REROUTE
    executors = [c for c in run.calls if c.role == "executor"]
    assert [c.agent for c in executors] == ["assistant", "coder"]
    assert executors[1].decision_seq == checkpoint.seq
    assert executors[1].params["temperature"] == 0.5  # the plan's, kept
    assert executors[1].params["max_output_tokens"] == 200  # the checkpoint's
    assert run.run.status == RunStatus.COMPLETED


def test_a_decision_point_is_paid_once_and_an_unused_answer_is_superseded():
    model = FakeModel([tool("choose_pattern", pattern="direct")])
    run = FakeRun("Hello", model)
    decider = Decider(lambda: run.agent)
    decider.new_round()
    first = run.step(decider)  # planned, but suppose it lost the race to a cancel:
    run.decisions, run.calls = [], []
    run.run = dataclasses.replace(run.run, status=RunStatus.QUEUED, cancel_requested=True)
    decider.new_round()
    again = run.step(decider)
    assert len(model.requests) == 1
    assert again.end.status == RunStatus.CANCELLED and not again.calls
    assert [d.rationale for d in decider.unused()] == [first.decisions[0].rationale]


def test_caps_hold_the_run_before_a_call_that_would_break_them():
    model = FakeModel([tool("choose_pattern", pattern="critic_loop")])
    run = FakeRun("Hello", model, limits={"iterations": 1})
    run.step()
    run.finish_call(run.calls[0], "draft")
    plan = run.step()
    assert plan.hold and [g["guard"] for g in plan.guards] == ["iteration_cap"]
    assert run.run.status == RunStatus.BUDGET_HOLD and not plan.calls
