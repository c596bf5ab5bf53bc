"""The built-in tools and the registry the executor runs them through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from podium.tools_catalog import BUILTIN_TOOLS, CONTROL_TOOLS
from podium_agent_worker.tools import (
    MAX_RESULT_CHARS,
    ToolContext,
    ToolError,
    ToolRegistry,
    default_registry,
    validate_arguments,
)
from podium_agent_worker.tools.calculator import CalculatorTool, evaluate, format_number
from podium_agent_worker.tools.clock import CurrentTimeTool
from podium_agent_worker.tools.search import SearchThreadTool
from podium_agent_worker.tools.search_impl import make_snippet, query_terms, search_events

EVENTS = [
    (1, "user", None, "What is the capital of France? Also the budget for Q3."),
    (2, "assistant", "ada", "The capital of France is Paris."),
    (3, "user", None, "And the Q3 budget\nwas approved by finance?"),
    (4, "assistant", "bob", "Yes: the Q3 budget of 40k was approved on Monday."),
]


def make_ctx(events=EVENTS) -> ToolContext:
    return ToolContext(
        tenant_id="t1",
        thread_id="th1",
        run_id="r1",
        search=lambda query, limit: search_events(events, query, limit),
    )


# --- calculator ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 2", "4"),
        ("7 - 10", "-3"),
        ("6 * 7", "42"),
        ("1 / 4", "0.25"),
        ("6 / 3", "2"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-(3 + 4) * +2", "-14"),
        ("((1 + 2) * (3 + 4))", "21"),
        ("abs(-5.5)", "5.5"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("min(4, 2, 8)", "2"),
        ("max(4, 2.5)", "4"),
        ("sqrt(16)", "4"),
        ("sqrt(2)", "1.41421356237"),
        ("pi", "3.14159265359"),
        ("e ** 1", "2.71828182846"),
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("10 ** 20", "100000000000000000000"),
        ("1e-20 * 3", "3e-20"),
        ("-0.0", "0"),
        ("1_000 * 3", "3000"),
    ],
)
def test_calculator_evaluates_arithmetic(expression, expected):
    assert format_number(evaluate(expression)) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "only these functions"),
        ("__import__('os').system('ls')", "attribute access|only these functions"),
        ("(1).real", "attribute access"),
        ("pi.__class__", "attribute access"),
        ("open('/etc/passwd')", "only these functions"),
        ("x + 1", "unknown name 'x'"),
        ("abs", "is a function"),
        ("'abc'", "not a number"),
        ("True + 1", "not a number"),
        ("1j", "not a number"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1 if 2 else 3", "not allowed"),
        ("1 < 2", "not allowed"),
        ("2 ^ 3", "use \\*\\* for powers"),
        ("1 << 3", "not supported"),
        ("round(1.5, ndigits=1)", "positional"),
        ("max(*[1, 2])", "positional"),
        ("sqrt(1, 2)", "takes 1 argument"),
        ("min()", "1 or more"),
        ("round(5, -1000)", "digits"),
        ("round(5, 1.5)", "integer"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10.0 ** 400", "too large"),
        ("1e308 * 10", "too large"),
        ("(10 ** 1000) ** 5", "too large"),
        ("10 ** 1000 / 3", "too large"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-4)", "not a real number"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("", "empty"),
        ("1 +", "not a valid"),
        ("1" * 501, "longer than 500"),
        ("(" * 240 + "1" + ")" * 240, "nested|not a valid"),
    ],
)
def test_calculator_refuses_clearly(expression, message):
    with pytest.raises(ToolError, match=message):
        evaluate(expression)


def test_huge_powers_are_refused_quickly():
    import time

    started = time.perf_counter()
    for expression in ("9**9**9", "2**2**2**2**2**2", "99999**99999", "(2**4000)**(2**4000)"):
        with pytest.raises(ToolError):
            evaluate(expression)
    assert time.perf_counter() - started < 0.5


def test_calculator_tool_runs_through_the_registry():
    result = default_registry().run("calculator", {"expression": "12 * (3 + 4)"}, make_ctx())
    assert result == ("84", True)


# --- current_time --------------------------------------------------------------------------

FIXED = datetime(2025, 3, 14, 12, 30, 15, tzinfo=UTC)


def test_current_time_defaults_to_utc():
    tool = CurrentTimeTool(now=lambda: FIXED)
    assert tool.run({}, make_ctx()) == "2025-03-14T12:30:15+00:00 (UTC, Friday)"


def test_current_time_in_a_named_zone():
    tool = CurrentTimeTool(now=lambda: FIXED)
    assert tool.run({"timezone": "Asia/Tokyo"}, make_ctx()) == (
        "2025-03-14T21:30:15+09:00 (Asia/Tokyo, Friday)"
    )
    summer = CurrentTimeTool(now=lambda: datetime(2025, 7, 1, 12, 0, tzinfo=UTC))
    assert summer.run({"timezone": "Europe/Paris"}, make_ctx()).startswith(
        "2025-07-01T14:00:00+02:00 (Europe/Paris"
    )


def test_current_time_treats_naive_now_as_utc_and_converts_aware_ones():
    naive = CurrentTimeTool(now=lambda: datetime(2025, 1, 1, 0, 0))
    assert naive.run({"timezone": "utc"}, make_ctx()).startswith("2025-01-01T00:00:00+00:00")
    other = CurrentTimeTool(
        now=lambda: datetime(2025, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    )
    assert other.run({}, make_ctx()).startswith("2025-01-01T00:00:00+00:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "Not a zone"])
def test_current_time_rejects_unknown_zones_with_an_example(zone):
    with pytest.raises(ToolError, match="Europe/Paris"):
        CurrentTimeTool(now=lambda: FIXED).run({"timezone": zone}, make_ctx())


def test_current_time_real_clock_is_iso():
    text, ok = default_registry().run("current_time", {"timezone": None}, make_ctx())
    assert ok
    assert datetime.fromisoformat(text.split(" ")[0]).tzinfo is not None


# --- search --------------------------------------------------------------------------------


def test_search_events_matches_all_words_newest_first():
    hits = search_events(EVENTS, "Q3 budget", 10)
    assert [h["seq"] for h in hits] == [4, 3, 1]
    assert hits[0] == {
        "seq": 4,
        "role": "assistant",
        "agent": "bob",
        "snippet": "Yes: the Q3 budget of 40k was approved on Monday.",
    }
    assert [h["seq"] for h in search_events(EVENTS, "FRANCE paris", 10)] == [2]
    assert search_events(EVENTS, "q3 budget", 1)[0]["seq"] == 4


def test_search_events_phrases_limits_and_empty_queries():
    assert [h["seq"] for h in search_events(EVENTS, '"budget was approved"', 5)] == [3]
    assert search_events(EVENTS, "   ", 5) == []
    assert search_events(EVENTS, "budget", 0) == []
    assert search_events(EVENTS, "budget nowhere", 5) == []
    assert query_terms('Q3 "the  Budget" q3') == ["q3", "the budget"]


def test_snippets_are_windows_around_the_match():
    content = "x" * 500 + " the needle is here " + "y" * 500
    snippet = make_snippet(content, ["needle"])
    assert "needle" in snippet
    assert snippet.startswith("…")
    assert snippet.endswith("…")
    assert len(snippet) <= 162
    assert make_snippet("short text", ["text"]) == "short text"


def test_search_thread_tool_formats_hits():
    text, ok = default_registry().run("search_thread", {"query": "budget", "limit": 2}, make_ctx())
    assert ok
    assert text.splitlines() == [
        "2 message(s) match 'budget', newest first:",
        "#4 assistant/bob: Yes: the Q3 budget of 40k was approved on Monday.",
        "#3 user: And the Q3 budget was approved by finance?",
    ]


def test_search_thread_tool_without_hits_and_default_limit():
    calls: list[tuple[str, int]] = []

    def search(query: str, limit: int) -> list[dict]:
        calls.append((query, limit))
        return []

    ctx = ToolContext("t", "th", "r", search=search)
    assert SearchThreadTool().run({"query": " zebra "}, ctx) == "no messages match 'zebra'"
    assert calls == [("zebra", 5)]


# --- registry ------------------------------------------------------------------------------


def test_default_registry_uses_the_catalog_specs():
    registry = default_registry()
    assert registry.names == ["calculator", "current_time", "search_thread"]
    for spec in registry.specs_for(list(BUILTIN_TOOLS)):
        assert spec is BUILTIN_TOOLS[spec.name]
    assert CalculatorTool.spec is BUILTIN_TOOLS["calculator"]


def test_specs_follow_the_allow_list_order_without_unknown_or_control_tools():
    registry = default_registry()
    allow = ["search_thread", "delegate", "nope", "calculator", "search_thread", "handoff"]
    assert [s.name for s in registry.specs_for(allow)] == ["search_thread", "calculator"]
    assert registry.specs_for([]) == []


def test_registry_refuses_duplicates_and_control_tools():
    registry = default_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CalculatorTool())

    class Delegate:
        spec = CONTROL_TOOLS["delegate"]

        def run(self, arguments, ctx):
            return ""

    with pytest.raises(ValueError, match="control tool"):
        ToolRegistry().register(Delegate())


def test_unknown_and_disallowed_tools_are_errors_for_the_model():
    registry = default_registry()
    text, ok = registry.run("rm_rf", {}, make_ctx())
    assert not ok
    assert text.startswith("error: unknown tool 'rm_rf'")
    assert "calculator" in text
    text, ok = registry.run("calculator", {"expression": "1"}, make_ctx(), allowed=["current_time"])
    assert (ok, text) == (False, "error: tool 'calculator' is not available to this agent")
    text, ok = registry.run("nope", {}, make_ctx(), allowed=["current_time"])
    assert "available: current_time" in text


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("calculator", {}, "'expression' is required"),
        ("calculator", {"expression": None}, "'expression' is required"),
        ("calculator", {"expression": 42}, "'expression' must be a string, not integer"),
        ("calculator", {"expression": "1" * 501}, "at most 500 characters"),
        ("calculator", {"expression": "1", "extra": 1}, "unknown argument 'extra'"),
        ("search_thread", {"query": ""}, "at least 1 characters"),
        ("search_thread", {"query": "a", "limit": 0}, "'limit' must be >= 1"),
        ("search_thread", {"query": "a", "limit": 99}, "'limit' must be <= 20"),
        ("search_thread", {"query": "a", "limit": "3"}, "'limit' must be an integer, not string"),
        ("search_thread", {"query": "a", "limit": True}, "must be an integer, not boolean"),
        ("search_thread", {"query": "a", "limit": 2.5}, "must be an integer, not number"),
        ("current_time", ["UTC"], "must be a JSON object"),
    ],
)
def test_invalid_arguments_are_reported(name, arguments, message):
    text, ok = default_registry().run(name, arguments, make_ctx())
    assert not ok
    assert text.startswith(f"error: invalid arguments for {name}: ")
    assert message in text


def test_integral_floats_count_as_integers():
    text, ok = default_registry().run(
        "search_thread", {"query": "budget", "limit": 1.0}, make_ctx()
    )
    assert ok
    assert text.startswith("1 message(s)")


def test_validator_covers_number_boolean_and_enum():
    schema = {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": 0},
            "flag": {"type": "boolean"},
            "mode": {"type": "string", "enum": ["a", "b"]},
        },
        "required": ["x"],
    }
    assert validate_arguments(schema, {"x": 1, "flag": False, "mode": "a", "extra": 1}) == {
        "x": 1,
        "flag": False,
        "mode": "a",
        "extra": 1,  # allowed: the schema does not forbid additional properties
    }
    with pytest.raises(ToolError) as caught:
        validate_arguments(schema, {"x": -1, "flag": "yes", "mode": "c"})
    assert str(caught.value) == (
        "'x' must be >= 0; 'flag' must be a boolean, not string; 'mode' must be one of 'a', 'b'"
    )
    with pytest.raises(ToolError, match="finite"):
        validate_arguments(schema, {"x": float("inf")})
    with pytest.raises(ToolError, match="must be a number, not boolean"):
        validate_arguments(schema, {"x": True})


def test_tool_errors_and_crashes_never_escape():
    class Boom:
        spec = BUILTIN_TOOLS["current_time"]

        def run(self, arguments, ctx):
            raise RuntimeError("secret internals")

    registry = ToolRegistry()
    registry.register(Boom())
    text, ok = registry.run("current_time", {}, make_ctx())
    assert (ok, text) == (False, "error: current_time failed unexpectedly (RuntimeError)")
    text, ok = default_registry().run("calculator", {"expression": "1/0"}, make_ctx())
    assert (ok, text) == (False, "error: division by zero")


def test_search_failure_inside_the_tool_is_contained():
    def search(query: str, limit: int) -> list[dict]:
        raise ConnectionError("db down")

    ctx = ToolContext("t", "th", "r", search=search)
    text, ok = default_registry().run("search_thread", {"query": "x"}, ctx)
    assert (ok, text) == (False, "error: search_thread failed unexpectedly (ConnectionError)")


def test_long_results_are_cut():
    class Chatty:
        spec = BUILTIN_TOOLS["calculator"]

        def run(self, arguments, ctx):
            return "z" * (MAX_RESULT_CHARS + 10)

    registry = ToolRegistry()
    registry.register(Chatty())
    text, ok = registry.run("calculator", {"expression": "1"}, make_ctx())
    assert ok
    assert text.endswith("[10 more characters cut]")
