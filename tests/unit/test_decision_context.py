"""What the Orchestrator agent sees: the history folded within its budget, a long delta
summarised rather than cut, and earlier decisions' outcomes as they stand."""

from __future__ import annotations

import random

import pytest

from podium.decisions import Decision, DecisionOutcome, DecisionSource, Dimensions
from podium.lifecycle import CallView
from podium.store import CallStatus, EventKind, utcnow
from podium_orchestrator.decision_context import (
    DELTA_EVENTS,
    DELTA_SUMMARY_CHARS,
    EventView,
    delta_context,
    estimate_tokens,
    history,
    outcome_so_far,
)


def decision(seq: int, pattern: str = "plan_execute", rationale: str = "why") -> Decision:
    return Decision(
        seq=seq,
        dimensions=Dimensions(pattern=pattern, agent=f"agent-{seq}"),
        source=DecisionSource.ORCHESTRATOR,
        rationale=rationale,
    )


def call(seq: int, status: CallStatus) -> CallView:
    return CallView(
        id=f"c{seq}-{status}",
        run_id="r",
        tenant_id="t",
        agent="a",
        pool="default",
        status=status,
        role="executor",
        step_index=0,
        decision_seq=seq,
        thread_id="th",
        parent_call_id=None,
        depth=0,
        task=None,
        context_mode="thread",
        params={},
        output=None,
        error=None,
        control=None,
        input_tokens=0,
        output_tokens=0,
        cost_usd=0.0,
        created_at=utcnow(),
    )


def test_the_history_fits_its_budget_of_50_tokens():
    decisions = [decision(i) for i in range(1, 9)]
    folded = history(None, 0, decisions, [], 50)
    assert estimate_tokens(folded.text) <= 50
    assert folded.summarized_through_seq is not None and folded.summary
    assert "#8" in folded.text  # the newest decision is kept in full


@pytest.mark.parametrize("seed", range(40))
def test_the_history_never_exceeds_its_budget(seed):
    rng = random.Random(seed)
    budget = rng.choice([1, 5, 20, 50, 120, 600])
    decisions = [
        decision(
            i, pattern=rng.choice(["direct", "plan_execute"]), rationale="x" * rng.randint(1, 500)
        )
        for i in range(1, rng.randint(1, 40))
    ]
    summary = "s" * rng.randint(0, 5000) if rng.random() < 0.3 else None
    folded = history(summary, 0, decisions, [], budget)
    assert estimate_tokens(folded.text) <= max(budget, 1)


def test_folding_continues_from_the_earlier_summary():
    decisions = [decision(i) for i in range(1, 6)]
    first = history(None, 0, decisions, [], 60)
    assert first.summarized_through_seq
    again = history(first.summary, first.summarized_through_seq, decisions, [], 60)
    assert again.text.startswith(f"Summary of earlier decisions: {first.summary}")
    # Nothing newly folded: the context's summary is left as it is.
    assert (
        again.summarized_through_seq is None
        or again.summarized_through_seq > first.summarized_through_seq
    )


def test_a_history_within_budget_is_not_folded():
    folded = history(None, 0, [decision(1), decision(2)], [], 600)
    assert folded.summary is None and folded.summarized_through_seq is None
    assert folded.text.count("\n") == 1


def test_outcomes_are_read_as_they_stand_when_the_decision_is_made():
    d = decision(1)
    assert outcome_so_far(d, []) == "no agent call yet"
    calls = [call(1, CallStatus.SUCCEEDED), call(1, CallStatus.RUNNING), call(2, CallStatus.FAILED)]
    assert outcome_so_far(d, calls) == "2 call(s): 1 running, 1 succeeded"
    done = d.with_outcome(DecisionOutcome(status="completed"))
    assert outcome_so_far(done, calls) == "completed"
    assert "→ 2 call(s): 1 running, 1 succeeded" in history(None, 0, [d], calls, 600).text


def events(n: int) -> list[EventView]:
    return [
        EventView(
            i,
            EventKind.AGENT_MESSAGE if i % 2 else EventKind.USER_MESSAGE,
            "coder",
            f"message {i} " + "z" * 200,
        )
        for i in range(1, n + 1)
    ]


def test_a_short_delta_is_shown_whole():
    delta = delta_context(events(3), 3)
    assert [m.content[:9] for m in delta.messages] == ["message 1", "message 2", "message 3"]
    assert delta.newest == 3


def test_a_long_delta_is_summarised_not_cut():
    delta = delta_context(events(30), 30)
    summary, *shown = delta.messages
    assert len(shown) == DELTA_EVENTS and shown[-1].content.startswith("message 30")
    assert summary.role == "system"
    assert summary.content.startswith("18 earlier message(s) since your last decision")
    # The newest of the older messages get a line each; the oldest are counted by speaker.
    assert "- 7 older message(s) not shown (4 from coder, 3 from user)" in summary.content
    assert "- user: message 8 " in summary.content and "- user: message 18 " in summary.content
    assert len(summary.content) <= DELTA_SUMMARY_CHARS
    assert delta.newest == 30


def test_events_too_many_to_load_are_still_counted():
    delta = delta_context(events(72)[-72:], 500)
    summary = delta.messages[0].content
    assert summary.startswith("488 earlier message(s)")
    assert "older message(s) not shown" in summary
