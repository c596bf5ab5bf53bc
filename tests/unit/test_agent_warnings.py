"""The warnings an agent definition carries when this deployment cannot serve its provider."""

from __future__ import annotations

import pytest

from podium.settings import Settings
from podium.store import Agent
from podium_gateway.routes.agents import _warnings


@pytest.fixture(autouse=True)
def no_anthropic_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("PODIUM_ANTHROPIC_API_KEY", raising=False)


def test_an_agent_without_a_provider_is_checked_against_the_deployment_default() -> None:
    settings = Settings(_env_file=None, llm_provider="anthropic")
    [warning] = _warnings(settings, Agent(name="helper", provider=None))
    assert warning.model_dump() == {
        "code": "provider_not_configured",
        "message": "agent 'helper' uses provider 'anthropic', but PODIUM_ANTHROPIC_API_KEY is "
        "not set in this deployment; its calls will fail",
        "provider": "anthropic",
        "missing_settings": ["PODIUM_ANTHROPIC_API_KEY"],
    }


def test_the_agent_s_own_provider_wins_over_the_default() -> None:
    unconfigured_default = Settings(_env_file=None, llm_provider="anthropic")
    assert _warnings(unconfigured_default, Agent(name="sim", provider="simulated")) == []
    simulated_default = Settings(_env_file=None, llm_provider="simulated")
    [warning] = _warnings(simulated_default, Agent(name="claude", provider="anthropic"))
    assert warning.provider == "anthropic"


def test_a_configured_provider_gives_no_warning() -> None:
    settings = Settings(_env_file=None, anthropic_api_key="sk-ant-test")
    assert _warnings(settings, Agent(name="claude", provider="anthropic")) == []
