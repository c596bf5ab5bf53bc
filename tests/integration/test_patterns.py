"""Each execution pattern end to end over HTTP against the real services: the thread and
GET /v1/runs/{id}/orchestration show the expected agent calls and decisions."""

from __future__ import annotations

import concurrent.futures

from tests.support.inspect import calls_of, finished, roles
from tests.support.stack import wait_for_run


def _decisions(run):
    return run["orchestration"]["decisions"]


def _agent_messages(client, thread_id):
    return [
        m for m in client.messages(thread_id, limit=500)["data"] if m["kind"] == "agent_message"
    ]


def test_direct_chosen_by_the_orchestrator_agent(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "What is a message queue?")
    assert run["status"] == "completed"
    [decision] = _decisions(run)
    assert decision["source"] == "orchestrator agent"
    assert decision["dimensions"]["pattern"] == "direct"
    assert decision["rationale"]
    assert decision["input_tokens"] > 0
    assert decision["fallback"] is None
    assert roles(calls_of(store, run["id"])) == [("answer", "assistant")]


def test_critic_loop_revises_until_approved(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Write a retry helper [t:decide-critic]")
    assert run["status"] == "completed"
    [decision] = _decisions(run)
    dims = decision["dimensions"]
    assert (dims["pattern"], dims["agent"]) == ("critic_loop", "coder")
    assert dims["parameters"] == {"temperature": 0.2, "max_output_tokens": 300}
    assert "[choose_pattern]" in decision["rationale"]
    assert "[route_to_agent]" in decision["rationale"]
    calls = calls_of(store, run["id"])
    assert roles(calls) == [
        ("producer", "coder"),
        ("critic", "critic"),
        ("producer", "coder"),
        ("critic", "critic"),
    ]
    assert calls[1]["output"].startswith("REVISE")
    assert calls[3]["output"].startswith("APPROVED")
    assert run["output"] == calls[2]["output"]  # the revised draft is the answer
    assert decision["outcome"]["note"] == "approved after 2 review(s)"
    assert [m["agent"] for m in _agent_messages(t.client, thread["id"])] == [
        "coder",
        "critic",
        "coder",
        "critic",
    ]


def test_plan_execute_runs_each_step_with_checkpoint_decisions(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Migrate our queue [t:decide-plan]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert roles(calls) == [("planner", "planner")] + [("executor", "assistant")] * 3
    assert [c["step_index"] for c in calls[1:]] == [0, 1, 2]
    decisions = _decisions(run)
    assert [d["dimensions"]["kind"] for d in decisions] == ["plan", "checkpoint", "checkpoint"]
    assert [d["dimensions"]["checkpoint"] for d in decisions[1:]] == [
        "after_step_1",
        "after_step_2",
    ]
    assert all(d["dimensions"]["action"] == "continue" and d["rationale"] for d in decisions[1:])
    assert "Step 3: Check the draft against the goal." in run["output"]


def test_plan_execute_can_stop_early_at_a_checkpoint(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Short one [t:decide-plan] [t:plan-stop]")
    assert run["status"] == "completed"
    assert roles(calls_of(store, run["id"])) == [("planner", "planner"), ("executor", "assistant")]
    assert _decisions(run)[-1]["dimensions"]["action"] == "finish"


def test_pipeline_passes_each_output_on(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Explain backpressure [t:decide-pipeline]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert roles(calls) == [("stage", "researcher"), ("stage", "coder"), ("stage", "assistant")]
    assert run["output"] == calls[-1]["output"]
    assert _decisions(run)[0]["dimensions"]["team"] == ["researcher", "coder", "assistant"]


def test_handoff_redirects_with_full_context(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Fix my SQL [t:decide-handoff] [t:handoff]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert [(c["agent"], (c["result"] or {}).get("control")) for c in calls] == [
        ("assistant", "handoff"),
        ("coder", None),
    ]
    assert calls[1]["parent_call_id"] == calls[0]["id"]
    decisions = _decisions(run)
    assert [d["source"] for d in decisions] == ["orchestrator agent", "agent handoff"]
    assert decisions[1]["dimensions"]["agent"] == "coder"
    assert "This needs a coder" in decisions[1]["rationale"]
    # The thread shows the handoff marker and only the coder's answer.
    kinds = [(m["kind"], m["agent"]) for m in t.client.messages(thread["id"])["data"]]
    assert kinds == [
        ("user_message", None),
        ("delegation", "assistant"),
        ("agent_message", "coder"),
    ]


def test_handoff_ping_pong_is_stopped(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Whose job? [t:decide-handoff] [t:pingpong]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    # assistant → coder → assistant → (coder again would repeat assistant→coder): stopped.
    assert [c["agent"] for c in calls] == ["assistant", "coder", "assistant", "coder"]
    assert (calls[-1]["result"] or {}).get("control") is None
    assert [g["guard"] for g in run["guards"]] == ["handoff_pingpong"]


def test_parallel_team_of_five_gives_five_members_and_one_merge_50_times(make_tenant, store):
    t = make_tenant("team")
    threads = [t.client.create_thread()["id"] for _ in range(50)]

    def one(thread_id):
        accepted = t.client.create_run(
            thread_id, "Assess this design [t:decide-team5] [sim latency_ms=0]"
        )
        return wait_for_run(t.client, accepted["id"], timeout=120)

    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        runs = list(pool.map(one, threads))
    assert [r["status"] for r in runs] == ["completed"] * 50
    for run in runs:
        calls = calls_of(store, run["id"])
        members = [c for c in calls if c["role"] == "member"]
        merges = [c for c in calls if c["role"] == "merge"]
        assert len(members) == 5 and len(merges) == 1, roles(calls)
        assert {c["agent"] for c in members} == {
            "researcher",
            "coder",
            "critic",
            "assistant",
            "planner",
        }
        assert len({c["thread_id"] for c in members}) == 5  # each in its own sub-thread
        assert all(c["thread_id"] != run["thread_id"] for c in members)
        assert merges[0]["agent"] == "synthesizer"
        assert run["output"] == merges[0]["output"]


def test_parallel_team_partial_failure_is_reported(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Split it [t:member-fails]", pattern="parallel_team")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    failed = [c for c in calls if c["status"] == "failed"]
    assert [c["agent"] for c in failed] == ["coder"]
    merge = next(c for c in calls if c["role"] == "merge")
    assert merge["status"] == "succeeded"
    assert run["orchestration"]["decisions"][0]["outcome"]["note"] == "1 of 3 members failed"


def test_parallel_team_vote_merges_without_an_llm_call(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Pick one [t:decide-vote]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert [c["role"] for c in calls] == ["member"] * 3
    planner_answer = calls[0]["output"]
    assert run["output"] == planner_answer  # two planners agree
    last = _agent_messages(t.client, thread["id"])[-1]
    assert (last["agent"], last["content"]) == ("team", planner_answer)


def test_a_seventh_pattern_added_by_config_and_one_class(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "Is this safe?", pattern="second_opinion")
    assert run["status"] == "completed"
    assert roles(calls_of(store, run["id"])) == [("answer", "assistant"), ("opinion", "critic")]
    assert "Second opinion:" in run["output"]


def test_agent_tools_loop_calculator(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "What is six times seven? [t:calc]")
    assert run["status"] == "completed"
    assert run["output"] == "The calculator says 42."
    [call] = calls_of(store, run["id"])
    assert call["tool_steps"] == 1
    events = t.client.messages(thread["id"])["data"]
    assert [(e["kind"], e["content"]) for e in events if e["kind"].startswith("tool")] == [
        ("tool_request", 'calculator({"expression": "6 * 7"})'),
        ("tool_response", "42"),
    ]


def test_delegation_as_a_tool(make_tenant, store):
    t = make_tenant()
    t.client.put_agent(
        "boss",
        {"description": "delegates research", "instructions": "Delegate.", "tools": ["delegate"]},
    )
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "@boss summarise queues [t:delegate]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert [(c["role"], c["agent"], c["depth"]) for c in calls] == [
        ("answer", "boss", 0),
        ("delegate", "researcher", 1),
        ("answer", "boss", 0),
    ]
    assert calls[1]["parent_call_id"] == calls[0]["id"] == calls[2]["parent_call_id"]
    assert calls[1]["thread_id"] != run["thread_id"]  # the sub-task ran in a sub-thread
    assert run["output"] == calls[2]["output"]


def test_delegation_depth_guard(make_tenant, store):
    t = make_tenant()
    t.client.put_agent(
        "deep",
        {"description": "recurses", "instructions": "Delegate deeper.", "tools": ["delegate"]},
    )
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "@deep go [t:deep]")
    assert run["status"] == "completed"
    calls = calls_of(store, run["id"])
    assert max(c["depth"] for c in calls) == 5  # the delegation depth guard: ≤ 5
    assert [g["guard"] for g in run["guards"]] == ["delegation_depth"]


def test_ask_user_waits_for_the_next_message(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "Show me an example [t:ask]")
    run = wait_for_run_status(t.client, accepted["id"], "awaiting_input")
    assert run["question"] == "Which language should the example use?"
    messages = t.client.messages(thread["id"])["data"]
    assert (messages[-1]["agent"], messages[-1]["content"]) == ("orchestrator", run["question"])
    answered = t.client.create_run(thread["id"], "Python, please")
    assert answered["id"] == accepted["id"]  # the message answered the waiting run
    run = wait_for_run(t.client, accepted["id"])
    assert run["status"] == "completed"
    decisions = t.client.orchestration(accepted["id"])["decisions"]
    assert next(d["dimensions"].get("question") for d in decisions) == run_question(decisions)
    assert decisions[1]["dimensions"]["agent"] == "coder"
    assert roles(calls_of(store, accepted["id"])) == [("answer", "coder")]


def test_finish_at_the_first_decision(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "hi [t:finish]")
    assert run["status"] == "completed"
    assert run["output"] == "Nothing to do: this was already answered."
    assert calls_of(store, run["id"]) == []


def run_question(decisions):
    return decisions[0]["dimensions"]["question"]


def wait_for_run_status(client, run_id, status, timeout=30):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run["status"] == status:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {status}")
