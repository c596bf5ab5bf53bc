"""Registering a service's queue consumers, with one error policy for all of them:

- a payload that is not a valid message of the expected schema version is dead-lettered at
  once (retrying cannot fix it) and the worker moves on;
- any other failure is retried with exponential backoff, and dead-lettered once the retries
  are exhausted — recorded with its payload and error, never silently dropped;
- a "busy" exception (the orchestrator's RunBusy) is retried quickly and without limit;
- an outage of the store, Redis or the broker (connection refused, dropped, timed out) is
  retried with backoff and without limit: the message is valid and will apply once the
  dependency is back, so it is never dead-lettered for that;
- a dead letter that cannot be written (the store is down) is not dropped: the message is
  retried until it can be recorded.

Unknown task names and messages in a content type we do not accept are dead-lettered too,
from Celery's signals, and so are bodies that cannot even be decoded (Celery would only log
those), through ``PodiumConsumer``. That consumer also keeps a worker alive when its broker
connection drops with messages in flight (a Celery 5.7 / kombu 5.7 bug otherwise stops the
worker with "Unrecoverable error: AttributeError ... 'hostname'").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import signals
from celery.worker.consumer import Consumer
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from podium.messages import Message, MessageError, parse_message
from podium.runtime import Runtime
from podium.store import DeadLetter

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_signals_installed: set[int] = set()

# Errors that say a dependency is unreachable, not that the message is wrong.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BrokerError,
    ConnectionError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is an unreachable store, Redis or broker."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _OUTAGE_ERRORS):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def dead_letter(
    runtime: Runtime, task: str, queue: str | None, payload: Any, error: str, reason: str
) -> bool:
    """Record a message no consumer can apply. False if the store could not be reached."""
    try:
        json.dumps(payload)
    except (TypeError, ValueError):
        payload = {"unserialisable": repr(payload)[:2000]}
    try:
        with runtime.db.session() as session:
            session.add(
                DeadLetter(
                    task=task, queue=queue, payload=payload, error=error[:4000], reason=reason
                )
            )
        log.error("dead-lettered %s (%s): %s", task, reason, error[:300])
        return True
    except Exception:  # the store is down: the caller decides (retry, or the log line)
        log.exception("could not record a dead letter for %s: %s", task, error[:300])
        return False


def register_consumer(
    runtime: Runtime,
    *,
    name: str,
    model: type[M],
    handler: Callable[[M], object],
    max_retries: int = 10,
    base_delay_s: float = 0.2,
    max_delay_s: float = 15.0,
    busy: type[Exception] | None = None,
) -> None:
    def consume(self: Any, payload: Any = None, *args: Any, **kwargs: Any) -> None:
        queue = (self.request.delivery_info or {}).get("routing_key")
        try:
            message = parse_message(model, payload)
            if args or kwargs:
                raise MessageError(f"{model.__name__}: unexpected extra arguments")
        except MessageError as exc:
            if not dead_letter(runtime, name, queue, payload, str(exc), "invalid"):
                raise self.retry(exc=exc, countdown=max_delay_s, max_retries=None) from exc
            return
        try:
            handler(message)
        except Exception as exc:
            if busy is not None and isinstance(exc, busy):
                raise self.retry(exc=exc, countdown=0.2, max_retries=None) from exc
            retries = int(self.request.retries or 0)
            if is_outage(exc):
                delay = min(base_delay_s * 2**retries, max_delay_s)
                log.warning(
                    "%s: a dependency is down (attempt %d), retrying in %.1fs: %s",
                    name,
                    retries + 1,
                    delay,
                    str(exc)[:200],
                )
                raise self.retry(exc=exc, countdown=delay, max_retries=None) from exc
            if retries >= max_retries:
                error = f"{type(exc).__name__}: {exc}"
                if not dead_letter(runtime, name, queue, payload, error, "exhausted"):
                    raise self.retry(exc=exc, countdown=max_delay_s, max_retries=None) from exc
                return
            delay = min(base_delay_s * 2**retries, max_delay_s)
            log.warning(
                "%s failed (attempt %d), retrying in %.1fs: %s", name, retries + 1, delay, exc
            )
            raise self.retry(exc=exc, countdown=delay, max_retries=None) from exc

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=name, bind=True)(consume)
    install_dead_letter_signals(runtime)


def install_dead_letter_signals(runtime: Runtime) -> None:
    """Dead-letter messages Celery itself cannot dispatch (unknown task, refused content).
    Once per runtime: in embedded mode every service shares one."""
    if id(runtime) in _signals_installed:
        return
    _signals_installed.add(id(runtime))

    def on_unknown(
        sender: Any = None, name: str = "", message: Any = None, exc: Any = None, **_: Any
    ) -> None:
        dead_letter(
            runtime,
            name or "?",
            _queue(message),
            _body(message),
            f"unknown task: {exc}",
            "unknown_task",
        )

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        headers = getattr(message, "headers", None) or {}
        task = str(headers.get("task", "?"))
        dead_letter(runtime, task, _queue(message), _body(message), f"rejected: {exc}", "rejected")

    signals.task_unknown.connect(on_unknown, weak=False)
    signals.task_rejected.connect(on_rejected, weak=False)
    # Bodies Celery cannot decode at all (DeadLetteringConsumer below).
    runtime.celery.podium_dead_letter = lambda message, exc: dead_letter(
        runtime,
        str((getattr(message, "headers", None) or {}).get("task", "?")),
        _queue(message),
        _body(message),
        f"undecodable: {type(exc).__name__}: {exc}",
        "undecodable",
    )
    runtime.celery.conf.worker_consumer = f"{__name__}:PodiumConsumer"


class PodiumConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with two repairs:

    - a body it cannot decode is dead-lettered, not only logged;
    - when the broker connection is lost, Celery collects the connection (its transport
      loses its client), then closes it; the Redis transport's close, and every later ack of
      a task that was running, goes through that missing client: an AttributeError that
      Celery treats as unrecoverable, so the worker stops for good. Here the close and the
      acks on the lost channel are made harmless (logged), and the consumer reconnects as it
      should. The messages concerned stay in Redis's unacked set, to be restored after the
      visibility timeout (their work was done, or is redone by the reaper: consumers are
      idempotent).
    """

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record = getattr(self.app, "podium_dead_letter", None)
        if record is not None:
            record(message, exc)
        super().on_decode_error(message, exc)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            _defuse(connection, "close")
        channel = getattr(getattr(self, "task_consumer", None), "channel", None)
        if channel is not None:
            _defuse(channel, "basic_ack")
            _defuse(channel, "basic_reject")
        super().on_connection_error_after_connected(exc)


def _defuse(obj: Any, name: str) -> None:
    """Make ``obj.name(...)`` (on a broker connection that was lost) log its failure instead
    of raising it into Celery's event loop."""
    original = getattr(obj, name)

    def defused(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as error:
            log.warning("%s on a lost broker connection failed (ignored): %r", name, error)
            return None

    setattr(obj, name, defused)


def _queue(message: Any) -> str | None:
    info = getattr(message, "delivery_info", None) or {}
    key = info.get("routing_key")
    return str(key) if key else None


def _body(message: Any) -> Any:
    body = getattr(message, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        return json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return {"raw": str(body)[:2000]}
