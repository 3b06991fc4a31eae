"""REST agents in their own process, for the mixed-load benchmark.

    python -m benchmarks.mixed_agent URL AGENT CLIENTS

Keeps CLIENTS keep-alive ``httpx.Client`` connections to the server. Each line on stdin,
``N SECONDS``, runs one round: N threads, one client each, send 80% point reads and 20% one-row
INSERTs as fast as they can for SECONDS; the answer (one JSON line on stdout) is the round's
wall time until the last in-flight statement returned, the latency of every read and insert,
the ids of the acknowledged INSERTs and the errors. The agents live outside the server's
process, as agents do: threads in the server's process would share its GIL.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

import httpx

from benchmarks.mixed_load import INSERT, READ, READ_SHARE, ROWS, Tally


def main(argv: list[str]) -> int:
    url, agent, clients = argv[0], argv[1], int(argv[2])
    https = [
        httpx.Client(base_url=url, headers={"X-Lakewarden-Agent": agent}, timeout=120)
        for _ in range(clients)
    ]
    rngs = [random.Random(1000 + k) for k in range(clients)]
    # Ids of this process's inserts: above every id of the table and of the raw writers.
    next_id = [(k + 1) * 1_000_000_000 for k in range(clients)]

    def work(k: int, tally: Tally, stop: threading.Event) -> None:
        http, rng = https[k], rngs[k]
        while not stop.is_set():
            read = rng.random() < READ_SHARE
            if read:
                payload: dict[str, Any] = {"sql": READ, "params": [rng.randrange(ROWS)]}
            else:
                next_id[k] += 1
                payload = {"sql": INSERT, "params": [next_id[k], k, f"agent-{k}"]}
            start = time.perf_counter()
            try:
                response = http.post("/v1/sql", json=payload)
                ok = response.status_code == 200
                detail = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                ok, detail = False, repr(exc)
            tally.done(read, time.perf_counter() - start, ok, detail, payload["params"][0])

    try:
        for line in sys.stdin:
            n, seconds = line.split()
            tallies = [Tally() for _ in range(int(n))]
            stop = threading.Event()
            threads = [
                threading.Thread(target=work, args=(k, tallies[k], stop), daemon=True)
                for k in range(int(n))
            ]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            time.sleep(float(seconds))
            stop.set()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            total = Tally()
            for tally in tallies:
                total.add(tally)
            print(json.dumps({"wall": wall, **total.to_json()}), flush=True)
    finally:
        for http in https:
            http.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
