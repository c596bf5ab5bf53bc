from __future__ import annotations

import pytest

from podium.messages import AdvanceRun, ExecuteAgentCall, MessageError, RunCompleted, parse_message
from podium.queues import Queue, TaskName, agents_queue


def test_round_trip_through_json():
    msg = AdvanceRun(run_id="r1", reason="call.finished", call_id="c1")
    payload = msg.model_dump(mode="json")
    assert payload["schema_version"] == 1
    assert payload["type"] == "advance_run"
    assert parse_message(AdvanceRun, payload) == msg


def test_unknown_version_is_rejected_clearly():
    payload = RunCompleted(run_id="r", tenant_id="t", status="completed").model_dump(mode="json")
    payload["schema_version"] = 2
    with pytest.raises(MessageError, match="schema_version"):
        parse_message(RunCompleted, payload)


@pytest.mark.parametrize("payload", [None, [], "x", {"run_id": "r"}, {"call_id": 5, "run_id": "r"}])
def test_malformed_payloads_raise_message_error(payload):
    with pytest.raises(MessageError):
        parse_message(ExecuteAgentCall, payload)


def test_extra_fields_are_rejected():
    payload = AdvanceRun(run_id="r", reason="run.created").model_dump(mode="json")
    payload["surprise"] = 1
    with pytest.raises(MessageError, match="surprise"):
        parse_message(AdvanceRun, payload)


def test_names_are_defined_once():
    assert AdvanceRun.TASK is TaskName.ADVANCE_RUN
    assert AdvanceRun.QUEUE == Queue.ORCHESTRATOR
    assert RunCompleted.QUEUE == Queue.LEARNER
    assert agents_queue("default") == Queue.AGENTS_DEFAULT == "agents.default"
    with pytest.raises(ValueError):
        agents_queue("bad pool")
