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
| LAKEWARDEN_DATA_PATH | | data files of a lake whose catalog is PostgreSQL (``postgres:DSN``) |
| LAKEWARDEN_AUDIT_RETENTION_DAYS | 90 | audit-table rows, refusals older than this: pruned |
| LAKEWARDEN_MAX_STATEMENT_CHARS | 100000 | longest SQL statement accepted, checked before parsing |
| LAKEWARDEN_MAX_BODY_BYTES | 1MB | largest HTTP request body (REST and MCP), checked before auth |
| LAKEWARDEN_MAX_HEADER_BYTES | 16KB | largest request line plus headers of one HTTP request |
| LAKEWARDEN_MAX_ROWS | 10000 | rows a REST/MCP read returns unless request or policy caps it |
| LAKEWARDEN_MAX_PARAMS | 10000 | most bound parameters one statement may carry |
| LAKEWARDEN_MAX_RESULT_BYTES | 64MB | largest result a read may fetch (Arrow bytes; 0 = none) |
| LAKEWARDEN_REQUEST_READ_TIMEOUT_S | 10 | s to send a head, then a body; to stall on an answer |
| LAKEWARDEN_MAX_CONNECTIONS | 256 | open HTTP connections; then the oldest idle closes, else 503 |
| LAKEWARDEN_KEEPALIVE_TIMEOUT_S | 5 | seconds an idle keep-alive connection is kept open |
| LAKEWARDEN_ADDRESS_SPACE_LIMIT | auto | a server's address-space cap (auto: memory limit + 6GB) |
| LAKEWARDEN_POLL_INTERVAL_S | 5 | seconds between monitoring evaluations (server, ``watch``) |
| LAKEWARDEN_STATE_SAVE_DELAY_MS | 250 | most a table-state change waits to be saved (0 = at once) |

Audit records carried in snapshots' extra info live as long as their snapshots.

A lake whose catalog is a PostgreSQL database is given as ``postgres:DSN`` (libpq keywords,
e.g. ``postgres:dbname=lake host=db.internal user=lakewarden``); its password comes from libpq's
own ``PGPASSWORD`` or ``PGPASSFILE``, never from the connection string.

Read by the CLI as defaults of its options (typer reads them): ``LAKEWARDEN_LAKE`` (--lake),
``LAKEWARDEN_POLICY`` (--policy), ``LAKEWARDEN_SERVER`` (--server), ``LAKEWARDEN_TOKEN``
(--token); their names are the ``ENV_*`` constants below.

Sizes are bytes, or a number with a unit (512KB, 1MB, 4GiB).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lakewarden.errors import ConfigurationError

_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
CATALOGS = ("duckdb", "sqlite")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.IGNORECASE)
# Room above the engine's memory limit for what DuckDB does not count against it (list and
# string values built inside one function call, results being rendered) and for address space
# a server maps without using it: libraries, thread stacks and allocator arenas take about
# 3.5 GB of it here under load, of which little is ever resident.
ADDRESS_SPACE_HEADROOM = 6 * 1000**3


