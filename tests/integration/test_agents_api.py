"""The agents API (GET/PUT/DELETE /v1/agents), GET /v1/patterns, and `podium agents import`,
over the real services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podium.client import PodiumAPIError
from podium.roster import DEFAULT_AGENT, ROSTER_NAMES
from tests.support.stack import wait_for_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "coday_agents.yaml"

REVIEWER = {
    "description": "Reviews pull requests.",
    "instructions": "You review code changes and list concrete problems.",
    "provider": "simulated",
    "model": "simulated-1",
    "temperature": 0.4,
    "max_output_tokens": 500,
    "tools": ["calculator", "search_thread"],
    "sub_agents": ["coder"],
}


def _error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_put_creates_then_replaces_and_get_and_list_show_it(make_tenant):
    t = make_tenant()
    r = t.client.http.put("/v1/agents/reviewer", json=REVIEWER)
    assert r.status_code == 201, r.text
    created = r.json()
    assert {k: created[k] for k in REVIEWER} == REVIEWER
    assert created["name"] == "reviewer"
    assert created["pool"] == "default"
    assert created["updated_at"] >= created["created_at"]

    assert t.client.get_agent("reviewer") == created

    replacement = {"description": "Strict reviewer.", "temperature": 1.5, "tools": ["handoff"]}
    r = t.client.http.put("/v1/agents/reviewer", json=replacement)
    assert r.status_code == 200, r.text
    replaced = r.json()
    # PUT replaces the whole definition: omitted fields are back to their defaults.
    assert replaced["description"] == "Strict reviewer."
    assert replaced["instructions"] == ""
    assert replaced["provider"] is None
    assert replaced["model"] is None
    assert replaced["temperature"] == 1.5
    assert replaced["max_output_tokens"] == 1024
    assert replaced["tools"] == ["handoff"]
    assert replaced["sub_agents"] == []
    assert replaced["created_at"] == created["created_at"]
    assert replaced["updated_at"] > created["updated_at"]
    assert t.client.get_agent("reviewer") == replaced

    listed = t.client.list_agents()
    names = [a["name"] for a in listed]
    assert names == sorted(names)
    assert set(names) == set(ROSTER_NAMES) | {"reviewer"}
    assert next(a for a in listed if a["name"] == "reviewer") == replaced


@pytest.mark.parametrize(
    ("body", "code", "where"),
    [
        ({"temperature": 2.5}, "validation_error", "temperature"),
        ({"temperature": -0.1}, "validation_error", "temperature"),
        ({"max_output_tokens": 0}, "validation_error", "max_output_tokens"),
        ({"provider": "gemini"}, "validation_error", "provider"),
        ({"pool": "no spaces"}, "validation_error", "pool"),
        ({"colour": "blue"}, "validation_error", "colour"),
        ({"sub_agents": ["bad name"]}, "validation_error", "sub_agents"),
        ({"tools": ["calculator", "shell"]}, "unknown_tool", ["shell"]),
        ({"sub_agents": ["coder", "ghost", "phantom"]}, "unknown_agent", ["ghost", "phantom"]),
        ({"sub_agents": ["newbie"]}, "invalid_sub_agents", ["newbie"]),
    ],
)
def test_bad_definitions_are_422(make_tenant, body, code, where):
    t = make_tenant()
    error = _error(t.client.http.put("/v1/agents/newbie", json=body), 422)
    assert error["code"] == code, error
    if code == "validation_error":
        assert any(where in d["loc"] for d in error["details"]), error
    else:
        assert error["names"] == where
    # Nothing was created.
    assert _error(t.client.http.get("/v1/agents/newbie"), 404)["code"] == "not_found"


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "x" * 101, "caf%C3%A9"])
def test_bad_names_are_422(make_tenant, name):
    t = make_tenant()
    error = _error(t.client.http.put(f"/v1/agents/{name}", json={}), 422)
    assert error["code"] == "validation_error"


def test_delete_then_404_and_sub_agent_lists_are_cleaned(make_tenant):
    t = make_tenant()
    t.client.put_agent("helper", {"description": "helps"})
    t.client.put_agent("boss", {"sub_agents": ["helper", "coder"]})
    r = t.client.http.delete("/v1/agents/helper")
    assert r.status_code == 204
    assert r.content == b""
    assert t.client.get_agent("boss")["sub_agents"] == ["coder"]
    assert _error(t.client.http.get("/v1/agents/helper"), 404)["code"] == "not_found"
    assert _error(t.client.http.delete("/v1/agents/helper"), 404)["code"] == "not_found"
    # Deleting through the client helper: silence on success, PodiumAPIError on failure.
    t.client.delete_agent("boss")
    with pytest.raises(PodiumAPIError) as caught:
        t.client.delete_agent("boss")
    assert caught.value.status == 404


def test_the_default_agent_cannot_be_deleted_but_can_be_replaced(make_tenant):
    t = make_tenant()
    error = _error(t.client.http.delete(f"/v1/agents/{DEFAULT_AGENT}"), 409)
    assert error["code"] == "default_agent"
    assert "default agent" in error["message"]
    assert t.client.get_agent(DEFAULT_AGENT)["name"] == DEFAULT_AGENT
    r = t.client.http.put(f"/v1/agents/{DEFAULT_AGENT}", json={"description": "mine"})
    assert r.status_code == 200


def test_agents_are_per_tenant(make_tenant):
    owner, other = make_tenant("owner"), make_tenant("other")
    mine = owner.client.put_agent("secret-agent", REVIEWER)
    # The other tenant does not see it...
    assert _error(other.client.http.get("/v1/agents/secret-agent"), 404)["code"] == "not_found"
    assert "secret-agent" not in [a["name"] for a in other.client.list_agents()]
    assert _error(other.client.http.delete("/v1/agents/secret-agent"), 404)["code"] == "not_found"
    # ...and a PUT of the same name creates its own agent, leaving the owner's untouched.
    r = other.client.http.put("/v1/agents/secret-agent", json={"description": "theirs"})
    assert r.status_code == 201, r.text
    assert owner.client.get_agent("secret-agent") == mine
    assert other.client.get_agent("secret-agent")["description"] == "theirs"
    # Sub-agents resolve within the tenant only.
    owner.client.put_agent("owner-only", {})
    error = _error(other.client.http.put("/v1/agents/x", json={"sub_agents": ["owner-only"]}), 422)
    assert error["code"] == "unknown_agent"


def test_patterns_are_listed_without_their_implementation(make_tenant):
    t = make_tenant()
    patterns = t.client.patterns()
    # The test stack's patterns file adds a seventh pattern after the six packaged ones.
    assert [p["name"] for p in patterns] == [
        "direct",
        "handoff",
        "plan_execute",
        "critic_loop",
        "parallel_team",
        "pipeline",
        "second_opinion",
    ]
    for p in patterns:
        assert set(p) == {"name", "description", "options"}
        assert p["description"]
    assert next(p for p in patterns if p["name"] == "critic_loop")["options"]["max_rounds"] == 3


def test_patterns_need_a_key(stack):
    import httpx

    assert httpx.get(f"{stack.url}/v1/patterns").status_code == 401


def _unconfigured(name: str) -> str:
    return (
        f"agent {name!r} uses provider 'anthropic', but PODIUM_ANTHROPIC_API_KEY is not set in "
        "this deployment; its calls will fail"
    )


@pytest.fixture
def no_anthropic_key(stack):
    if stack.env.get("ANTHROPIC_API_KEY") or stack.env.get("PODIUM_ANTHROPIC_API_KEY"):
        pytest.skip("the stack's environment has an Anthropic key")


def _import(stack, key, *args):
    env = dict(stack.env, PODIUM_URL=stack.url, PODIUM_API_KEY=key)
    return subprocess.run(
        [sys.executable, "-c", "from podium.cli.main import cli; cli()", "agents", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_podium_agents_import_creates_the_coday_agents(stack, make_tenant, no_anthropic_key):
    t = make_tenant()
    dry = _import(stack, t.key, "import", "--dry-run", str(FIXTURE))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would create tech-lead" in dry.stdout
    assert _error(t.client.http.get("/v1/agents/tech-lead"), 404)["code"] == "not_found"

    done = _import(stack, t.key, "import", str(FIXTURE))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # tech-lead comes first in the file but names the others as sub-agents: it is PUT last.
    assert lines == [
        "created  archay",
        "created  sway",
        "created  tech-lead",
        "3 created, 0 replaced, 0 failed",
    ]
    assert "warning: agent 'archay': integration 'GIT'" in done.stderr
    # archay's provider has no key in the stack (openai has one; tech-lead uses the default,
    # simulated): warned once, and the agent is stored all the same.
    assert done.stderr.count("uses provider") == 1, done.stderr
    assert f"warning: {_unconfigured('archay')}" in done.stderr.splitlines()

    archay = t.client.get_agent("archay")
    assert archay["provider"] == "anthropic"
    assert archay["model"] == "claude-sonnet-4-5"
    assert archay["max_output_tokens"] == 4000
    assert t.client.get_agent("sway")["tools"] == ["calculator", "search_thread"]
    lead = t.client.get_agent("tech-lead")
    assert lead["sub_agents"] == ["archay", "sway"]
    assert lead["provider"] is None

    again = _import(stack, t.key, "import", str(FIXTURE))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "0 created, 3 replaced, 0 failed"

    listed = _import(stack, t.key, "list")
    assert listed.returncode == 0, listed.stderr
    assert "tech-lead" in listed.stdout

    # The imported agent answers a run that @mentions it (the simulated provider: it has no
    # aiProvider of its own).
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "@tech-lead hello")
    run = wait_for_run(t.client, accepted["id"])
    assert run["status"] == "completed", run
    decisions = t.client.orchestration(run["id"])["decisions"]
    assert decisions[0]["dimensions"]["agent"] == "tech-lead"


def test_put_warns_when_the_provider_has_no_credentials_here(make_tenant, no_anthropic_key):
    t = make_tenant()
    r = t.client.http.put(
        "/v1/agents/claude-fan", json={"provider": "anthropic", "model": "claude-x"}
    )
    # Stored all the same: the key may be set on the agent workers only.
    assert r.status_code == 201, r.text
    warning = {
        "code": "provider_not_configured",
        "message": _unconfigured("claude-fan"),
        "provider": "anthropic",
        "missing_settings": ["PODIUM_ANTHROPIC_API_KEY"],
    }
    assert r.json()["warnings"] == [warning]
    assert t.client.get_agent("claude-fan")["warnings"] == [warning]
    listed = {a["name"]: a["warnings"] for a in t.client.list_agents()}
    assert listed["claude-fan"] == [warning]
    assert not any(w for name, w in listed.items() if name != "claude-fan")
    # Providers the stack has credentials for, or no provider (the default, simulated).
    for body in ({"provider": "openai"}, {"provider": "simulated"}, {}):
        r = t.client.http.put("/v1/agents/claude-fan", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["warnings"] == [], body


def test_agent_warnings_are_in_the_openapi_schema(stack):
    import httpx

    schemas = httpx.get(f"{stack.url}/openapi.json").json()["components"]["schemas"]
    assert schemas["AgentOut"]["properties"]["warnings"]["items"] == {
        "$ref": "#/components/schemas/AgentWarning"
    }
    warning = schemas["AgentWarning"]
    code = warning["properties"]["code"]
    # One known code is a "const"; more would make an "enum".
    assert code.get("enum", [code.get("const")]) == ["provider_not_configured"]
    assert set(warning["required"]) == {"code", "message", "provider", "missing_settings"}


def test_podium_agents_import_reports_failures_and_goes_on(stack, make_tenant, tmp_path):
    t = make_tenant()
    path = tmp_path / "agents.yaml"
    path.write_text(
        "- name: good-one\n  description: fine\n"
        "- name: bad-provider\n  aiProvider: google\n"
        "- name: too-hot\n  temperature: 7\n"
        "- name: needs-ghost\n  sub_agents: [ghost]\n"
    )
    result = _import(stack, t.key, "import", str(path))
    assert result.returncode == 1
    out = result.stdout
    assert "created  good-one" in out
    assert "agent 'bad-provider'" in out
    assert "'google'" in out
    assert "failed   too-hot: validation_error" in out
    assert "failed   needs-ghost: unknown_agent" in out
    assert out.splitlines()[-1] == "1 created, 0 replaced, 3 failed"
    assert t.client.get_agent("good-one")["description"] == "fine"


def test_podium_agents_import_handles_sub_agent_cycles(stack, make_tenant, tmp_path):
    t = make_tenant()
    path = tmp_path / "cycle.yaml"
    path.write_text(
        "agents:\n"
        "  - {name: ping, sub_agents: [pong]}\n"
        "  - {name: pong, sub_agents: [ping, coder]}\n"
    )
    result = _import(stack, t.key, "import", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert t.client.get_agent("ping")["sub_agents"] == ["pong"]
    assert t.client.get_agent("pong")["sub_agents"] == ["ping", "coder"]
    assert result.stdout.splitlines()[-1] == "2 created, 0 replaced, 0 failed"


def test_concurrent_creations_of_one_name_are_one_create_and_replaces(make_tenant):
    from concurrent.futures import ThreadPoolExecutor

    t = make_tenant()

    def put(i):
        return t.client.http.put("/v1/agents/racer", json={"description": f"v{i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(put, range(8)))
    assert statuses == [200] * 7 + [201]
    assert [a["name"] for a in t.client.list_agents()].count("racer") == 1
