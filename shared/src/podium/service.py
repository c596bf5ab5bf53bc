"""How a service plugs into a process. Each service package exposes one ``SERVICE`` and
registers it under the ``podium.services`` entry-point group, so the embedded mode can run
them all in one process without any service importing another."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from podium.runtime import Runtime

BackgroundLoop = Callable[[Runtime, threading.Event], None]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    # Queues this service consumes (empty for the gateway).
    queues: tuple[str, ...] = ()
    # Registers the service's Celery tasks on runtime.celery.
    register_tasks: Callable[[Runtime], None] | None = None
    # Builds the ASGI app (gateway only).
    make_asgi: Callable[[Runtime], Any] | None = None
    # Periodic work run in a daemon thread until the event is set (outbox sweep, ...).
    background: tuple[BackgroundLoop, ...] = field(default_factory=tuple)
    # Periodic work that Celery beat does in distributed mode, done by threads when embedded
    # (an embedded beat would start a process that cannot reach the in-process broker).
    embedded_background: tuple[BackgroundLoop, ...] = field(default_factory=tuple)


def discover_services() -> dict[str, ServiceSpec]:
    """The installed services, by name."""
    found: dict[str, ServiceSpec] = {}
    for ep in entry_points(group="podium.services"):
        spec = ep.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {ep.name} does not name a ServiceSpec")
        found[spec.name] = spec
    return found


def start_background(runtime: Runtime, loops: tuple[BackgroundLoop, ...]) -> threading.Event:
    stop = threading.Event()
    for loop in loops:
        threading.Thread(
            target=loop, args=(runtime, stop), name=f"podium-{loop.__name__}", daemon=True
        ).start()
    return stop
