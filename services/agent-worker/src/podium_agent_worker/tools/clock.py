"""``current_time``: the current date and time in UTC or an IANA time zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from podium.tools_catalog import BUILTIN_TOOLS
from podium_agent_worker.tools.base import ToolContext, ToolError

_UTC_NAMES = frozenset({"utc", "z", "gmt", "etc/utc", "zulu"})


def _utcnow() -> datetime:
    return datetime.now(UTC)


def resolve_zone(name: str) -> tuple[tzinfo, str]:
    """The zone called ``name`` and its display name; ToolError when there is none."""
    clean = name.strip()
    if not clean or clean.lower() in _UTC_NAMES:
        # UTC needs no tz database, so it works even on images without one.
        return UTC, "UTC"
    try:
        return ZoneInfo(clean), clean
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: names like "../x" that are not even valid keys.
        raise ToolError(
            f"unknown time zone {clean!r}; use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from None


class CurrentTimeTool:
    spec = BUILTIN_TOOLS["current_time"]

    def __init__(self, now: Callable[[], datetime] = _utcnow) -> None:
        # Injectable so tests can fix the instant.
        self._now = now

    def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        zone, label = resolve_zone(str(arguments.get("timezone") or "UTC"))
        instant = self._now()
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)  # a naive "now" is taken as UTC
        local = instant.astimezone(zone)
        return f"{local.isoformat(timespec='seconds')} ({label}, {local.strftime('%A')})"
