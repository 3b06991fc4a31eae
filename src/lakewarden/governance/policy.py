"""The policy file: which agent may do what, and the data contract of each table.

A policy is YAML validated by the pydantic models below. Every problem in a file is reported at
once, as ``FILE:LINE: field.path: message``, in one :class:`ConfigurationError`.

Names follow DuckDB: table and column names are case-insensitive and stored lower-cased; a table
name without a schema is in schema ``main``, so ``main.orders`` and ``orders`` are one table.
Agent names are case-sensitive: they are identities, not SQL names.

Tokens: ``token_env`` names an environment variable that holds the agent's bearer token. It is read
at each :meth:`Policy.agent_for_token` call, not at load, so a file can be loaded (and validated by
``lakewarden policy validate``) where the tokens do not exist; :meth:`Policy.missing_tokens` tells
the server which ones it still lacks before it starts.
"""

from __future__ import annotations

import difflib
import hmac
import math
import os
import re
import types
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import ErrorDetails

from lakewarden.analysis.names import DEFAULT_SCHEMA, normalize, split_name
from lakewarden.errors import ConfigurationError, Violation
from lakewarden.signals.anomaly import AnomalyRule as ScorerRule

__all__ = [
    "OPEN_POLICY",
    "AgentPolicy",
    "AnomalyRule",
    "AnomalySettings",
    "ColumnContract",
    "FreshnessRule",
    "Maintenance",
    "Mode",
    "Policy",
    "TableContract",
    "VolumeContract",
    "load_policy",
    "parse_duration",
    "parse_policy",
]

Mode = Literal["observe", "warn", "enforce"]

# --- durations --------------------------------------------------------------------------------

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as ``90s``, ``5m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):  # bool is an int to Python, never a duration to a human
        raise ValueError(f"invalid duration {value!r}: expected seconds or a string like '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"invalid duration {value!r}: expected seconds or a string like '1h30m'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    if not stripped:
        raise ValueError("invalid duration '': expected seconds or a string like '1h30m'")
    try:
        return float(stripped)  # a quoted number of seconds
    except ValueError:
        pass
    total, pos = 0.0, 0
    while pos < len(stripped):
        match = _DURATION_PART.match(stripped, pos)
        if match is None or match.group(2) not in _UNIT_SECONDS:
            raise ValueError(
                f"invalid duration {text!r}: expected a number of seconds or parts like "
                "'90s', '5m', '1h30m', '2d' (units: s, m, h, d, w)"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


# --- names and patterns -----------------------------------------------------------------------


def _table_name(name: str) -> str:
    parts = name.strip().split(".")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"invalid table name {name!r}: use 'table' or 'schema.table'")
    return normalize(name.strip())


def _glob_pattern(pattern: str) -> str:
    parts = pattern.strip().split(".")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"invalid table pattern {pattern!r}: use 'table' or 'schema.table' globs")
    return pattern.strip().lower()


def _qualified_pattern(pattern: str) -> str:
    # A bare '*' means every table of every schema (the default read grant); any other pattern
    # without a schema is in 'main', just like a table name without one.
    if pattern == "*" or "." in pattern:
        return pattern
    return f"{DEFAULT_SCHEMA}.{pattern}"


def _matches(patterns: tuple[str, ...], table: str) -> bool:
    qualified = ".".join(split_name(table.strip()))
    return any(fnmatchcase(qualified, _qualified_pattern(p)) for p in patterns)


