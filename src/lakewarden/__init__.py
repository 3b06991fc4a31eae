"""lakewarden: the governance sidecar for AI agents that query and write lakehouse tables.

import lakewarden
warden = lakewarden.open("lake/")
with warden.session(agent="etl-agent") as s:
    r = s.sql("INSERT INTO orders SELECT ...")
"""

__version__ = "0.1.0"

import os as _os

# DuckDB's allocator (its own jemalloc) keeps the address space of freed memory mapped for
# reuse ("retain"). Under a server's address-space cap (LAKEWARDEN_ADDRESS_SPACE_LIMIT) that
# would leave the process at the cap after one large statement, and later allocations of a few
# bytes fail (measured: 5.3 GB stayed mapped after ``list_sum(range(300000000))``, 0.25 GB with
# this). Read once, when DuckDB is first loaded: it must be set before ``import duckdb``.
# An operator's own value wins.
_os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", "retain:false")

from lakewarden.errors import (
    ConfigurationError,
    ExecutionError,
    InvalidSQL,
    LakewardenError,
    NotFound,
    PolicyDenied,
    QualityGateFailed,
    StatementTimeout,
    TooLarge,
    Violation,
)
from lakewarden.governance.policy import Policy, load_policy
from lakewarden.result import Result
from lakewarden.session import Session
from lakewarden.settings import Settings
from lakewarden.telemetry import Telemetry
from lakewarden.warden import Warden, open

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
    "TooLarge",
    "Violation",
    "Warden",
    "__version__",
    "load_policy",
    "open",
]
