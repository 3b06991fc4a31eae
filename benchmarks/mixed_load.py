"""What the mixed-load benchmarks (``rest_throughput``, ``mixed_throughput`` and its agent
process) share: the statement mix, one REST step of it, the tally and the run of a round, and a
wait for signals that may follow a commit by a bounded delay."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TABLE = "t"
ROWS = 10_000
COLUMNS = 10
READ = f"SELECT * FROM {TABLE} WHERE id = ?"
INSERT = f"INSERT INTO {TABLE} (id, ts, grp0, name0) VALUES (?, now(), ?, ?)"
READ_SHARE = 0.8


@dataclass
class Tally:
    reads: int = 0
    inserts: int = 0
    errors: list[str] = field(default_factory=list)
    read_s: list[float] = field(default_factory=list)
    insert_s: list[float] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)  # ids of the acknowledged INSERTs

    def done(self, read: bool, seconds: float, ok: bool, detail: str, key: int) -> None:
        if not ok:
            self.errors.append(detail)
        elif read:
            self.reads += 1
            self.read_s.append(seconds)
        else:
            self.inserts += 1
            self.insert_s.append(seconds)
            self.acked.append(key)

    def add(self, other: Tally) -> None:
        self.reads += other.reads
        self.inserts += other.inserts
        self.errors += other.errors
        self.read_s += other.read_s
        self.insert_s += other.insert_s
        self.acked += other.acked

    @property
    def statements(self) -> int:
        return self.reads + self.inserts

    def to_json(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "inserts": self.inserts,
            "errors": self.errors,
            "read_s": self.read_s,
            "insert_s": self.insert_s,
            "acked": self.acked,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            reads=data["reads"],
            inserts=data["inserts"],
            errors=list(data["errors"]),
            read_s=list(data["read_s"]),
            insert_s=list(data["insert_s"]),
            acked=list(data["acked"]),
        )


# Signals may become visible a bounded time after a commit (the target is 100 ms): a count
# taken right after the last write waits up to this long before it is called wrong.
CONVERGE_S = 2.0


Work = Callable[[int, "Tally", threading.Event], None]


def run_round(work: Work, n: int, seconds: float) -> tuple[float, Tally]:
    """Wall seconds of a round of ``n`` workers ``work(k, tally, stop)`` (until the last
    in-flight statement returns) and their tallies added up."""
    stop = threading.Event()
    tallies = [Tally() for _ in range(n)]
    threads = [
        threading.Thread(target=work, args=(k, tallies[k], stop), daemon=True) for k in range(n)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return wall, total


def rest_step(
    http: httpx.Client, rng: random.Random, next_id: list[int], k: int, tally: Tally, who: str
) -> None:
    """One statement of the mix by REST client ``k``: a point read, or an INSERT of a fresh id."""
    read = rng.random() < READ_SHARE
    if read:
        payload: dict[str, Any] = {"sql": READ, "params": [rng.randrange(ROWS)]}
    else:
        next_id[k] += 1
        payload = {"sql": INSERT, "params": [next_id[k], k, f"{who}-{k}"]}
    start = time.perf_counter()
    try:
        response = http.post("/v1/sql", json=payload)
        ok = response.status_code == 200
        detail = f"HTTP {response.status_code} {response.text[:200]}"
    except httpx.HTTPError as exc:
        ok, detail = False, repr(exc)
    tally.done(read, time.perf_counter() - start, ok, detail, payload["params"][0])


def converged(count: Callable[[], int], expected: int) -> int:
    """``count()`` once it equals ``expected``, or its last value after ``CONVERGE_S``."""
    deadline = time.monotonic() + CONVERGE_S
    value = count()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = count()
    return value
