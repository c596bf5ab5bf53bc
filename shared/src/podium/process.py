"""Per-process setup shared by every service entry point."""

from __future__ import annotations

import sys

from podium.logging_setup import configure_logging
from podium.settings import Settings


def prepare_process(settings: Settings) -> None:
    configure_logging(settings.log_level)
    # A thread waiting for the GIL (an I/O reply to handle, a message to ack) waits up to the
    # switch interval while another thread computes. The default 5 ms adds up over the
    # several hand-offs of every agent call; I/O-bound pools want a shorter one.
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
