"""Thread compaction: when to compact, where to cut, and the summary itself."""

from __future__ import annotations

import pytest

from podium.llm import (
    ChatRequest,
    ChatResult,
    DeltaCallback,
    ProviderError,
    ProviderErrorKind,
    SimulatedProvider,
    Usage,
)
from podium.settings import Settings
from podium_agent_worker.compaction import (
    Entry,
    covered_range,
    estimate_tokens,
    extractive_summary,
    plan_compaction,
    summarize,
)


def msg(seq: int, tokens: int, kind: str = "user_message", role: str = "user", agent=None):
    # estimate_tokens counts 4 characters per token.
    return Entry(seq=seq, kind=kind, role=role, agent=agent, content="w" * (tokens * 4))


def test_estimate_tokens_is_a_rounded_up_quarter_of_the_characters():
    assert estimate_tokens("") == 1
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


def test_no_compaction_within_budget():
    entries = [msg(1, 40), msg(2, 30), msg(3, 30)]
    assert plan_compaction(entries, budget_tokens=100, keep_recent_tokens=50) is None
    assert plan_compaction([], budget_tokens=100, keep_recent_tokens=50) is None


def test_over_budget_keeps_the_longest_suffix_within_keep_recent():
    entries = [msg(1, 40), msg(2, 30), msg(3, 20), msg(4, 20)]
    plan = plan_compaction(entries, budget_tokens=100, keep_recent_tokens=40)
    assert plan is not None
    to_summarize, to_keep = plan
    assert [e.seq for e in to_summarize] == [1, 2]
    assert [e.seq for e in to_keep] == [3, 4]  # exactly 40: the boundary is inclusive


def test_one_token_over_keep_recent_moves_the_entry_to_the_summary():
    entries = [msg(1, 60), msg(2, 21), msg(3, 20)]
    to_summarize, to_keep = plan_compaction(entries, budget_tokens=100, keep_recent_tokens=40)
    assert ([e.seq for e in to_summarize], [e.seq for e in to_keep]) == ([1, 2], [3])


def test_the_last_entry_is_kept_even_when_it_alone_exceeds_keep_recent():
    entries = [msg(1, 50), msg(2, 500)]
    to_summarize, to_keep = plan_compaction(entries, budget_tokens=100, keep_recent_tokens=10)
    assert [e.seq for e in to_summarize] == [1]
    assert [e.seq for e in to_keep] == [2]


def test_nothing_to_summarize_means_no_plan():
    assert plan_compaction([msg(1, 500)], budget_tokens=100, keep_recent_tokens=10) is None
    # keep_recent covers everything: nothing would move into a summary.
    entries = [msg(1, 60), msg(2, 60)]
    assert plan_compaction(entries, budget_tokens=100, keep_recent_tokens=500) is None


def test_summaries_roll_up():
    summary = Entry(11, "summary", "system", None, "Summary of messages #1-#10:\n" + "s" * 200)
    entries = [summary, msg(12, 40), msg(13, 40), msg(14, 30)]
    to_summarize, to_keep = plan_compaction(entries, budget_tokens=100, keep_recent_tokens=40)
    assert to_summarize[0] is summary
    assert [e.seq for e in to_summarize] == [11, 12, 13]
    assert [e.seq for e in to_keep] == [14]
    assert covered_range(to_summarize) == (1, 13)


def test_a_lone_earlier_summary_is_not_summarised_again():
    summary = Entry(11, "summary", "system", None, "Summary of messages #1-#10:\n" + "s" * 800)
    entries = [summary, msg(12, 30)]
    assert plan_compaction(entries, budget_tokens=100, keep_recent_tokens=40) is None


def test_the_kept_part_never_starts_with_an_orphaned_tool_response():
    entries = [
        msg(1, 80),
        msg(2, 10, kind="tool_request", role="assistant", agent="ada"),
        msg(3, 10, kind="tool_response", role="tool"),
        msg(4, 10, kind="agent_message", role="assistant", agent="ada"),
    ]
    to_summarize, to_keep = plan_compaction(entries, budget_tokens=100, keep_recent_tokens=20)
    assert [e.seq for e in to_summarize] == [1, 2, 3]
    assert [e.seq for e in to_keep] == [4]


def test_plan_rejects_nonsense_budgets():
    with pytest.raises(ValueError, match="budget"):
        plan_compaction([msg(1, 1)], budget_tokens=0, keep_recent_tokens=0)


