"""lakewarden: the governance sidecar for AI agents that query and write lakehouse tables.

    import lakewarden
    warden = lakewarden.open("lake/")
    with warden.session(agent="etl-agent") as s:
        r = s.sql("INSERT INTO orders SELECT ...")
"""

__version__ = "0.1.0"

from lakewarden.errors import (  # noqa: E402 - the version must exist before submodules import it
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
from lakewarden.governance.policy import Policy, load_policy  # noqa: E402
from lakewarden.result import Result  # noqa: E402
from lakewarden.session import Session  # noqa: E402
from lakewarden.settings import Settings  # noqa: E402
from lakewarden.telemetry import Telemetry  # noqa: E402
from lakewarden.warden import Warden, open  # noqa: E402

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
