"""lakewarden: the governance sidecar for AI agents that query and write lakehouse tables.

import lakewarden
warden = lakewarden.open("lake/")
with warden.session(agent="etl-agent") as s:
    r = s.sql("INSERT INTO orders SELECT ...")
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

# DuckDB's allocator (its own jemalloc) keeps the address space of freed memory mapped for
# reuse ("retain"). Under a server's address-space cap (LAKEWARDEN_ADDRESS_SPACE_LIMIT) that
# would leave the process at the cap after one large statement, and later allocations of a few
# bytes fail (measured: 5.3 GB stayed mapped after ``list_sum(range(300000000))``, 0.25 GB with
# this). Read once, when DuckDB is first loaded: it must be set before ``import duckdb``.
# An operator's own value wins.
_os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", "retain:false")

from lakewarden.errors import (
    ConfigurationError,
    Conflict,
    ExecutionError,
    InsufficientStorage,
    InvalidSQL,
    LakewardenError,
    NotFound,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    TooLarge,
    Unavailable,
    Violation,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lakewarden.core.session import Session
    from lakewarden.core.warden import Warden, open
    from lakewarden.governance.policy import Policy, load_policy
    from lakewarden.result import Result
    from lakewarden.settings import Settings
    from lakewarden.telemetry import Telemetry

# The engine, Polars and the OTel SDK take about a second to import: the CLI's --help and the
# light commands must not pay for them, so the heavy part of the API loads on first use.
_LAZY = {
    "Policy": "lakewarden.governance.policy",
    "load_policy": "lakewarden.governance.policy",
    "Result": "lakewarden.result",
    "Session": "lakewarden.core.session",
    "Settings": "lakewarden.settings",
    "Telemetry": "lakewarden.telemetry",
    "Warden": "lakewarden.core.warden",
    "open": "lakewarden.core.warden",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lakewarden' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConfigurationError",
    "Conflict",
    "ExecutionError",
    "InsufficientStorage",
    "InvalidSQL",
    "LakewardenError",
    "NotFound",
    "Policy",
    "PolicyDenied",
    "QualityGateFailed",
    "Result",
    "Session",
    "Settings",
    "StatementTimeout",
    "Telemetry",
    "TooLarge",
    "Unavailable",
    "Violation",
    "Warden",
    "__version__",
    "load_policy",
    "open",
]