def _distinct_after(normalize_key: Callable[[str], str], what: str) -> WrapValidator:
    """Reject two keys that normalize to one name, which the validated dict would merge."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        validated = handler(value)  # errors inside the entries come first
        seen: dict[str, str] = {}
        for key in value:
            norm = normalize_key(key)
            if norm in seen:
                raise ValueError(f"{seen[norm]!r} and {key!r} name the same {what}")
            seen[norm] = key
        return validated

    return WrapValidator(check)


def _column_type(value: str) -> str:
    # Engines report types upper-case; one spelling makes contract comparison a string compare.
    cleaned = " ".join(value.split()).upper()
    if not cleaned:
        raise ValueError("column type must not be empty")
    return cleaned


TableName = Annotated[str, AfterValidator(_table_name)]
ColumnName = Annotated[str, Field(min_length=1), AfterValidator(str.lower)]
GlobPattern = Annotated[str, AfterValidator(_glob_pattern)]
# Agent names become metric labels and DuckLake commit authors: keep them plain.
AgentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Ratio = Annotated[float, Field(strict=True, ge=0, le=1)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


# --- models -----------------------------------------------------------------------------------


class _Model(BaseModel):
    # extra="forbid": a misspelt key must be an error, not a silently ignored rule.
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgentPolicy(_Model):
    """What one agent may do.

    ``read`` and ``write`` hold case-insensitive globs over table names: ``orders`` and
    ``main.orders`` name one table, ``staging.*`` every table of schema staging, and a bare ``*``
    every table of every schema.
    """

    token_env: EnvName | None = None
    read: tuple[GlobPattern, ...] = ("*",)
    write: tuple[GlobPattern, ...] = ()
    ddl: StrictBool = False
    max_rows: PositiveInt | None = None
    timeout_s: PositiveFloat | None = None
    mode: Mode | None = None

    def can_read(self, table: str) -> bool:
        return _matches(self.read, table)

    def can_write(self, table: str) -> bool:
        return _matches(self.write, table)


class ColumnContract(_Model):
    type: Annotated[str, AfterValidator(_column_type)] | None = None
    nullable: StrictBool = True
    max_null_ratio: Ratio | None = None


class VolumeContract(_Model):
    max_rows_per_write: PositiveInt | None = None
    max_delete_ratio: Ratio | None = None
    max_update_ratio: Ratio | None = None


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return name


def _freshness_direction(value: object) -> object:
    # Freshness "drops" when a load is late; a "spike" of writes comes early.
    return {"drop": "late", "spike": "early"}.get(value, value) if isinstance(value, str) else value


# The scorer multiplies and divides by these: infinity or NaN would pass gt=0 and break it later.
FiniteNonNegative = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
FinitePositive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
FiniteDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]


class AnomalyRule(_Model):
    """How one series (rows per write, or write lag) is scored against its own history."""

    enabled: StrictBool = True
    # Fewer than 3 points leave no spread to measure; 14 covers two weeks of daily loads.
    min_training: Annotated[int, Field(strict=True, ge=3)] = 14
    threshold: FinitePositive = 4.0
    direction: Literal["both", "drop", "spike"] = "both"
    # Floors: a perfectly regular series has zero spread, so any tiny change would score infinite.
    min_abs_change: FiniteNonNegative = 1.0
    min_rel_change: FiniteNonNegative = 0.1
    # auto: pooled, hour of day, weekday and hour of week profiles, the best the data supports.
    seasonality: Literal["auto", "none", "hour_of_day", "hour_of_week"] = "auto"
    timezone: Annotated[str, AfterValidator(_time_zone)] = "UTC"
    # A change that lasts this long is the new normal (a day: alerts stop well within 48 h).
    settle: FiniteDuration = 86400.0
    warmup: FiniteDuration = 7 * 86400.0  # no verdict before the history spans a week

    def scorer(self) -> ScorerRule:
        """The rule as the scorer takes it (:class:`lakewarden.signals.anomaly.AnomalyRule`):
        this model is its policy-file form, with durations, aliases and ``enabled``."""
        fields = self.model_dump(exclude={"enabled", "settle", "warmup"})
        return ScorerRule(**fields, settle_s=self.settle, warmup_s=self.warmup)


FreshnessDirection = Annotated[
    Literal["late", "early", "both"], BeforeValidator(_freshness_direction)
]


class FreshnessRule(AnomalyRule):
    """Freshness: ``late`` (the default) flags a gap that is too long, ``early`` a write that
    came too soon; ``drop`` means late and ``spike`` early."""

    direction: FreshnessDirection = "late"  # type: ignore[assignment]


class AnomalySettings(_Model):
    volume: AnomalyRule = Field(default_factory=AnomalyRule)
    freshness: FreshnessRule = Field(default_factory=FreshnessRule)


class TableContract(_Model):
    """The data contract of one table; every part is optional."""

    event_time: ColumnName | None = None
    freshness_sla: Duration | None = None  # seconds
    # 'schema' is a BaseModel attribute in pydantic, hence the alias.
    schema_mode: Literal["locked", "additive", "free"] = Field("free", alias="schema")
    volume: VolumeContract = Field(default_factory=VolumeContract)
    columns: Annotated[dict[ColumnName, ColumnContract], _distinct_after(str.lower, "column")] = (
        Field(default_factory=dict)
    )
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)

    def column(self, name: str) -> ColumnContract | None:
        return self.columns.get(name.lower())

    def has_column(self, name: str) -> bool:
        return name.lower() in self.columns


class Maintenance(_Model):
    """DuckLake's own upkeep, run by the sidecar on its clock (``core.monitor``).

    Every write of more rows than DuckLake inlines leaves a data file, and a table read scans
    them all: a sidecar under steady small writes made ~2.5 files a second (``benchmarks/soak.py``).
    ``every`` merges adjacent small files into larger ones (a new snapshot; time travel and
    restore still see the old files). ``keep_snapshots`` is the restore window: snapshots older
    than it are expired and the files only they used are deleted. Snapshots are never expired
    before the audit retention (``LAKEWARDEN_AUDIT_RETENTION_DAYS``), since the audit trail of
    a commit rides in its snapshot.
    """

    enabled: StrictBool = True
    every: Duration = 600.0
    keep_snapshots: Duration | None = None  # None: keep every snapshot


class Policy(_Model):
    """A whole policy file; :meth:`open` is the policy used when there is no file."""

    version: Literal[1]
    mode: Mode = "enforce"
    agents: dict[AgentName, AgentPolicy] = Field(default_factory=dict)
    restore: tuple[AgentName, ...] = ()  # after agents: its check reads them
    maintenance: Maintenance = Field(default_factory=Maintenance)
    tables: Annotated[dict[TableName, TableContract], _distinct_after(_table_name, "table")] = (
        Field(default_factory=dict)
    )

    _open: bool = PrivateAttr(default=False)

    @field_validator("agents")
    @classmethod
    def _tokens_are_distinct(cls, agents: dict[str, AgentPolicy]) -> dict[str, AgentPolicy]:
        owners: dict[str, str] = {}
        for name, agent in agents.items():
            if agent.token_env is None:
                continue
            if agent.token_env in owners:
                raise ValueError(
                    f"agents {owners[agent.token_env]!r} and {name!r} share token_env "
                    f"{agent.token_env!r}: a token must identify one agent"
                )
            owners[agent.token_env] = name
        return agents

    @field_validator("restore")
    @classmethod
    def _restore_names_agents(cls, names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        agents = info.data.get("agents")
        unknown = [name for name in names if agents is not None and name not in agents]
        if unknown:
            raise ValueError(f"unknown agent {unknown[0]!r}: restore must name listed agents")
        return names

    @classmethod
    def open(cls) -> Policy:
        """Open mode (no policy file): every agent may do everything, observed, no contracts."""
        policy = cls(version=1, mode="observe")
        policy._open = True
        return policy

    @property
    def is_open(self) -> bool:
        return self._open

    def agent(self, name: str) -> AgentPolicy | None:
        """The agent's grants; None for an agent the policy does not list."""
        return _OPEN_AGENT if self._open else self.agents.get(name)

    def effective_mode(self, agent: str) -> Mode:
        grants = self.agents.get(agent)
        return grants.mode if grants is not None and grants.mode is not None else self.mode

    def can_restore(self, agent: str) -> bool:
        return self._open or agent in self.restore

    def contract(self, table: str) -> TableContract | None:
        return self.tables.get(normalize(table.strip()))

    def event_time(self, table: str) -> str | None:
        """The event-time column the table's contract declares, if any."""
        contract = self.contract(table)
        return contract.event_time if contract is not None else None

    @property
    def requires_tokens(self) -> bool:
        return any(agent.token_env for agent in self.agents.values())

    def missing_tokens(self) -> list[str]:
        """token_env variables unset or empty now: the server must not start without them."""
        return [
            agent.token_env
            for agent in self.agents.values()
            if agent.token_env and not os.environ.get(agent.token_env)
        ]

    def agent_for_token(self, token: str | None) -> str | None:
        """The agent whose token this is, or None (also when two agents' tokens are equal)."""
        if not token:
            return None
        given = token.encode()
        # Compare with every agent, not stopping at a match: the time taken does not say which one.
        matches = [
            name
            for name, agent in self.agents.items()
            if agent.token_env
            and (secret := os.environ.get(agent.token_env))
            and hmac.compare_digest(given, secret.encode())
        ]
        return matches[0] if len(matches) == 1 else None


