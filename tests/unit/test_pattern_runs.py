"""Every pattern driven to its end in-process (fake model, in-memory run), and what is decided
is what runs: each agent call carries exactly the model, temperature, max tokens and tool
allow-list of the decision it executes, team members, steps, rounds, handoffs, delegations and
checkpoint re-routes included."""

from __future__ import annotations

from typing import Any

import pytest

from podium.decisions import Decision, DecisionKind, DecisionSource
from podium.lifecycle import CallView
from podium.store import CallStatus, RunStatus
from tests.support.fake_run import FakeModel, FakeRun, default_roster, tool

PARAMS = tool(
    "set_agent_parameters",
    "Creative, short, calculator only.",
    temperature=1.7,
    max_output_tokens=321,
    model="big-model",
    tools=["calculator"],
)


def expected_params(run: FakeRun, call: CallView) -> dict[str, Any]:
    decision = next(d for d in run.decisions if d.seq == call.decision_seq)
    agent = run.world.roster_.agents[call.agent]
    decided = decision.dimensions.parameters
    own = [t for t in agent.tools if t not in ("handoff", "delegate")]
    return {
        "model": decided.model or agent.model,
        "temperature": decided.temperature if decided.temperature is not None else 0.0,
        "max_output_tokens": decided.max_output_tokens or agent.max_output_tokens,
        "tools": own if decided.tools is None else [t for t in own if t in decided.tools],
    }


def assert_decided_is_executed(run: FakeRun) -> None:
    assert run.calls
    for call in run.calls:
        got = {k: call.params[k] for k in ("model", "temperature", "max_output_tokens", "tools")}
        assert got == expected_params(run, call), (call.role, call.agent)
        assert call.params["model"] == "big-model" and call.params["temperature"] == 1.7


def plan_of(run: FakeRun) -> Decision:
    return next(d for d in run.decisions if d.kind == DecisionKind.PLAN)


def first(*calls: Any) -> FakeModel:
    return FakeModel(by_request=lambda r: list(calls) if r.metadata["phase"] == "first" else [])


def test_direct():
    run = FakeRun("Hi", first(tool("choose_pattern", pattern="direct"), PARAMS))
    run.drive()
    assert [(c.role, c.agent) for c in run.calls] == [("answer", "assistant")]
    assert run.output == "assistant did answer 0"
    assert_decided_is_executed(run)
    assert run.calls[0].params["tools"] == ["calculator"]


def test_critic_loop_rounds_run_with_the_decided_parameters():
    run = FakeRun(
        "Write it",
        first(
            tool("choose_pattern", pattern="critic_loop"),
            tool("compose_team", members=["coder", "critic"]),
            PARAMS,
        ),
    )
    reviews = iter(["REVISE: more", "APPROVED"])
    run.drive(answer=lambda c: next(reviews) if c.role == "critic" else f"draft {c.step_index}")
    assert [(c.role, c.agent) for c in run.calls] == [
        ("producer", "coder"),
        ("critic", "critic"),
        ("producer", "coder"),
        ("critic", "critic"),
    ]
    assert run.output == "draft 1" and run.end.note == "approved after 2 review(s)"
    assert_decided_is_executed(run)


def test_parallel_team_members_and_merge_run_with_the_decided_parameters():
    run = FakeRun(
        "Compare",
        first(
            tool("choose_pattern", pattern="parallel_team"),
            tool("compose_team", members=["researcher", "coder", "critic"]),
            PARAMS,
        ),
    )
    run.drive()
    assert [(c.role, c.agent) for c in run.calls] == [
        ("member", "researcher"),
        ("member", "coder"),
        ("member", "critic"),
        ("merge", "synthesizer"),
    ]
    assert all(c.thread_id != "thread" for c in run.calls[:3])  # clean sub-threads
    assert_decided_is_executed(run)


@pytest.mark.parametrize(("merge", "output"), [("vote", "same"), ("concat", "[planner]\nsame")])
def test_parallel_team_merges_without_an_agent(merge, output):
    run = FakeRun(
        "Vote",
        first(
            tool("choose_pattern", pattern="parallel_team"),
            tool("compose_team", members=["planner", "planner"], merge=merge),
        ),
    )
    run.drive(answer=lambda c: "same")
    assert [c.role for c in run.calls] == ["member", "member"]
    assert run.output.startswith(output)
    assert run.end.answer_as == "team"


def test_parallel_team_reports_a_failed_member_and_fails_only_if_all_did():
    run = FakeRun(
        "Compare",
        first(
            tool("choose_pattern", pattern="parallel_team"),
            tool("compose_team", members=["researcher", "coder"], merge="concat"),
        ),
    )
    run.step()
    run.finish_call(run.calls[0], "facts")
    run.finish_call(run.calls[1], "", status=CallStatus.FAILED, error={"code": "x"})
    plan = run.step()
    assert plan.end.status == RunStatus.COMPLETED and plan.end.note == "1 of 2 members failed"


def test_pipeline_stages_run_in_the_decided_order_with_the_decided_parameters():
    run = FakeRun(
        "Explain",
        first(
            tool("choose_pattern", pattern="pipeline"),
            tool("compose_team", members=["researcher", "coder", "assistant"]),
            PARAMS,
        ),
    )
    run.drive()
    assert [c.agent for c in run.calls] == ["researcher", "coder", "assistant"]
    assert "Output of the previous stage (coder)" in run.calls[2].task
    assert_decided_is_executed(run)


