"""Pieces of the reliability mechanisms that need no running service (docs/reliability.md):
which errors count as an outage, call leases, the reaper's back-off, and the test-only
unsafe setting. The fault tests in tests/faults exercise them on real processes."""

from __future__ import annotations

import time

import pytest
import redis
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError

from podium.celery_app import make_celery
from podium.consumers import is_outage
from podium.events import MemoryCallLeases, call_lost_error
from podium.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_outages_are_told_apart_from_bad_messages():
    assert is_outage(OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert is_outage(redis.exceptions.ConnectionError("refused"))
    assert is_outage(BrokerError("refused"))
    assert is_outage(ConnectionRefusedError())
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = redis.exceptions.TimeoutError("slow")
    assert is_outage(wrapped), "the cause counts"
    assert not is_outage(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_outage(ValueError("bad payload"))


def test_a_lease_renewed_by_its_holder_stays_and_is_not_stolen():
    leases = MemoryCallLeases(settings(call_lease_s=1))
    leases.acquire("c1", "worker-a")
    assert leases.alive(["c1", "c2"]) == {"c1"}
    leases.renew({"c1": "worker-b"})  # another token does not take over a live lease
    leases.release("c1", "worker-b")
    assert leases.alive(["c1"]) == {"c1"}
    leases.release("c1", "worker-a")
    assert leases.alive(["c1"]) == set()


def test_a_lease_lapses_without_its_heartbeat():
    leases = MemoryCallLeases(settings(call_lease_s=1))
    leases.acquire("c1", "worker-a")
    time.sleep(1.1)
    assert leases.alive(["c1"]) == set()
    leases.renew({"c1": "worker-a"})  # a heartbeat after a lapse re-creates it
    assert leases.alive(["c1"]) == {"c1"}


def test_call_lost_error_is_clear():
    error = call_lost_error(3)
    assert error["code"] == "call_lost"
    assert "3 time(s)" in error["message"]


def test_reaper_backs_off_per_item():
    from podium.runtime import Runtime
    from podium_orchestrator.tasks import Reaper

    runtime = Runtime(
        settings(mode="embedded", database_url="sqlite://", reaper_stall_s=10), name="t"
    )
    try:
        reaper = Reaper(runtime)
        now = 1000.0
        assert reaper._due("run:x", now)
        reaper._mark("run:x", now)
        assert not reaper._due("run:x", now + 9)
        assert reaper._due("run:x", now + 10)
        reaper._mark("run:x", now + 10)
        assert not reaper._due("run:x", now + 29), "the second wait is twice as long"
        assert reaper._due("run:x", now + 30)
        assert reaper._due("pm:y", now, limit=1)
        reaper._mark("pm:y", now)
        assert not reaper._due("pm:y", now + 10_000, limit=1), "bounded re-sends"
    finally:
        runtime.close()


def test_unsafe_early_ack_needs_allow_unsafe():
    with pytest.raises(ValidationError, match="PODIUM_ALLOW_UNSAFE"):
        settings(unsafe_early_ack=True)
    safe = make_celery(settings(), "t")
    assert safe.conf.task_acks_late and safe.conf.task_reject_on_worker_lost
    unsafe = make_celery(settings(unsafe_early_ack=True, allow_unsafe=True), "t")
    assert not unsafe.conf.task_acks_late and not unsafe.conf.task_reject_on_worker_lost


def test_publishing_fails_fast_when_the_broker_is_down():
    app = make_celery(settings(broker_url="redis://127.0.0.1:9/0"), "t")
    started = time.monotonic()
    with pytest.raises(BrokerError):
        app.send_task("podium.nope", args=[{}], queue="nowhere")
    assert time.monotonic() - started < 10  # bounded (about 0.3 s), never a hang
