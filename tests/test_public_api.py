"""The public API is small and pinned: changing it is a deliberate act."""

import lakewarden

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(lakewarden.__all__) == EXPECTED
    for name in lakewarden.__all__:
        assert hasattr(lakewarden, name), name


def test_errors_share_one_root() -> None:
    for name in (
        "ConfigurationError",
        "Conflict",
        "ExecutionError",
        "InvalidSQL",
        "NotFound",
        "PolicyDenied",
        "QualityGateFailed",
        "StatementTimeout",
        "TooLarge",
        "Unavailable",
        "InsufficientStorage",
    ):
        assert issubclass(getattr(lakewarden, name), lakewarden.LakewardenError)


def test_only_conflicts_and_outages_are_retryable() -> None:
    for name in ("Conflict", "Unavailable", "InsufficientStorage"):
        error = getattr(lakewarden, name)("x")
        assert error.retryable, name
        assert error.to_dict()["retryable"] is True, name
    assert "retryable" not in lakewarden.QualityGateFailed("x").to_dict()