def test_plan_execute_checkpoints_continue_finish_or_reroute_with_their_parameters():
    later = iter(
        [
            [tool("choose_pattern", pattern="plan_execute"), PARAMS],  # continue
            [tool("route_to_agent", agent="coder")],  # re-route, keeping the parameters
        ]
    )

    def reply(request):
        if request.metadata["phase"] == "first":
            return [tool("choose_pattern", pattern="plan_execute"), PARAMS]
        return next(later)

    run = FakeRun("Migrate", FakeModel(by_request=reply))
    run.drive(answer=lambda c: "1. a\n2. b\n3. c" if c.role == "planner" else "ok")
    assert [(c.role, c.agent) for c in run.calls] == [
        ("planner", "planner"),
        ("executor", "assistant"),
        ("executor", "assistant"),
        ("executor", "coder"),
    ]
    checkpoints = [d for d in run.decisions if d.kind == DecisionKind.CHECKPOINT]
    assert [d.dimensions.action for d in checkpoints] == ["continue", "reroute"]
    assert all(d.dimensions.pattern == "plan_execute" for d in checkpoints)
    assert [c.decision_seq for c in run.calls] == [1, 1, 2, 3]
    assert_decided_is_executed(run)


def test_plan_execute_stops_early_when_a_checkpoint_finishes():
    later = [tool("finish", "Done already.")]
    run = FakeRun(
        "Short",
        FakeModel(
            by_request=lambda r: (
                [tool("choose_pattern", pattern="plan_execute")]
                if r.metadata["phase"] == "first"
                else later
            )
        ),
    )
    run.drive(answer=lambda c: "1. a\n2. b" if c.role == "planner" else "ok")
    assert [c.role for c in run.calls] == ["planner", "executor"]
    assert run.end.note == "stopped after step 1"


def test_handoff_is_a_decision_and_the_target_runs_with_the_same_parameters():
    run = FakeRun("Fix my SQL", first(tool("choose_pattern", pattern="handoff"), PARAMS))
    run.step()
    [lead] = run.calls
    assert lead.params["control_tools"] == ["handoff"]
    run.finish_call(lead, "", control={"control": "handoff", "agent": "coder", "rationale": "SQL"})
    plan = run.step()
    handoff = plan.decisions[0]
    assert handoff.source == DecisionSource.HANDOFF and handoff.kind == DecisionKind.HANDOFF
    assert (handoff.dimensions.agent, handoff.dimensions.pattern) == ("coder", "handoff")
    [target] = plan.calls
    assert (target.agent, target.parent_call_id, target.decision_seq) == (
        "coder",
        lead.id,
        handoff.seq,
    )
    assert plan.messages[0].content == "assistant hands the request to coder: SQL"
    run.finish_call(run.calls[-1], "fixed")
    assert run.step().end.output == "fixed"
    assert_decided_is_executed(run)


def test_handoff_ping_pong_is_stopped_and_the_last_agent_answers():
    run = FakeRun("Whose job?", first(tool("choose_pattern", pattern="handoff")))
    run.step()
    for to in ("coder", "assistant", "coder"):
        run.finish_call(run.open_calls()[0], "", control={"control": "handoff", "agent": to})
        plan = run.step()
    assert [g["guard"] for g in plan.guards] == ["handoff_pingpong"]
    [last] = plan.calls
    assert last.agent == "coder" and last.params["control_tools"] == []
    assert "Handoffs were stopped" in last.task


def test_a_delegated_sub_task_runs_under_the_delegating_decision():
    world_roster = default_roster(assistant={"tools": ("calculator", "delegate")})
    run = FakeRun("Research then answer", first(tool("choose_pattern", pattern="direct"), PARAMS))
    run.world.roster_ = world_roster
    run.step()
    [lead] = run.calls
    assert lead.params["control_tools"] == ["delegate"]
    run.finish_call(
        lead, "", control={"control": "delegate", "agent": "researcher", "task": "Find facts"}
    )
    plan = run.step()
    [sub] = plan.calls
    assert (sub.role, sub.agent, sub.depth, sub.sub_thread.task) == (
        "delegate",
        "researcher",
        1,
        "Find facts",
    )
    run.finish_call(run.calls[-1], "three facts")
    plan = run.step()
    [again] = plan.calls
    assert again.agent == "assistant" and "researcher answered:\nthree facts" in again.task
    run.finish_call(run.calls[-1], "the answer")
    assert run.step().end.output == "the answer"
    assert_decided_is_executed(run)


def test_an_unknown_agent_fails_the_run_clearly():
    run = FakeRun("Hi", FakeModel(), pattern="parallel_team")
    run.world.roster_ = default_roster()
    del run.world.roster_.agents["coder"]
    plan = run.step()
    assert plan.end.status == RunStatus.FAILED
    assert plan.end.error == {
        "code": "unknown_agent",
        "message": "agent 'coder' is not defined for this tenant",
    }


def test_a_decided_tool_the_agent_lacks_is_said_not_dropped_silently():
    params = tool("set_agent_parameters", tools=["current_time"])
    run = FakeRun(
        "Plan",
        first(
            tool("choose_pattern", pattern="direct"),
            tool("route_to_agent", agent="planner"),
            params,
        ),
    )
    plan = run.step()
    assert (
        plan.decisions[0].dimensions.note
        == "tools not available to: planner lacks ['current_time']"
    )
    assert plan.calls[0].params["tools"] == []
    assert plan.calls[0].params["tools_not_available"] == ["current_time"]