def test_settings_require_keep_recent_below_the_budget(monkeypatch):
    monkeypatch.setenv("PODIUM_AGENT_CONTEXT_BUDGET_TOKENS", "1000")
    monkeypatch.setenv("PODIUM_AGENT_KEEP_RECENT_TOKENS", "1000")
    with pytest.raises(ValueError, match="KEEP_RECENT"):
        Settings(_env_file=None)
    monkeypatch.setenv("PODIUM_AGENT_KEEP_RECENT_TOKENS", "300")
    settings = Settings(_env_file=None)
    assert (settings.agent_context_budget_tokens, settings.agent_keep_recent_tokens) == (1000, 300)
    assert settings.agent_max_tool_steps == 8


# --- summarize -----------------------------------------------------------------------------

CONVERSATION = [
    Entry(1, "user_message", "user", None, "Can we ship the release on Friday? QA is slow."),
    Entry(
        2,
        "agent_message",
        "assistant",
        "planner",
        "Friday works if QA signs off by Thursday. I will ask them.",
    ),
    Entry(3, "user_message", "user", None, "Great.\nAlso, what about the docs?"),
]


class Recording:
    """Wraps a provider and keeps the requests."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests: list[ChatRequest] = []

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        self.requests.append(request)
        return self.inner.complete(request, on_delta)


def test_summarize_with_the_simulated_provider():
    provider = Recording(SimulatedProvider())
    text, usage = summarize(provider, "simulated-1", CONVERSATION, max_tokens=200)
    assert text.startswith("Summary of messages #1-#3:\n")
    assert "[simulated" in text  # a simulated answer always says so
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    request = provider.requests[0]
    assert request.temperature == 0.0
    assert request.max_tokens == 200
    assert request.messages[0].role == "system"
    assert "faithful" in request.messages[0].content
    prompt = request.messages[1].content
    assert "#2 assistant/planner: Friday works" in prompt
    assert "#3 user: Great. Also, what about the docs?" in prompt


def test_summarize_is_deterministic():
    first = summarize(SimulatedProvider(), "simulated-1", CONVERSATION)
    assert summarize(SimulatedProvider(), "simulated-1", CONVERSATION) == first


class Failing:
    name = "failing"

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        raise ProviderError(ProviderErrorKind.SERVER, "down", provider=self.name)


class Silent:
    name = "silent"

    def complete(self, request: ChatRequest, on_delta: DeltaCallback | None = None) -> ChatResult:
        return ChatResult(
            content="  ",
            provider=self.name,
            model=request.model,
            usage=Usage(input_tokens=50, output_tokens=1),
        )


def test_summarize_falls_back_to_an_extractive_summary_when_the_provider_fails():
    text, usage = summarize(Failing(), "m", CONVERSATION)
    assert usage == Usage()
    assert text.splitlines() == [
        "Summary of messages #1-#3:",
        "- #1 user: Can we ship the release on Friday?",
        "- #2 assistant/planner: Friday works if QA signs off by Thursday.",
        "- #3 user: Great.",
    ]


def test_an_empty_answer_also_falls_back_but_its_tokens_are_counted():
    text, usage = summarize(Silent(), "m", CONVERSATION)
    assert text.startswith("Summary of messages #1-#3:\n- #1 user: Can we ship")
    assert usage == Usage(input_tokens=50, output_tokens=1)


def test_the_fallback_fits_the_size_and_keeps_an_earlier_summary():
    earlier = Entry(
        40,
        "summary",
        "system",
        None,
        "Summary of messages #1-#39:\n" + "The team chose Postgres. " * 20,
    )
    entries = [earlier] + [
        Entry(seq, "user_message", "user", None, f"Message {seq} says something rather long. " * 10)
        for seq in range(41, 81)
    ]
    text, _ = summarize(Failing(), "m", entries, max_tokens=100)
    header, body = text.split("\n", 1)
    assert header == "Summary of messages #1-#80:"
    assert len(body) <= 400
    assert "earlier: The team chose Postgres." in body
    assert "Summary of messages #1-#39" not in body
    # The newest messages survive; the oldest are counted.
    assert "#80 user: Message 80 says something rather long." in body
    assert "older messages omitted)" in body
    assert "#41 user" not in body


def test_extractive_summary_handles_empty_messages():
    entries = [Entry(5, "user_message", "user", None, "   ")]
    assert extractive_summary(entries, 200) == "- #5 user: (empty)"


def test_summarize_needs_entries():
    with pytest.raises(ValueError, match="nothing"):
        summarize(SimulatedProvider(), "m", [])


def test_a_long_transcript_is_capped_per_message():
    provider = Recording(SimulatedProvider())
    entries = [Entry(i, "user_message", "user", None, "z" * 10_000) for i in range(1, 201)]
    summarize(provider, "simulated-1", entries)
    assert len(provider.requests[0].messages[1].content) < 60_000
