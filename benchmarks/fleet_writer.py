"""One writer of the fleet benchmark, in its own process (a sidecar's agent, or a raw DuckDB job).

    python -m benchmarks.fleet_writer raw  LAKE_DSN DATA_PATH SECONDS FIRST_ID
    python -m benchmarks.fleet_writer rest URL SECONDS FIRST_ID

Gets ready (a raw writer loads DuckLake and attaches the lake), prints ``ready``, waits for a
line on stdin, then commits one-row INSERTs of fresh ids for SECONDS as fast as it can: a raw
writer through its own DuckDB connection (autocommit), a REST writer through a sidecar, sending
a write again when the answer is a retryable conflict. Prints one JSON line: commits, retries,
errors, seconds, the latency of every commit.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

INSERT = "INSERT INTO t VALUES (?, ?)"


def _raw(dsn: str, data_path: str) -> Any:
    import duckdb

    from lakewarden.store import extensions

    con = duckdb.connect(":memory:")
    extensions.load(con, "ducklake")
    extensions.load(con, "postgres")
    con.execute(f"ATTACH 'ducklake:postgres:{dsn}' AS lake (DATA_PATH '{data_path}/')")
    con.execute("USE lake")

    def write(key: int) -> tuple[bool, bool, str]:
        try:
            con.execute(INSERT, [key, "raw"])
            return True, False, ""
        except duckdb.Error as exc:
            return False, False, str(exc).splitlines()[-1][:200]

    return write


def _rest(url: str) -> Any:
    import httpx

    http = httpx.Client(base_url=url, timeout=120)

    def write(key: int) -> tuple[bool, bool, str]:
        response = http.post("/v1/sql", json={"sql": INSERT, "params": [key, "agent"]})
        if response.status_code == 200:
            return True, False, ""
        error = response.json().get("error", {})
        return False, bool(response.status_code == 409 and error.get("retryable")), str(error)

    return write


def main(argv: list[str]) -> int:
    if argv[0] == "raw":
        write, seconds, first = _raw(argv[1], argv[2]), float(argv[3]), int(argv[4])
    else:
        write, seconds, first = _rest(argv[1]), float(argv[2]), int(argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    commits = retries = 0
    errors: list[str] = []
    latencies: list[float] = []
    key = first
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        ok, retryable, detail = write(key)
        if ok:
            commits += 1
            latencies.append(time.perf_counter() - begun)
            key += 1
        elif retryable:
            retries += 1
        else:
            errors.append(detail)
            key += 1
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "commits": commits,
                "retries": retries,
                "errors": errors,
                "seconds": elapsed,
                "latencies": latencies,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
