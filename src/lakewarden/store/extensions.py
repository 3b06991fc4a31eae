"""DuckDB extensions ship as PyPI packages; they are LOADed from there, never downloaded."""

from __future__ import annotations

import glob
import importlib
import os

import duckdb

from lakewarden.errors import ConfigurationError

_PACKAGES = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),
}


def extension_path(name: str) -> str:
    """Path of the extension file inside its package, for the running duckdb version."""
    package, stem = _PACKAGES[name]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ConfigurationError(
            f"the DuckDB extension {name!r} needs the Python package "
            f"{package.replace('_', '-')}=={duckdb.__version__}; install it"
        ) from exc
    pattern = os.path.join(
        module.__path__[0], "extensions", f"v{duckdb.__version__}", f"{stem}.duckdb_extension"
    )
    found = glob.glob(pattern)
    if not found:
        raise ConfigurationError(
            f"{package} has no extension build for duckdb {duckdb.__version__}; install "
            f"{package.replace('_', '-')}=={duckdb.__version__} (it must match duckdb exactly)"
        )
    return found[0]


def load(con: duckdb.DuckDBPyConnection, name: str) -> None:
    path = extension_path(name).replace("'", "''")
    con.execute(f"LOAD '{path}'")
