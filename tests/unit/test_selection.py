from __future__ import annotations

import pytest

from podium_orchestrator.selection import mentioned_agents, select_agent

KNOWN = {"assistant", "coder", "critic", "data.bot"}


def test_requested_agent_wins():
    s = select_agent(
        requested="critic",
        text="@coder hi",
        last_agent="coder",
        default_agent="assistant",
        known=KNOWN,
    )
    assert s.agent == "critic"
    assert "requested" in s.reason


def test_mention_beats_last_agent_and_default():
    s = select_agent(
        requested=None,
        text="please @coder, fix this",
        last_agent="critic",
        default_agent="assistant",
        known=KNOWN,
    )
    assert s.agent == "coder"
    assert "@mentions" in s.reason


def test_last_agent_then_default():
    s = select_agent(
        requested=None, text="go on", last_agent="critic", default_agent="assistant", known=KNOWN
    )
    assert s.agent == "critic"
    s = select_agent(
        requested=None, text="go on", last_agent=None, default_agent="assistant", known=KNOWN
    )
    assert s.agent == "assistant"
    assert "default" in s.reason


def test_unknown_mentions_and_emails_are_ignored():
    assert mentioned_agents("mail bob@coder.com or @ghost, then @data.bot.", KNOWN) == ["data.bot"]
    assert mentioned_agents("@critic and @coder and @critic", KNOWN) == ["critic", "coder"]


def test_deleted_last_agent_falls_back_to_default():
    s = select_agent(
        requested=None, text="x", last_agent="gone", default_agent="assistant", known=KNOWN
    )
    assert s.agent == "assistant"


def test_no_agents_is_a_clear_error():
    with pytest.raises(LookupError):
        select_agent(requested=None, text="x", last_agent=None, default_agent="a", known=set())