def parse_size(name: str, raw: str | int) -> int:
    """Bytes from ``1048576``, ``1MB`` or ``1MiB``; a clear start-up error otherwise."""
    if isinstance(raw, int):
        return raw
    match = _SIZE.match(raw.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigurationError(f"{name}={raw!r} is not a size like 1048576, 512KB or 1MB")
    return int(float(match.group(1)) * _UNITS[unit])


ENV_LAKE = "LAKEWARDEN_LAKE"
ENV_DATA_PATH = "LAKEWARDEN_DATA_PATH"
# ``--lake postgres:DSN``: a lake whose catalog is a PostgreSQL database.
POSTGRES_PREFIX = "postgres:"
ENV_POLICY = "LAKEWARDEN_POLICY"
ENV_SERVER = "LAKEWARDEN_SERVER"
ENV_TOKEN = "LAKEWARDEN_TOKEN"
ENV_POLL_INTERVAL = "LAKEWARDEN_POLL_INTERVAL_S"


@dataclass(frozen=True)
class Settings:
    statement_timeout_s: float = 30.0
    memory_limit: str = "4GB"
    threads: int = 2
    profile_max_age_s: float = 86400.0
    catalog: str = "duckdb"
    data_path: str = ""
    audit_retention_days: float = 90.0
    max_statement_chars: int = 100_000
    max_body_bytes: int = 1000**2
    max_header_bytes: int = 16 * 1024
    max_params: int = 10_000
    max_rows: int = 10_000
    max_result_bytes: int = 64 * 1000**2
    max_connections: int = 256
    request_read_timeout_s: float = 10.0
    # uvicorn's own default, stated: lakewarden's client gives up idle connections after 4 s,
    # so it is never the one to send on a connection the server is closing.
    keepalive_timeout_s: float = 5.0
    address_space_limit: str = "auto"
    poll_interval_s: float = 5.0
    state_save_delay_ms: float = 250.0

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
        for name, value, least in (
            ("LAKEWARDEN_MAX_BODY_BYTES", self.max_body_bytes, 1024),
            ("LAKEWARDEN_MAX_HEADER_BYTES", self.max_header_bytes, 1024),
            ("LAKEWARDEN_MAX_PARAMS", self.max_params, 1),
            ("LAKEWARDEN_MAX_ROWS", self.max_rows, 1),
            ("LAKEWARDEN_MAX_RESULT_BYTES", self.max_result_bytes, 0),
            ("LAKEWARDEN_MAX_CONNECTIONS", self.max_connections, 1),
        ):
            if value < least:
                raise ConfigurationError(f"{name}={value} must be at least {least}")
        if not self.poll_interval_s > 0:
            raise ConfigurationError(f"{ENV_POLL_INTERVAL} must be > 0")
        if not 0 <= self.state_save_delay_ms <= 60_000:
            raise ConfigurationError(
                f"LAKEWARDEN_STATE_SAVE_DELAY_MS={self.state_save_delay_ms} must be 0..60000"
            )
        if not self.request_read_timeout_s > 0:
            raise ConfigurationError("LAKEWARDEN_REQUEST_READ_TIMEOUT_S must be > 0")
        if not 0 < self.keepalive_timeout_s <= 3600:
            raise ConfigurationError(
                f"LAKEWARDEN_KEEPALIVE_TIMEOUT_S={self.keepalive_timeout_s} must be > 0 and at "
                "most 3600"
            )
        self.address_space_bytes()  # fails here, at start-up, when malformed
        if self.catalog not in CATALOGS:
            raise ConfigurationError(
                f"LAKEWARDEN_CATALOG={self.catalog!r}: use one of {', '.join(CATALOGS)}"
            )

    def address_space_bytes(self) -> int | None:
        """The address-space cap of a server process, or None for no cap."""
        raw = self.address_space_limit.strip().lower()
        if raw == "auto":
            memory = parse_size("LAKEWARDEN_MEMORY_LIMIT", self.memory_limit.replace(" ", ""))
            return memory + ADDRESS_SPACE_HEADROOM
        limit = parse_size("LAKEWARDEN_ADDRESS_SPACE_LIMIT", raw)
        if limit == 0:
            return None
        if limit < 1000**3:
            raise ConfigurationError(
                f"LAKEWARDEN_ADDRESS_SPACE_LIMIT={self.address_space_limit!r} is below 1GB: "
                "the interpreter alone maps more than that; use auto, 0 (none) or a larger size"
            )
        return limit

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

        def size(name: str, default: int) -> int:
            raw = env.get(name)
            return default if raw is None or raw.strip() == "" else parse_size(name, raw)

        return cls(
            statement_timeout_s=number("LAKEWARDEN_STATEMENT_TIMEOUT_S", cls.statement_timeout_s),
            memory_limit=env.get("LAKEWARDEN_MEMORY_LIMIT", cls.memory_limit).strip(),
            threads=int(number("LAKEWARDEN_THREADS", cls.threads, int)),
            profile_max_age_s=number("LAKEWARDEN_PROFILE_MAX_AGE_S", cls.profile_max_age_s),
            catalog=env.get("LAKEWARDEN_CATALOG", cls.catalog).strip().lower(),
            data_path=env.get(ENV_DATA_PATH, cls.data_path).strip(),
            audit_retention_days=number(
                "LAKEWARDEN_AUDIT_RETENTION_DAYS", cls.audit_retention_days
            ),
            max_statement_chars=int(
                number("LAKEWARDEN_MAX_STATEMENT_CHARS", cls.max_statement_chars, int)
            ),
            max_body_bytes=size("LAKEWARDEN_MAX_BODY_BYTES", cls.max_body_bytes),
            max_header_bytes=size("LAKEWARDEN_MAX_HEADER_BYTES", cls.max_header_bytes),
            max_params=int(number("LAKEWARDEN_MAX_PARAMS", cls.max_params, int)),
            max_rows=int(number("LAKEWARDEN_MAX_ROWS", cls.max_rows, int)),
            max_result_bytes=size("LAKEWARDEN_MAX_RESULT_BYTES", cls.max_result_bytes),
            max_connections=int(number("LAKEWARDEN_MAX_CONNECTIONS", cls.max_connections, int)),
            request_read_timeout_s=number(
                "LAKEWARDEN_REQUEST_READ_TIMEOUT_S", cls.request_read_timeout_s
            ),
            keepalive_timeout_s=number("LAKEWARDEN_KEEPALIVE_TIMEOUT_S", cls.keepalive_timeout_s),
            address_space_limit=env.get(
                "LAKEWARDEN_ADDRESS_SPACE_LIMIT", cls.address_space_limit
            ).strip()
            or cls.address_space_limit,
            poll_interval_s=number(ENV_POLL_INTERVAL, cls.poll_interval_s),
            state_save_delay_ms=number("LAKEWARDEN_STATE_SAVE_DELAY_MS", cls.state_save_delay_ms),
        )
