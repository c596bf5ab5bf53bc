"""The execution patterns, declared in configuration (docs/architecture.md, "Patterns").

The gateway reads names and descriptions from here (``GET /v1/patterns``, validation); the
orchestrator imports each ``implementation``. The default file ships with the package;
``PODIUM_PATTERNS_FILE`` replaces it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

DEFAULT_PATTERNS_FILE = Path(__file__).with_name("patterns.yaml")
DEFAULT_PATTERN = "direct"


class PatternSpec(BaseModel):
    name: str
    description: str
    implementation: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class PatternConfigError(ValueError):
    pass


def load_patterns(path: str | Path | None = None) -> dict[str, PatternSpec]:
    """Enabled patterns by name, from ``path`` (default: the packaged file)."""
    source = Path(path) if path else DEFAULT_PATTERNS_FILE
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise PatternConfigError(f"cannot read patterns file {source}: {exc}") from exc
    entries = (raw or {}).get("patterns") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise PatternConfigError(f"{source}: expected a non-empty `patterns:` mapping")
    specs: dict[str, PatternSpec] = {}
    for name, body in entries.items():
        try:
            spec = PatternSpec.model_validate({"name": name, **(body or {})})
        except ValidationError as exc:
            raise PatternConfigError(f"{source}: pattern {name!r}: {exc}") from exc
        if spec.enabled:
            specs[name] = spec
    if DEFAULT_PATTERN not in specs:
        raise PatternConfigError(f"{source}: the fallback pattern {DEFAULT_PATTERN!r} must exist")
    return specs


@lru_cache(maxsize=8)
def cached_patterns(path: str | None = None) -> dict[str, PatternSpec]:
    return load_patterns(path)
