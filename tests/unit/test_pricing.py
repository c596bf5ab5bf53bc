"""The price table: packaged entries, lookup order, unknown models, file overrides."""

from __future__ import annotations

import pytest

from podium.pricing import (
    DEFAULT_PRICES_FILE,
    CostEstimate,
    Price,
    PriceConfigError,
    PriceTable,
    cached_price_table,
)
from podium.settings import Settings, get_settings


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.default()


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4.1", 2.00, 8.00),
        ("gpt-4.1-mini", 0.40, 1.60),
        ("o3-mini", 1.10, 4.40),
        ("claude-sonnet-4-5", 3.00, 15.00),
        ("claude-haiku-4-5", 1.00, 5.00),
        ("claude-opus-4-1", 15.00, 75.00),
    ],
)
def test_common_models_have_list_prices(table, model, input_price, output_price):
    price = table.price(model)
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (input_price, output_price)


def test_the_table_is_dated(table):
    assert table.as_of is not None
    assert table.as_of.startswith("20")


def test_cost_is_per_million_tokens(table):
    # 1M input at $2.50 plus 0.5M output at $10.
    assert table.cost_usd("gpt-4o", "openai", 1_000_000, 500_000) == pytest.approx(7.5)
    assert table.cost_usd("gpt-4o-mini", None, 1000, 1000) == pytest.approx(0.00075)


def test_dated_snapshots_match_their_family_not_a_sibling(table):
    assert table.price("gpt-4o-2024-08-06").key == "gpt-4o-20*"
    assert table.price("gpt-4o-mini-2024-07-18").input_per_mtok == 0.15
    assert table.price("claude-sonnet-4-5-20250929", "anthropic").output_per_mtok == 15.0
    assert table.price("claude-opus-4-1-20250805").input_per_mtok == 15.0


def test_lookup_is_case_insensitive(table):
    assert table.price("GPT-4o") == table.price("gpt-4o")


def test_simulated_models_have_a_nominal_nonzero_price(table):
    estimate = table.estimate("simulated-1", "simulated", 1_000_000, 1_000_000)
    assert estimate.known
    assert estimate.usd == pytest.approx(3.0)  # $1 in + $2 out per 1M
    # Whatever model name the simulated provider serves, it is not billed as the real one.
    assert table.price("gpt-4o", "simulated").key == "simulated/*"
    assert table.price("simulated-fast").input_per_mtok == 1.0


@pytest.mark.parametrize(
    "model", ["local/qwen2.5-7b", "llama3.1:8b", "TheBloke/Mistral-7B-Instruct-GGUF", "x.gguf"]
)
def test_local_models_are_free(table, model):
    estimate = table.estimate(model, "openai", 10_000, 10_000)
    assert estimate == CostEstimate(usd=0.0, known=True, price=table.price(model, "openai"))


def test_unknown_models_cost_zero_and_say_so(table):
    assert table.price("mystery-model") is None
    assert table.estimate("mystery-model", "openai", 100, 100) == CostEstimate(0.0, known=False)
    assert table.cost_usd("mystery-model", None, 100, 100) == 0.0


def test_negative_tokens_are_refused(table):
    with pytest.raises(ValueError, match="token counts"):
        table.estimate("gpt-4o", None, -1, 0)


def test_exact_beats_glob_and_qualified_beats_bare():
    table = PriceTable(
        {
            "*": Price(9, 9),
            "gpt-x": Price(1, 1),
            "acme/*": Price(5, 5),
            "acme/gpt-x": Price(2, 2),
            "gpt-*": Price(3, 3),
        }
    )
    assert table.price("gpt-x").input_per_mtok == 1  # exact before any glob
    assert table.price("gpt-y").input_per_mtok == 9  # first matching glob in file order
    assert table.price("gpt-x", "acme").input_per_mtok == 2  # qualified exact
    assert table.price("other", "acme").input_per_mtok == 5  # qualified glob
    # The bare catch-all does not shadow the bare exact entry for another provider.
    assert table.price("gpt-x", "openai").input_per_mtok == 1


def test_a_prices_file_replaces_the_table(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text('as_of: "2030-01-01"\nmodels:\n  house-*: {input: 4, output: 8}\n')
    table = PriceTable.load(path)
    assert table.as_of == "2030-01-01"
    assert table.cost_usd("house-large", None, 1_000_000, 0) == 4.0
    assert table.price("gpt-4o") is None


def test_load_honours_podium_prices_file(tmp_path, monkeypatch):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  only-me: {input: 1, output: 1}\n")
    monkeypatch.setenv("PODIUM_PRICES_FILE", str(path))
    get_settings.cache_clear()
    try:
        assert Settings().prices_file == str(path)
        assert PriceTable.load().price("only-me") is not None
    finally:
        monkeypatch.delenv("PODIUM_PRICES_FILE")
        get_settings.cache_clear()
    assert PriceTable.load().price("gpt-4o") is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "models"),
        ("models:\n  m: {input: 1}\n", "needs `input` and `output`"),
        ("models:\n  m: {input: -1, output: 1}\n", ">= 0"),
        ("models:\n  m: {input: cheap, output: 1}\n", "must be a number"),
        ("models: [unclosed\n", "cannot read"),
    ],
)
def test_bad_files_are_reported_clearly(tmp_path, content, message):
    path = tmp_path / "prices.yaml"
    path.write_text(content)
    with pytest.raises(PriceConfigError, match=message):
        PriceTable.load(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(PriceConfigError, match="cannot read"):
        PriceTable.load(tmp_path / "nope.yaml")


def test_cached_table_is_parsed_once():
    assert cached_price_table(None) is cached_price_table(None)
    assert cached_price_table(str(DEFAULT_PRICES_FILE)).price("gpt-4o") is not None
