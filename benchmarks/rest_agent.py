"""An agent in its own process, for the REST latency benchmark.

    python -m benchmarks.rest_agent URL FLOOR_URL AGENT SQL PARAM

Reads one command per line on stdin, makes that one request, and answers its seconds on stdout
(timed here, so the pipe between the two processes is not part of it):

- ``client``: ``session.sql(SQL, [PARAM])`` with lakewarden's REST client;
- ``httpx``: the same ``POST /v1/sql`` with a keep-alive ``httpx.Client``;
- ``floor``: the same ``session.sql`` against FLOOR_URL, a server that answers the same bytes
  with no application code: what any HTTP request costs here;
- ``bare``: ``GET /healthz`` with ``http.client``: the round trip through FastAPI, no lakewarden.

Every answer is checked (status 200, one row): a failed request stops the process with its error.
"""

from __future__ import annotations

import http.client
import sys
import time
from collections.abc import Callable

import httpx

from lakewarden.client import Client
from lakewarden.wire import AGENT_HEADER


def main(argv: list[str]) -> int:
    url, floor_url, agent, sql, param = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    client = Client(url, agent=agent)
    session = client.session()
    floor_client = Client(floor_url, agent=agent)
    floor_session = floor_client.session()
    other = httpx.Client(base_url=url, headers={AGENT_HEADER: agent}, timeout=60)
    address = httpx.URL(url)
    bare = http.client.HTTPConnection(address.host, address.port)

    def by_client() -> None:
        if session.sql(sql, [param]).row_count != 1:
            raise RuntimeError("the lakewarden client did not get one row")

    def by_floor() -> None:
        if floor_session.sql(sql, [param]).row_count != 1:
            raise RuntimeError("the floor server did not answer one row")

    def by_httpx() -> None:
        response = other.post("/v1/sql", json={"sql": sql, "params": [param]})
        if response.status_code != 200 or response.json()["row_count"] != 1:
            raise RuntimeError(f"httpx: HTTP {response.status_code} {response.text[:300]}")

    def by_bare() -> None:
        bare.request("GET", "/healthz")
        response = bare.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /healthz: HTTP {response.status}")

    calls: dict[str, Callable[[], None]] = {
        "client": by_client,
        "floor": by_floor,
        "httpx": by_httpx,
        "bare": by_bare,
    }
    try:
        for line in sys.stdin:
            call = calls[line.strip()]
            start = time.perf_counter()
            call()
            print(repr(time.perf_counter() - start), flush=True)
    finally:
        client.close()
        floor_client.close()
        other.close()
        bare.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
