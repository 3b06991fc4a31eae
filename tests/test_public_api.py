"""The public API is small and pinned: changing it is a deliberate act."""

import lakewarden

EXPECTED = {
    "ConfigurationError",
    "Conflict",
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
    ):
        assert issubclass(getattr(lakewarden, name), lakewarden.LakewardenError)


def test_only_a_conflict_is_retryable() -> None:
    assert lakewarden.Conflict("x").retryable
    assert lakewarden.Conflict("x").to_dict()["retryable"] is True
    assert "retryable" not in lakewarden.QualityGateFailed("x").to_dict()
