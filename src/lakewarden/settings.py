"""Settings: documented ``LAKEWARDEN_*`` environment variables, validated at start-up.

OpenTelemetry export is configured only by the standard ``OTEL_*`` variables (see
:mod:`lakewarden.telemetry.provider`).

| variable | default | meaning |
|---|---|---|
| LAKEWARDEN_STATEMENT_TIMEOUT_S | 30 | time limit of one statement, seconds (0 = none) |
| LAKEWARDEN_MEMORY_LIMIT | 4GB | DuckDB memory limit |
| LAKEWARDEN_THREADS | 2 | DuckDB worker threads |
| LAKEWARDEN_PROFILE_MAX_AGE_S | 86400 | re-base a table's signals by a full profile when older |
| LAKEWARDEN_CATALOG | duckdb | catalog of a new lake: duckdb (one process) or sqlite (several) |
| LAKEWARDEN_AUDIT_RETENTION_DAYS | 90 | audit records older than this are pruned at start-up |
| LAKEWARDEN_MAX_STATEMENT_CHARS | 100000 | longest SQL statement accepted, checked before parsing |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lakewarden.errors import ConfigurationError

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
CATALOGS = ("duckdb", "sqlite")


@dataclass(frozen=True)
class Settings:
    statement_timeout_s: float = 30.0
    memory_limit: str = "4GB"
    threads: int = 2
    profile_max_age_s: float = 86400.0
    catalog: str = "duckdb"
    audit_retention_days: float = 90.0
    max_statement_chars: int = 100_000

    def __post_init__(self) -> None:
        if self.statement_timeout_s < 0:
            raise ConfigurationError("LAKEWARDEN_STATEMENT_TIMEOUT_S must be >= 0 (0 = no limit)")
        if not _MEMORY.match(self.memory_limit):
            raise ConfigurationError(
                f"LAKEWARDEN_MEMORY_LIMIT={self.memory_limit!r} is not a size like 512MB or 4GB"
            )
        if self.threads < 1:
            raise ConfigurationError("LAKEWARDEN_THREADS must be >= 1")
        if self.profile_max_age_s <= 0:
            raise ConfigurationError("LAKEWARDEN_PROFILE_MAX_AGE_S must be > 0")
        if self.audit_retention_days <= 0:
            raise ConfigurationError("LAKEWARDEN_AUDIT_RETENTION_DAYS must be > 0")
        if self.max_statement_chars < 1:
            raise ConfigurationError("LAKEWARDEN_MAX_STATEMENT_CHARS must be >= 1")
        if self.catalog not in CATALOGS:
            raise ConfigurationError(
                f"LAKEWARDEN_CATALOG={self.catalog!r}: use one of {', '.join(CATALOGS)}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, default: float, cast: type = float) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return cast(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r} is not a number") from exc

        return cls(
            statement_timeout_s=number("LAKEWARDEN_STATEMENT_TIMEOUT_S", cls.statement_timeout_s),
            memory_limit=env.get("LAKEWARDEN_MEMORY_LIMIT", cls.memory_limit).strip(),
            threads=int(number("LAKEWARDEN_THREADS", cls.threads, int)),
            profile_max_age_s=number("LAKEWARDEN_PROFILE_MAX_AGE_S", cls.profile_max_age_s),
            catalog=env.get("LAKEWARDEN_CATALOG", cls.catalog).strip().lower(),
            audit_retention_days=number(
                "LAKEWARDEN_AUDIT_RETENTION_DAYS", cls.audit_retention_days
            ),
            max_statement_chars=int(
                number("LAKEWARDEN_MAX_STATEMENT_CHARS", cls.max_statement_chars, int)
            ),
        )
