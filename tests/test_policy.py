"""The policy file: loading, validation errors with file and line, grants, contracts, tokens.

Data files: ``policies/valid/*.yaml`` must load; each ``policies/invalid/*.yaml`` starts with
``# expect: <line>: <substring>``, the line and part of the message its error must report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from lakewarden.errors import ConfigurationError
from lakewarden.governance.policy import (
    OPEN_POLICY,
    AgentPolicy,
    AnomalyRule,
    Policy,
    load_policy,
    parse_duration,
    parse_policy,
)

POLICIES = Path(__file__).parent / "policies"
VALID = sorted((POLICIES / "valid").glob("*.yaml"))
INVALID = sorted((POLICIES / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"# expect: (\d+): (.+)")


def _problems(error: ConfigurationError) -> list[str]:
    return [violation.detail for violation in error.violations]


# --- data files -------------------------------------------------------------------------------


def test_there_are_data_files() -> None:
    assert len(VALID) >= 5
    assert len(INVALID) >= 50


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_file_loads(path: Path) -> None:
    assert load_policy(path).version == 1


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_file_names_file_line_and_field(path: Path) -> None:
    expect = EXPECT.match(path.read_text().splitlines()[0])
    assert expect, f"{path.name}: first line must be '# expect: <line>: <substring>'"
    line, substring = int(expect.group(1)), expect.group(2)
    with pytest.raises(ConfigurationError) as caught:
        load_policy(path)
    prefix = f"{path}:{line}: "
    assert any(p.startswith(prefix) and substring in p for p in _problems(caught.value)), (
        f"no problem starting {prefix!r} containing {substring!r} in:\n{caught.value}"
    )
    assert str(path) in str(caught.value)


def test_design_example_reads_as_written() -> None:
    policy = load_policy(POLICIES / "valid" / "design_example.yaml")
    etl = policy.agent("etl-agent")
    assert etl == AgentPolicy(
        token_env="LW_TOKEN_ETL",
        read=("*",),
        write=("orders", "staging.*"),
        ddl=False,
        max_rows=10000,
        timeout_s=10.0,
        mode="warn",
    )
    orders = policy.contract("orders")
    assert orders is not None
    assert orders.event_time == "updated_at"
    assert orders.freshness_sla == 3600.0
    assert orders.schema_mode == "additive"
    assert orders.volume.max_rows_per_write == 100000
    assert orders.volume.max_delete_ratio == 0.1
    assert orders.volume.max_update_ratio is None
    order_id = orders.column("order_id")
    assert order_id is not None and order_id.type == "BIGINT" and not order_id.nullable
    email = orders.column("email")
    assert email is not None and email.type is None and email.nullable
    assert email.max_null_ratio == 0.05
    assert orders.anomaly.volume == AnomalyRule()  # defaults when not written


def test_every_field_is_read_and_normalized() -> None:
    policy = load_policy(POLICIES / "valid" / "every_field.yaml")
    assert policy.mode == "warn"
    assert policy.restore == ("ops-agent", "etl-agent")
    assert set(policy.agents) == {"etl-agent", "analyst", "ops-agent"}
    etl = policy.agents["etl-agent"]
    assert etl.write == ("orders", "staging.*")  # patterns lower-cased
    assert etl.ddl is True and etl.max_rows == 500 and etl.timeout_s == 2.5
    assert policy.agents["ops-agent"].read == ()
    assert set(policy.tables) == {"orders", "staging.events", "raw.clicks"}
    orders = policy.tables["orders"]
    assert orders.event_time == "updated_at"
    assert orders.freshness_sla == 5400.0
    assert orders.schema_mode == "locked"
    assert orders.volume.max_delete_ratio == 0.0 and orders.volume.max_update_ratio == 1.0
    assert set(orders.columns) == {"order_id", "email", "amount"}
    assert orders.columns["order_id"].type == "BIGINT"
    assert orders.columns["amount"].type == "DECIMAL(18, 2)"
    assert orders.column("ORDER_ID") is orders.columns["order_id"]
    volume, freshness = orders.anomaly.volume, orders.anomaly.freshness
    assert (volume.min_training, volume.threshold, volume.direction) == (3, 3.5, "drop")
    assert (volume.min_abs_change, volume.min_rel_change) == (10.0, 0.2)
    assert volume.seasonality == "hour_of_week"
    assert freshness.enabled is False and freshness.min_training == 14
    staging = policy.tables["staging.events"]
    assert staging.freshness_sla == 300.0 and staging.schema_mode == "free"


def test_merge_keys_apply() -> None:
    policy = load_policy(POLICIES / "valid" / "merge_keys.yaml")
    writer = policy.agents["writer"]
    assert (writer.read, writer.write, writer.max_rows, writer.timeout_s) == (
        ("*",),
        ("orders",),
        10,
        5.0,
    )


def test_durations_file() -> None:
    tables = load_policy(POLICIES / "valid" / "durations.yaml").tables
    assert {name: contract.freshness_sla for name, contract in tables.items()} == {
        "t_seconds": 90.0,
        "t_float": 0.5,
        "t_s": 90.0,
        "t_m": 300.0,
        "t_h": 3600.0,
        "t_d": 172800.0,
        "t_w": 604800.0,
        "t_hm": 5400.0,
        "t_spaced": 5400.0,
        "t_quoted_number": 45.0,
        "t_decimal": 5400.0,
        "t_none": None,
    }


# --- error reporting --------------------------------------------------------------------------


def test_every_problem_is_reported_in_line_order() -> None:
    text = (
        "version: 1\n"
        "agents:\n"
        "  etl: {max_rows: 0, tokn_env: X}\n"
        "tables:\n"
        "  orders:\n"
        "    volume: {max_delete_ratio: 2}\n"
        "    freshness_sla: soon\n"
        "mode: strict\n"
    )
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(text, source="p.yaml")
    problems = _problems(caught.value)
    assert [p.split(": ")[0] for p in problems] == [
        "p.yaml:3",
        "p.yaml:3",
        "p.yaml:6",
        "p.yaml:7",
        "p.yaml:8",
    ]
    assert str(caught.value).startswith("invalid policy p.yaml (5 problems):\n")
    assert caught.value.code == "invalid_configuration"
    assert all(v.rule == "policy_file" for v in caught.value.violations)


def test_default_source_name() -> None:
    with pytest.raises(ConfigurationError, match=r"<string>:1: mode: Input should be"):
        parse_policy("mode: nope\nversion: 1\n")


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match=r"cannot read policy file .*nope\.yaml"):
        load_policy(missing)


def test_block_value_reports_key_line() -> None:
    text = "version: 1\nagents:\n  etl:\n    read:\n      - orders\n    ddl:\n      maybe\n"
    with pytest.raises(ConfigurationError, match=r"<string>:6: agents\.etl\.ddl: "):
        parse_policy(text)


def test_control_character_names_its_line() -> None:
    with pytest.raises(
        ConfigurationError, match=r"<string>:2: invalid YAML: unacceptable character"
    ):
        parse_policy("version: 1\nmode: \x07\n")


def test_recursive_alias_does_not_hang() -> None:
    with pytest.raises(ConfigurationError, match=r"<string>:2: agents\.etl\.etl: unknown key"):
        parse_policy("version: 1\nagents: &a {etl: *a}\n")


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        (" 1h 30m ", 5400.0),
        ("0.5m", 30.0),
        ("120", 120.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "invalid duration ''"),
        ("5x", "invalid duration '5x'"),
        ("1mo", "invalid duration '1mo'"),
        ("h", "invalid duration 'h'"),
        ("1h30", "invalid duration '1h30'"),
        ("-5m", "invalid duration '-5m'"),
        ("1H", "invalid duration '1H'"),
        (-1, "non-negative"),
        ("nan", "finite"),
        (float("inf"), "finite"),
        (True, "invalid duration True"),
        (None, "invalid duration None"),
        ([1], "invalid duration [1]"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


# --- grants -----------------------------------------------------------------------------------

GLOB_CASES = [
    # pattern, table, matches
    ("*", "orders", True),
    ("*", "main.orders", True),
    ("*", "staging.events", True),
    ("*", "lake.staging.events", True),
    ("orders", "orders", True),
    ("orders", "main.orders", True),
    ("orders", "ORDERS", True),
    ("orders", "lake.main.orders", True),
    ("orders", "staging.orders", False),
    ("orders", "orders_archive", False),
    ("main.orders", "orders", True),
    ("Main.Orders", "orders", True),
    ("main.orders", "staging.orders", False),
    ("staging.*", "staging.events", True),
    ("staging.*", "STAGING.Events", True),
    ("staging.*", "events", False),
    ("staging.*", "main.staging_events", False),
    ("main.*", "orders", True),
    ("main.*", "staging.orders", False),
    ("ord*", "orders", True),
    ("ord*", "staging.orders", False),
    ("*s", "staging.events", False),
    ("*.events", "staging.events", True),
    ("*.events", "events", True),
    ("*.*", "staging.events", True),
    ("order?", "orders", True),
    ("order?", "order", False),
    ("[ab]*", "audit", True),
    ("[ab]*", "orders", False),
]


@pytest.mark.parametrize(("pattern", "table", "expected"), GLOB_CASES)
def test_glob_matching(pattern: str, table: str, expected: bool) -> None:
    agent = AgentPolicy(read=(pattern,), write=(pattern,))
    assert agent.can_read(table) is expected
    assert agent.can_write(table) is expected


def test_default_grants_read_everything_write_nothing() -> None:
    agent = AgentPolicy()
    assert agent.can_read("orders") and agent.can_read("staging.events")
    assert not agent.can_write("orders")
    assert not agent.ddl and agent.max_rows is None and agent.timeout_s is None


def test_read_and_write_are_separate_grants() -> None:
    agent = AgentPolicy(read=("staging.*",), write=("orders",))
    assert agent.can_read("staging.events") and not agent.can_write("staging.events")
    assert agent.can_write("orders") and not agent.can_read("orders")


def test_effective_mode_and_restore() -> None:
    policy = parse_policy(
        "version: 1\nmode: enforce\nrestore: [ops]\n"
        "agents: {etl: {mode: warn}, ops: {}, watcher: {mode: observe}}\n"
    )
    assert policy.effective_mode("etl") == "warn"
    assert policy.effective_mode("ops") == "enforce"
    assert policy.effective_mode("watcher") == "observe"
    assert policy.effective_mode("stranger") == "enforce"
    assert policy.agent("stranger") is None
    assert policy.can_restore("ops") and not policy.can_restore("etl")


def test_mode_defaults_to_enforce() -> None:
    assert parse_policy("version: 1").mode == "enforce"


def test_contract_lookup_is_normalized() -> None:
    policy = parse_policy("version: 1\ntables: {Orders: {}, staging.Events: {schema: locked}}\n")
    assert set(policy.tables) == {"orders", "staging.events"}
    orders = policy.contract("orders")
    assert orders is not None
    for name in ("ORDERS", "main.orders", "Main.Orders", "lake.main.orders", " orders "):
        assert policy.contract(name) is orders
    events = policy.contract("STAGING.events")
    assert events is not None and events.schema_mode == "locked"
    assert policy.contract("events") is None
    assert policy.contract("other.orders") is None


def test_models_are_frozen() -> None:
    policy = parse_policy("version: 1\nagents: {etl: {}}\n")
    with pytest.raises(ValidationError):
        policy.mode = "observe"
    with pytest.raises(ValidationError):
        policy.agents["etl"].ddl = True


def test_models_reject_unknown_fields_in_code_too() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AgentPolicy.model_validate({"writes": ["orders"]})


# --- tokens -----------------------------------------------------------------------------------

TOKENS = """\
version: 1
agents:
  etl: {token_env: LW_T_ETL}
  ops: {token_env: LW_T_OPS}
  sdk: {}
