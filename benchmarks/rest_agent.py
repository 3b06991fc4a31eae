"""An agent in its own process, for the REST latency benchmark.

    python -m benchmarks.rest_agent URL FLOOR_URL AGENT SQL PARAM

Reads one command per line on stdin, makes that one request, and answers its seconds on stdout
(timed here, so the pipe between the two processes is not part of it):

- ``client``: ``session.sql(SQL, [PARAM])`` with lakewarden's REST client;
- ``floor``: the same ``session.sql`` with its own client of the same kind, against FLOOR_URL,
  a server that answers the same bytes with no application code: what any request costs here;
- ``floor SECONDS``: the same, after sitting idle for SECONDS (untimed), as the agent does
  while the server runs a statement: its code runs colder after a wait;
- ``healthz``: ``GET /healthz`` with the first client: FastAPI's stack, no lakewarden work.

Every answer is checked (status 200, one row): a failed request stops the process with its error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from lakewarden.client import Client


def main(argv: list[str]) -> int:
    url, floor_url, agent, sql, param = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    client = Client(url, agent=agent)
    session = client.session()
    floor_client = Client(floor_url, agent=agent)
    floor_session = floor_client.session()

    def by_client() -> None:
        if session.sql(sql, [param]).row_count != 1:
            raise RuntimeError("the lakewarden client did not get one row")

    def by_floor() -> None:
        if floor_session.sql(sql, [param]).row_count != 1:
            raise RuntimeError("the floor server did not answer one row")

    def healthz() -> None:
        if client.request("GET", "/healthz") != {"status": "ok"}:
            raise RuntimeError("GET /healthz did not answer ok")

    calls: dict[str, Callable[[], None]] = {
        "client": by_client,
        "floor": by_floor,
        "healthz": healthz,
    }
    try:
        for line in sys.stdin:
            name, *idle = line.split()
            call = calls[name]
            if idle:
                time.sleep(float(idle[0]))
            start = time.perf_counter()
            call()
            print(repr(time.perf_counter() - start), flush=True)
    finally:
        client.close()
        floor_client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
