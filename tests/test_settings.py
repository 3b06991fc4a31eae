"""Settings come from LAKEWARDEN_* variables; bad values fail at start-up with a clear message."""

import pytest

from lakewarden import ConfigurationError, Settings


def test_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "LAKEWARDEN_STATEMENT_TIMEOUT_S": "2.5",
            "LAKEWARDEN_THREADS": "4",
            "LAKEWARDEN_MEMORY_LIMIT": "512MB",
            "LAKEWARDEN_CATALOG": "SQLite",
        }
    )
    assert (s.statement_timeout_s, s.threads, s.memory_limit, s.catalog) == (
        2.5,
        4,
        "512MB",
        "sqlite",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"LAKEWARDEN_STATEMENT_TIMEOUT_S": "soon"}, "not a number", id="nan-timeout"),
        pytest.param({"LAKEWARDEN_STATEMENT_TIMEOUT_S": "-1"}, ">= 0", id="negative-timeout"),
        pytest.param({"LAKEWARDEN_MEMORY_LIMIT": "lots"}, "not a size", id="memory"),
        pytest.param({"LAKEWARDEN_THREADS": "0"}, ">= 1", id="threads"),
        pytest.param({"LAKEWARDEN_CATALOG": "oracle"}, "duckdb, sqlite", id="catalog"),
        pytest.param({"LAKEWARDEN_MAX_STATEMENT_CHARS": "0"}, ">= 1", id="statement-cap"),
    ],
)
def test_invalid_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)
