"""The execution patterns a run may use (docs/architecture.md, "Patterns" and "HTTP API"), as
configured."""

from __future__ import annotations

from fastapi import APIRouter

from podium.patterns import cached_patterns
from podium_gateway.agent_schemas import PatternList, PatternOut
from podium_gateway.auth import RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS

router = APIRouter(prefix="/v1/patterns", tags=["patterns"], responses=API_ERRORS)


@router.get("", response_model=PatternList)
def list_patterns(_principal: TenantDep, runtime: RuntimeDep) -> PatternList:
    """The enabled patterns, in configuration order, with their options. A run may force one
    with ``pattern``; otherwise the orchestrator chooses."""
    patterns = cached_patterns(runtime.settings.patterns_file)
    return PatternList(
        data=[
            PatternOut(name=p.name, description=p.description, options=p.options)
            for p in patterns.values()
        ]
    )
