"""Podium's Redis transport for Celery (podium.broker): one Redis client per channel, and
messages still go through (against the machine's Redis, under a key prefix of its own)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from podium.broker import RedisTransport
from podium.celery_app import make_celery
from podium.settings import Settings
from tests.support.services import ensure_redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    ensure_redis()
    value = f"podium-test-{secrets.token_hex(4)}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{value}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_channel_keeps_one_client_and_messages_go_through(prefix: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, broker_url=REDIS_URL, redis_url=REDIS_URL, redis_key_prefix=prefix
    )
    app = make_celery(settings, "test")
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, RedisTransport)
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first, "one client per channel, not per operation"
        queue = conn.SimpleQueue(f"{prefix}q")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
        assert channel._create_client() is first
    # RabbitMQ URLs keep kombu's own transport.
    amqp = make_celery(
        Settings(_env_file=None, broker_url="amqp://guest:guest@127.0.0.1:5672//"),  # type: ignore[call-arg]
        "test",
    )
    assert amqp.conf.broker_transport is None
