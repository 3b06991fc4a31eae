"""lakewarden: the governance sidecar for AI agents that query and write lakehouse tables.

import lakewarden
warden = lakewarden.open("lake/")
with warden.session(agent="etl-agent") as s:
    r = s.sql("INSERT INTO orders SELECT ...")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lakewarden.errors import (
    ConfigurationError,
    ExecutionError,
    InvalidSQL,
    LakewardenError,
    NotFound,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    Violation,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lakewarden.governance.policy import Policy, load_policy
    from lakewarden.result import Result
    from lakewarden.session import Session
    from lakewarden.settings import Settings
    from lakewarden.telemetry import Telemetry
    from lakewarden.warden import Warden, open

# The engine, Polars and the OTel SDK take about a second to import: the CLI's --help and the
# light commands must not pay for them, so the heavy part of the API loads on first use.
_LAZY = {
    "Policy": "lakewarden.governance.policy",
    "load_policy": "lakewarden.governance.policy",
    "Result": "lakewarden.result",
    "Session": "lakewarden.session",
    "Settings": "lakewarden.settings",
    "Telemetry": "lakewarden.telemetry",
    "Warden": "lakewarden.warden",
    "open": "lakewarden.warden",
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
    "ExecutionError",
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
    "Violation",
    "Warden",
    "__version__",
    "load_policy",
    "open",
]