_OPEN_AGENT = AgentPolicy(read=("*",), write=("*",), ddl=True)
OPEN_POLICY = Policy.open()


# --- loading ----------------------------------------------------------------------------------

_KeyPath = tuple[str, ...]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; every problem is reported in one ConfigurationError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read policy file {os.fspath(path)}: {exc}") from None
    return parse_policy(text, source=os.fspath(path))


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Validate policy YAML; ``source`` names the text in error messages."""
    data, lines, problems = _read_yaml(text, source)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(error, lines, source) for error in exc.errors()]
    if problems or policy is None:
        problems.sort(key=lambda problem: problem[0])
        raise _invalid(source, [message for _, message in problems])
    return policy


def _invalid(source: str, problems: list[str]) -> ConfigurationError:
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    return ConfigurationError(
        f"invalid policy {source} ({count}):\n" + "\n".join(f"  {p}" for p in problems),
        [Violation(rule="policy_file", detail=problem) for problem in problems],
    )


def _read_yaml(text: str, source: str) -> tuple[Any, dict[_KeyPath, int], list[tuple[int, str]]]:
    """The data, the line of every key and list item, and duplicate-key problems."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise _invalid(source, [f"{source}:1: the policy is empty (it needs 'version: 1')"])
            problems: list[tuple[int, str]] = []
            _find_duplicates(node, (), source, problems, set())  # before merges are flattened
            data = loader.construct_document(node)
            lines: dict[_KeyPath, int] = {}
            _index_lines(loader, node, (), lines, set())
            return data, lines, problems
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
    except yaml.reader.ReaderError as exc:  # a control character: no mark, only a position
        line = text.count("\n", 0, exc.position) + 1
        reason = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    raise _invalid(source, [f"{source}:{line}: invalid YAML: {reason}"]) from None


