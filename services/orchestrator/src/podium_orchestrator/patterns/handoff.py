"""``handoff``: the lead agent may redirect the request to another agent, which sees the full
thread (Coday's redirect). The step function turns a handoff into the next call and stops
ping-pong; this class only offers the tool and finishes on a real answer."""

from __future__ import annotations

from podium_orchestrator.patterns.direct import DirectPattern


class HandoffPattern(DirectPattern):
    name = "handoff"
    control_tools = ("handoff",)
