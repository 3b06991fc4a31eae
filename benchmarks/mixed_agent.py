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

import httpx

from benchmarks.mixed_load import Tally, rest_step, run_round
from lakewarden.wire import AGENT_HEADER


def main(argv: list[str]) -> int:
    url, agent, clients = argv[0], argv[1], int(argv[2])
    https = [
        httpx.Client(base_url=url, headers={AGENT_HEADER: agent}, timeout=120)
        for _ in range(clients)
    ]
    rngs = [random.Random(1000 + k) for k in range(clients)]
    # Ids of this process's inserts: above every id of the table and of the raw writers.
    next_id = [(k + 1) * 1_000_000_000 for k in range(clients)]

    def work(k: int, tally: Tally, stop: threading.Event) -> None:
        while not stop.is_set():
            rest_step(https[k], rngs[k], next_id, k, tally, "agent")

    try:
        for line in sys.stdin:
            n, seconds = line.split()
            wall, total = run_round(work, int(n), float(seconds))
            print(json.dumps({"wall": wall, **total.to_json()}), flush=True)
    finally:
        for http in https:
            http.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
