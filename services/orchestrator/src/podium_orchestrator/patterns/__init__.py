"""Execution patterns. Each pattern looks at a run's calls and says what happens next."""

from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Dispatch,
    Fail,
    Pattern,
    RunView,
    Wait,
)
from podium_orchestrator.patterns.direct import DirectPattern

PATTERNS: dict[str, Pattern] = {"direct": DirectPattern()}

__all__ = ["PATTERNS", "Action", "Complete", "Dispatch", "Fail", "Pattern", "RunView", "Wait"]
