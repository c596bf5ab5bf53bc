"""The guard the whole suite runs under (tests/conftest.py): an LLM call made while the
calling thread holds a database connection is reported and, strictly, refused."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from podium.llm import ChatMessage, ChatRequest
from podium.llm.guarded import guarded
from podium.settings import Settings
from podium.store import Database
from podium.store.guards import NetworkCallInTransaction, connections_held
from tests.support.fake_run import FakeModel

REQUEST = ChatRequest(
    model="fake-1",
    messages=[ChatMessage(role="user", content="hi")],
    metadata={"purpose": "orchestrator"},
)


@pytest.fixture
def db(tmp_path):
    database = Database(Settings(database_url=f"sqlite:///{tmp_path / 'guard.db'}"))
    yield database
    database.dispose()


@pytest.fixture
def report(tmp_path, monkeypatch):
    # This test's own report, so the suite's file (watched for every test) stays clean.
    path = tmp_path / "report.jsonl"
    monkeypatch.setenv("PODIUM_GUARD_REPORT", str(path))
    monkeypatch.setenv("PODIUM_STRICT_GUARDS", "1")
    return path


def test_a_call_with_no_connection_held_passes(db, report):
    provider = guarded(FakeModel("fine"))
    with db.session() as session:
        session.execute(text("select 1"))
    assert connections_held() == 0
    assert provider.complete(REQUEST).content == "fine"
    assert not report.exists()


@pytest.mark.parametrize("opened_by", ["session", "read"])
def test_a_call_inside_a_transaction_is_caught(db, report, opened_by):
    provider = guarded(FakeModel("too late"))
    opener = db.session if opened_by == "session" else db.read
    with opener() as session:
        session.execute(text("select 1"))
        assert connections_held() == 1
        with pytest.raises(NetworkCallInTransaction, match="LLM call to fake"):
            provider.complete(REQUEST)
    assert connections_held() == 0
    [line] = report.read_text().splitlines()
    found = json.loads(line)
    assert "while holding a database connection" in found["what"]
    assert "test_a_call_inside_a_transaction_is_caught" in found["stack"]


def test_not_strict_it_reports_and_lets_the_call_through(db, report, monkeypatch):
    monkeypatch.setenv("PODIUM_STRICT_GUARDS", "0")
    provider = guarded(FakeModel("let through"))
    with db.session() as session:
        session.execute(text("select 1"))
        assert provider.complete(REQUEST).content == "let through"
    assert len(report.read_text().splitlines()) == 1


def test_the_wrapper_keeps_the_providers_own_attributes():
    model = FakeModel("x")
    provider = guarded(model)
    assert provider.name == "fake" and provider.supports_tools is True
    assert guarded(provider) is provider
