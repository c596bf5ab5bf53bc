"""The execution patterns a run may be forced to (DESIGN §3).

The walking skeleton implements ``direct``; the orchestrator owns each pattern's behaviour,
this module only names what the gateway may accept.
"""

from __future__ import annotations

AVAILABLE_PATTERNS: tuple[str, ...] = ("direct",)
DEFAULT_PATTERN = "direct"