"""


def test_token_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LW_T_ETL", "etl-secret")
    monkeypatch.setenv("LW_T_OPS", "ops-secret")
    policy = parse_policy(TOKENS)
    assert policy.requires_tokens
    assert policy.missing_tokens() == []
    assert policy.agent_for_token("etl-secret") == "etl"
    assert policy.agent_for_token("ops-secret") == "ops"
    assert policy.agent_for_token("etl-secret ") is None
    assert policy.agent_for_token("ETL-SECRET") is None
    assert policy.agent_for_token("wrong") is None
    assert policy.agent_for_token("") is None
    assert policy.agent_for_token(None) is None
    assert policy.agent_for_token("nön-ascii") is None


def test_tokens_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LW_T_ETL", raising=False)
    monkeypatch.setenv("LW_T_OPS", "")
    policy = parse_policy(TOKENS)  # unset tokens do not stop loading
    assert policy.missing_tokens() == ["LW_T_ETL", "LW_T_OPS"]
    assert policy.agent_for_token("etl-secret") is None
    assert policy.agent_for_token("") is None  # an empty variable is not an empty token
    monkeypatch.setenv("LW_T_ETL", "etl-secret")
    assert policy.missing_tokens() == ["LW_T_OPS"]
    assert policy.agent_for_token("etl-secret") == "etl"


def test_equal_tokens_identify_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LW_T_ETL", "same")
    monkeypatch.setenv("LW_T_OPS", "same")
    assert parse_policy(TOKENS).agent_for_token("same") is None


def test_no_token_env_means_no_tokens_required() -> None:
    policy = parse_policy("version: 1\nagents: {etl: {}}\n")
    assert not policy.requires_tokens
    assert policy.missing_tokens() == []
    assert policy.agent_for_token("anything") is None


# --- open mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [OPEN_POLICY, Policy.open()], ids=["constant", "classmethod"])
def test_open_policy_allows_everything(policy: Policy) -> None:
    assert policy.is_open
    assert policy.mode == "observe"
    assert policy.tables == {} and policy.contract("orders") is None
    assert not policy.requires_tokens and policy.missing_tokens() == []
    for name in ("anonymous", "etl-agent", "anything at all"):
        agent = policy.agent(name)
        assert agent is not None and agent.ddl
        assert agent.max_rows is None and agent.timeout_s is None
        for table in ("orders", "staging.events", "lake.raw.clicks"):
            assert agent.can_read(table) and agent.can_write(table)
        assert policy.effective_mode(name) == "observe"
        assert policy.can_restore(name)


def test_a_loaded_policy_is_not_open() -> None:
    assert not parse_policy("version: 1").is_open
