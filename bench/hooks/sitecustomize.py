"""Counters of SQL statements, transactions and Redis commands in one process, for the cost
scenario (bench/scenario_cost.py). Nothing in Podium changes: this file is imported at
interpreter start (``sitecustomize``) only when its folder is on PYTHONPATH, and does
nothing unless ``BENCH_COUNTERS_DIR`` is set.

- SQL: SQLAlchemy's ``before_cursor_execute`` on every Engine (one count per statement sent,
  an executemany counting once), keyed "VERB table"; transactions by ``commit``/``rollback``.
- broker messages: Celery's ``before_task_publish``, by task name; CPU: ``process_time``.
- Redis: redis-py's ``send_command`` (one command, one round trip) and ``pack_commands``
  (a pipeline: each command counted, one round trip), sync and asyncio clients, so
  kombu's BRPOP and acks, event streams, leases and Lua scripts are all seen.

The counts are written as JSON to ``$BENCH_COUNTERS_DIR/<service>-<pid>.json`` twice a
second and at exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections import Counter
from typing import Any

_TABLE = {
    "INSERT": re.compile(r"\bINTO\s+\"?(\w+)", re.IGNORECASE),
    "UPDATE": re.compile(r"\bUPDATE\s+\"?(\w+)", re.IGNORECASE),
    "DELETE": re.compile(r"\bFROM\s+\"?(\w+)", re.IGNORECASE),
    "SELECT": re.compile(r"\bFROM\s+\"?(\w+)", re.IGNORECASE),
}

_lock = threading.Lock()
_sql: Counter[str] = Counter()
_tx: Counter[str] = Counter()
_redis: Counter[str] = Counter()
_round_trips = [0]
_messages: Counter[str] = Counter()


def service_name() -> str:
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if "-m" in argv:
        module = argv[argv.index("-m") + 1]
        return module.removeprefix("podium_").replace("_", "-")
    if "dev" in argv:
        return "podium-dev"
    return os.path.basename(argv[0]) if argv else "python"


def classify(statement: str) -> str:
    """ "VERB table" of one statement ("SELECT agent_calls", "INSERT thread_events", ...)."""
    head = statement.lstrip().split(None, 1)
    verb = head[0].upper() if head else "?"
    pattern = _TABLE.get(verb)
    match = pattern.search(statement) if pattern else None
    return f"{verb} {match.group(1).lower()}" if match else verb


def _count_redis(name: Any) -> None:
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    _redis[str(name).split()[0].upper()] += 1


def snapshot() -> dict[str, Any]:
    with _lock:
        return {
            "service": service_name(),
            "pid": os.getpid(),
            "sql": dict(_sql),
            "transactions": dict(_tx),
            "redis": dict(_redis),
            "redis_round_trips": _round_trips[0],
            "messages": dict(_messages),
            # CPU of every thread of this process (user + system), for CPU per run.
            "cpu_s": time.process_time(),
        }


def install_sql() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        key = classify(statement)
        with _lock:
            _sql[key] += 1

    def on_commit(conn: Any) -> None:
        with _lock:
            _tx["commit"] += 1

    def on_rollback(conn: Any) -> None:
        with _lock:
            _tx["rollback"] += 1

    event.listen(Engine, "before_cursor_execute", on_execute)
    event.listen(Engine, "commit", on_commit)
    event.listen(Engine, "rollback", on_rollback)


def install_redis() -> None:
    import redis.connection as sync_conn

    base = sync_conn.AbstractConnection
    send_command = base.send_command
    pack_commands = base.pack_commands

    def counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            _count_redis(args[0])
            _round_trips[0] += 1
        return send_command(self, *args, **kwargs)

    def counted_pack(self: Any, commands: Any) -> Any:
        commands = list(commands)
        with _lock:
            for command in commands:
                _count_redis(command[0])
            _round_trips[0] += 1
        return pack_commands(self, commands)

    base.send_command = counted_send  # type: ignore[method-assign]
    base.pack_commands = counted_pack  # type: ignore[method-assign]
    try:
        import redis.asyncio.connection as async_conn
    except ImportError:
        return
    abase = async_conn.AbstractConnection
    asend = abase.send_command
    apack = abase.pack_commands

    async def counted_asend(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            _count_redis(args[0])
            _round_trips[0] += 1
        return await asend(self, *args, **kwargs)

    def counted_apack(self: Any, commands: Any) -> Any:
        commands = list(commands)
        with _lock:
            for command in commands:
                _count_redis(command[0])
            _round_trips[0] += 1
        return apack(self, commands)

    abase.send_command = counted_asend  # type: ignore[method-assign]
    abase.pack_commands = counted_apack  # type: ignore[method-assign]


def install_messages() -> None:
    """Broker messages this process publishes, by task name (Celery's own signal, so Redis
    and RabbitMQ are counted alike)."""
    try:
        from celery import signals
    except ImportError:
        return

    def on_publish(sender: Any = None, **_: Any) -> None:
        with _lock:
            _messages[str(sender)] += 1

    signals.before_task_publish.connect(on_publish, weak=False)


def _dump(directory: str) -> None:
    import json

    data = snapshot()
    path = os.path.join(directory, f"{data['service']}-{data['pid']}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def install(directory: str) -> None:
    import atexit

    os.makedirs(directory, exist_ok=True)
    install_sql()
    install_redis()
    install_messages()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.5):
            # A missed dump is caught by the next one.
            with contextlib.suppress(Exception):
                _dump(directory)

    threading.Thread(target=loop, name="bench-counters", daemon=True).start()

    def final() -> None:
        stop.set()
        _dump(directory)

    atexit.register(final)


if os.environ.get("BENCH_COUNTERS_DIR"):
    install(os.environ["BENCH_COUNTERS_DIR"])
