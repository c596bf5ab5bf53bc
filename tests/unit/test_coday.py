"""Coday agent YAML → the body of PUT /v1/agents/{name} (podium.coday)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podium.coday import CodayImportError, coday_to_agent, load_agents_yaml

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "coday_agents.yaml"


def _fixture_agents():
    return {name: (body, warnings) for name, body, warnings in map(coday_to_agent, _docs())}


def _docs():
    return load_agents_yaml(FIXTURE.read_text())


def test_the_sample_file_converts_field_by_field():
    agents = _fixture_agents()
    assert list(agents) == ["tech-lead", "archay", "sway"]

    archay, warnings = agents["archay"]
    assert archay == {
        "description": "Software architect; reviews designs and explains trade-offs.",
        "instructions": (
            "You are Archay, a pragmatic software architect. Explain trade-offs, name the\n"
            "risks, and recommend one option."
        ),
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "temperature": 0.5,
        "max_output_tokens": 4000,
        "tools": [],
    }
    text = "\n".join(warnings)
    assert "'FILES'" in text
    assert "readProjectFile" in text
    assert "'GIT'" in text
    assert "'mandatoryDocs'" in text

    sway, warnings = agents["sway"]
    assert sway["provider"] == "openai"  # "OPENAI": case-insensitive
    assert sway["model"] == "gpt-4o"
    assert sway["max_output_tokens"] == 8000
    # `calculator: []` is a tool of ours; THREAD lists one tool we have and one we do not.
    assert sway["tools"] == ["calculator", "search_thread"]
    text = "\n".join(warnings)
    assert "'summarize'" in text
    assert "'modelSize'" in text
    assert "'FILES'" in text

    lead, warnings = agents["tech-lead"]
    assert "provider" not in lead  # no aiProvider: the deployment's default
    assert lead["tools"] == ["calculator"]
    assert lead["sub_agents"] == ["archay", "sway"]
    assert lead["temperature"] == 0.3
    assert any("'AI'" in w for w in warnings)


def test_our_own_snake_case_fields_are_accepted_and_win():
    name, body, warnings = coday_to_agent(
        {
            "name": "helper",
            "provider": "Simulated",
            "model": "simulated-1",
            "max_output_tokens": 300,
            "tools": ["current_time"],
            "sub_agents": ["assistant"],
            "pool": "heavy",
            "aiProvider": "openai",
        }
    )
    assert name == "helper"
    assert body == {
        "provider": "simulated",
        "model": "simulated-1",
        "max_output_tokens": 300,
        "tools": ["current_time"],
        "sub_agents": ["assistant"],
        "pool": "heavy",
    }
    assert any("'aiProvider'" in w and "'provider'" in w for w in warnings)


def test_tools_and_integrations_are_merged_without_duplicates():
    _, body, warnings = coday_to_agent(
        {
            "name": "x",
            "tools": ["calculator"],
            "integrations": {"Calculator": None, "misc": ["CURRENT_TIME", "calculator"]},
        }
    )
    assert body["tools"] == ["calculator", "current_time"]
    assert warnings == []


def test_an_unknown_provider_is_an_error_naming_the_agent():
    with pytest.raises(CodayImportError, match=r"agent 'gemini-fan'.*'google'"):
        coday_to_agent({"name": "gemini-fan", "aiProvider": "google"})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"description": "no name"}, "name"),
        ({"name": "has space"}, "name must be"),
        ({"name": "x", "integrations": "FILES"}, "integrations must be a mapping"),
        ({"name": "x", "integrations": {"calculator": 3}}, "must list tool names"),
        ({"name": "x", "sub_agents": [1]}, "sub_agents must be a list"),
        ("just a string", "must be a mapping"),
    ],
)
def test_malformed_definitions_are_errors(doc, message):
    with pytest.raises(CodayImportError, match=message):
        coday_to_agent(doc)


def test_unknown_fields_are_warnings():
    _, body, warnings = coday_to_agent({"name": "x", "description": "d", "colour": "blue"})
    assert body == {"description": "d"}
    assert warnings == ["agent 'x': unknown field 'colour'; ignored"]


def test_file_forms_single_list_agents_key_and_multi_document():
    single = load_agents_yaml("name: a\ndescription: one\n")
    assert [d["name"] for d in single] == ["a"]
    as_list = load_agents_yaml("- name: a\n- name: b\n")
    assert [d["name"] for d in as_list] == ["a", "b"]
    project = load_agents_yaml("description: project\nagents:\n  - name: a\n  - name: b\n")
    assert [d["name"] for d in project] == ["a", "b"]
    multi = load_agents_yaml("name: a\n---\n- name: b\n---\nagents: [{name: c}]\n")
    assert [d["name"] for d in multi] == ["a", "b", "c"]
    assert load_agents_yaml("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("42\n", "expected an agent mapping"),
        ("agents: {name: a}\n", "must be a list"),
        ("- name: a\n- 7\n", "agent #2 must be a mapping"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_files_are_errors(text, message):
    with pytest.raises(CodayImportError, match=message):
        load_agents_yaml(text)
