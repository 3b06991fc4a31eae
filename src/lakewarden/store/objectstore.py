"""Lake data in S3 or an S3-compatible store (``s3://bucket/prefix``), through DuckDB's httpfs.

Credentials, region and endpoint come from the standard AWS variables, never from the command
line: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or
``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for a store other
than AWS (MinIO, Ceph, ...), which is then addressed path-style.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import duckdb

from lakewarden.errors import ConfigurationError
from lakewarden.store import extensions

SCHEME = "s3://"


def is_remote(location: str) -> bool:
    return location.lower().startswith(SCHEME)


def normalize(url: str) -> str:
    """``s3://bucket/prefix/`` (one trailing slash), or a clear error for a URL without a
    bucket."""
    bucket = urlsplit(url).netloc
    if not bucket:
        raise ConfigurationError(f"{url!r} names no bucket: give s3://BUCKET/PREFIX")
    return url.rstrip("/") + "/"


def connect(con: duckdb.DuckDBPyConnection, url: str, env: Mapping[str, str] | None = None) -> None:
    """Load httpfs and give it the AWS variables' credentials as an S3 secret scoped to the
    lake's bucket; then list the prefix, so a missing bucket or an unreachable store fails at
    start-up, before the catalog records anything."""
    env = os.environ if env is None else env
    extensions.load(con, "httpfs")
    options = {"SCOPE": url}
    for key, name in (
        ("KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("SECRET", "AWS_SECRET_ACCESS_KEY"),
        ("SESSION_TOKEN", "AWS_SESSION_TOKEN"),
    ):
        if env.get(name):
            options[key] = env[name]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["REGION"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["ENDPOINT"] = parts.netloc
        options["URL_STYLE"] = "path"
        options["USE_SSL"] = "true" if parts.scheme == "https" else "false"
    body = ", ".join(
        f"{key} {value}" if key == "USE_SSL" else f"{key} {_quote(value)}"
        for key, value in options.items()
    )
    con.execute(f"CREATE SECRET lakewarden_s3 (TYPE s3, {body})")
    try:
        con.execute(f"SELECT count(*) FROM glob({_quote(url + '*')})").fetchall()
    except duckdb.Error as exc:
        raise ConfigurationError(_failure(url, endpoint, exc)) from exc


def _failure(url: str, endpoint: str | None, exc: duckdb.Error) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines)
    where = f" at {endpoint}" if endpoint else ""
    if "NoSuchBucket" in text or "404" in text:
        fix = f"the bucket {urlsplit(url).netloc!r} does not exist{where}: create it first"
    elif "403" in text or "AccessDenied" in text or "SignatureDoesNotMatch" in text:
        fix = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
    elif "Could not connect" in text or "Could not resolve" in text:
        fix = f"the object store{where} cannot be reached: check AWS_ENDPOINT_URL and the network"
    else:
        fix = lines[0] if lines else type(exc).__name__
    return f"cannot use the data path {url}: {fix}"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
