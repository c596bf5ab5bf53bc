"""Execution patterns, loaded from the patterns config (podium/patterns.yaml)."""

from __future__ import annotations

import importlib
from functools import lru_cache

from podium.patterns import PatternSpec, cached_patterns
from podium_orchestrator.patterns.base import (
    Action,
    Complete,
    Consult,
    Dispatch,
    Fail,
    GuardHit,
    Pattern,
    Redirect,
    RunView,
    Wait,
)


class PatternLoadError(RuntimeError):
    pass


def instantiate(spec: PatternSpec) -> Pattern:
    module_name, _, class_name = spec.implementation.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PatternLoadError(
            f"pattern {spec.name!r}: cannot load {spec.implementation}: {exc}"
        ) from exc
    pattern: Pattern = cls()
    return pattern


@lru_cache(maxsize=8)
def registry(patterns_file: str | None = None) -> dict[str, tuple[PatternSpec, Pattern]]:
    """Every configured pattern with its implementation, loaded once per process."""
    return {
        name: (spec, instantiate(spec)) for name, spec in cached_patterns(patterns_file).items()
    }


__all__ = [
    "Action",
    "Complete",
    "Consult",
    "Dispatch",
    "Fail",
    "GuardHit",
    "Pattern",
    "PatternLoadError",
    "Redirect",
    "RunView",
    "Wait",
    "registry",
]