def _find_duplicates(
    node: yaml.Node, path: _KeyPath, source: str, problems: list[tuple[int, str]], active: set[int]
) -> None:
    # Runs before merge keys ('<<') are flattened into their mappings: a key that overrides a
    # merged one is intended, a key written twice is not.
    if id(node) in active:
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1
                where = ".".join((*path, key))
                problems.append((line, f"{source}:{line}: {where}: duplicate key {key!r}"))
            seen.add(key)
            _find_duplicates(value_node, (*path, key), source, problems, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, (*path, str(index)), source, problems, active)
    active.discard(id(node))


def _index_lines(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: _KeyPath,
    lines: dict[_KeyPath, int],
    active: set[int],
) -> None:
    # Keys are constructed as the loader does (so `1:` is "1" like pydantic's loc), and the line
    # recorded is the key's: it is where the reader looks, also when the value spans many lines.
    if id(node) in active:  # a recursive alias
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(loader.construct_object(key_node, deep=True)))
            lines[child] = key_node.start_mark.line + 1
            _index_lines(loader, value_node, child, lines, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, str(index))
            lines[child] = item.start_mark.line + 1
            _index_lines(loader, item, child, lines, active)
    active.discard(id(node))


def _describe(error: ErrorDetails, lines: dict[_KeyPath, int], source: str) -> tuple[int, str]:
    loc = tuple(str(part) for part in error["loc"] if part != "[key]")
    known = next((loc[:n] for n in range(len(loc), 0, -1) if loc[:n] in lines), ())
    line = lines.get(known, 1)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = _unknown_key(loc)
    elif error["type"] not in ("missing", "value_error") and isinstance(
        error.get("input"), str | int | float | bool | None
    ):
        message += f" (got {error['input']!r})"
    where = f"{'.'.join(loc)}: " if loc else ""
    return line, f"{source}:{line}: {where}{message}"


def _unknown_key(loc: _KeyPath) -> str:
    key = loc[-1]
    allowed = _keys_at(loc[:-1])
    if not allowed:
        return f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(allowed)
    return f"unknown key {key!r}; {hint}"


def _keys_at(loc: _KeyPath) -> list[str]:
    """The keys the model at ``loc`` accepts, found by walking the field annotations."""
    target: Any = Policy
    loc_parts = iter(loc)
    for part in loc_parts:
        if not (isinstance(target, type) and issubclass(target, BaseModel)):
            return []
        fields = {info.alias or name: info for name, info in target.model_fields.items()}
        if part not in fields:
            return []
        target = _unwrap(fields[part].annotation)
        if get_origin(target) is dict:
            target = _unwrap(get_args(target)[1])
            next(loc_parts, None)  # the dict key
    if isinstance(target, type) and issubclass(target, BaseModel):
        return [info.alias or name for name, info in target.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation
