"""lakewarden: the governance sidecar for AI agents that query and write lakehouse tables.

import lakewarden
warden = lakewarden.open("lake/")
with warden.session(agent="etl-agent") as s:
    r = s.sql("INSERT INTO orders SELECT ...")
"""

__version__ = "0.1.0"

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
