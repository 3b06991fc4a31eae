"""Request threads share the process: the same work from 8 threads gives the single-threaded answer.

The server runs agents' statements on a pool of threads, so every module-level object they touch
(the analysis cache and parsers, the policy and its verdict cache, the JSON renderer) must give
each thread exactly what it would get alone. A sqlglot tokenizer shared between threads once
broke this: it keeps its position in the text on itself, so concurrent statements produced
spurious parse errors and IndexErrors.

Audited module-level objects reached from request threads, and why each is safe:
- analysis: the statement cache (a byte-bounded LRU with its own lock), the DuckDB parser
  connection (one per thread), sqlglot (a new tokenizer and parser per call);
- governance: the policy (immutable once loaded), the warden's verdict cache (the same locked
  LRU) and limit cache (plain dict reads and writes, atomic); plans are made on the calling
  session's own cursor;
- store: the watchdog (its own lock), cursors (one per session, sessions never shared);
- telemetry: the recorder's queue (thread-safe), the trace-context propagator (stateless);
- intake: the JSON renderer (pure functions).

The corpus is a few thousand distinct statements, so the analysis cache cannot hide a race: the
single-threaded reference run clears it first, and each thread walks the corpus in its own order.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import lakewarden
from lakewarden.analysis import statement as analysis
from lakewarden.analysis.text import first_keyword, sanitize
from lakewarden.errors import LakewardenError
from lakewarden.intake.jsonvalues import result_json
from lakewarden.result import Result
from lakewarden.store.plan import Planner

THREADS = 8

TEMPLATES = (
    "SELECT {c}, count(*) FROM {t} WHERE {c} > {n} GROUP BY 1",
    "SELECT * FROM {t} o JOIN {u} c ON o.{c} = c.{c} WHERE o.{c} = '{s}'",
    "WITH r AS (SELECT * FROM {t} WHERE {c} < {n}) SELECT {c} FROM r",
    "INSERT INTO {t} SELECT * FROM {u} WHERE {c} = {n}",
    "INSERT INTO {t} ({c}) VALUES ({n}), ('{s}')",
    "UPDATE {t} SET {c} = {n} WHERE {c} IN (SELECT {c} FROM {u})",
    "DELETE FROM {t} WHERE {c} = '{s}' -- comment {n}",
    "CREATE TABLE {t}_{n} AS SELECT * FROM {u}",
    "ALTER TABLE {t} ADD COLUMN c{n} VARCHAR",
    "DROP TABLE IF EXISTS {t}_{n}",
    "SELECT /* {s} */ {n} + {n}, x'ff', E'\\n{s}' FROM {t}",
    "SELECT * FROM read_csv('/tmp/{s}.csv')",
    "ATTACH '{s}.duckdb' AS x{n}",
    "SELECT {n}; DELETE FROM {t}",
    "SELEC {c} FROM {t}",
    "PRAGMA table_info('{t}')",
    "SELECT * FROM staging.{t} UNION ALL SELECT * FROM {u} LIMIT {n}",
)
TABLES = ("orders", "customers", "secret", "staging.events", "public_orders")
COLUMNS = ("id", "email", "amount", "status")


def corpus(size: int = 3000) -> list[str]:
    rng = random.Random(7)
    out: set[str] = set()
    while len(out) < size:
        out.add(
            rng.choice(TEMPLATES).format(
                t=rng.choice(TABLES),
                u=rng.choice(TABLES),
                c=rng.choice(COLUMNS),
                n=rng.randint(0, 10**6),
                s="".join(rng.choices("abcdefgh xyz'", k=rng.randint(1, 12))).replace("'", "''"),
            )
        )
    return sorted(out)


def outcome(work: Callable[[], Any]) -> Any:
    """A comparable outcome: the value, or the error's class and message."""
    try:
        return work()
    except LakewardenError as exc:
        return (type(exc).__name__, exc.code, exc.message)
    except Exception as exc:  # any other exception is a bug, but must compare equal too
        return ("UNEXPECTED", type(exc).__name__, str(exc))


def analyse(sql: str) -> Any:
    return (
        outcome(lambda: analysis.analyze(sql)),
        outcome(lambda: sanitize(sql)),
        outcome(lambda: first_keyword(sql)),
    )


def _unexpected(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and value[0] == "UNEXPECTED"


def in_threads(items: list[Any], work: Callable[[Any], Any]) -> list[dict[Any, Any]]:
    """Each of THREADS threads does ``work`` on every item, in its own order, all at once."""
    results: list[dict[Any, Any]] = [{} for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)

    def run(i: int) -> None:
        order = list(items)
        random.Random(i).shuffle(order)
        barrier.wait()
        for item in order:
            results[i][item] = work(item)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def assert_same(reference: dict[Any, Any], results: list[dict[Any, Any]]) -> None:
    for i, got in enumerate(results):
        wrong = [k for k in reference if got.get(k) != reference[k]]
        assert not wrong, (
            f"thread {i}: {len(wrong)} of {len(reference)} differ from the single-threaded run, "
            f"e.g. {wrong[0]!r}: {got.get(wrong[0])!r} != {reference[wrong[0]]!r}"
        )


@pytest.mark.slow
def test_analysis_is_the_same_from_8_threads() -> None:
    statements = corpus()
    analysis._CACHE.clear()
    reference = {sql: analyse(sql) for sql in statements}
    unexpected = [v for v in reference.values() for part in v if _unexpected(part)]
    assert not unexpected, unexpected[:3]
    analysis._CACHE.clear()
    assert_same(reference, in_threads(statements, analyse))


POLICY = """
version: 1
mode: enforce
agents:
  analyst: {read: ["public_*"]}
  etl: {read: ["*"], write: [orders, "staging.*"]}
  admin: {read: ["*"], write: ["*"], ddl: true}
"""


@pytest.mark.slow
def test_policy_decisions_are_the_same_from_8_threads(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    statements = corpus(1500)
    pairs = list(itertools.product(("analyst", "etl", "admin", "stranger"), statements))

    cursors = threading.local()  # the engine plans on the caller's cursor: one per thread

    def decide(warden: lakewarden.Warden, pair: tuple[str, str]) -> Any:
        agent, sql = pair
        if getattr(cursors, "warden", None) is not warden:
            cursors.warden, cursors.planner = warden, Planner(warden.engine.cursor())
        planner = cursors.planner
        return outcome(lambda: (warden.grants.check(agent, analysis.analyze(sql), planner, (0,)),))

    with lakewarden.open(tmp_path / "lake", policy=policy_file) as warden:
        reference = {pair: decide(warden, pair) for pair in pairs}
    # A fresh warden: its verdict cache starts empty, so the threads decide for real.
    with lakewarden.open(tmp_path / "lake", policy=policy_file) as warden:
        analysis._CACHE.clear()
        assert_same(reference, in_threads(pairs, lambda pair: decide(warden, pair)))


START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def results() -> list[Result]:
    rng = random.Random(3)
    out = []
    for i in range(300):
        n = rng.randint(1, 40)
        table = pa.table(
            {
                "id": pa.array(range(n), pa.int64()),
                "name": pa.array([f"n{i}-{j}" if j % 5 else None for j in range(n)]),
                "amount": pa.array(
                    [decimal.Decimal(f"{j}.{i % 100:02d}") for j in range(n)], pa.decimal128(10, 2)
                ),
                "at": pa.array(
                    [
                        dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=j)
                        for j in range(n)
                    ],
                    pa.timestamp("us", tz="UTC"),
                ),
                "ratio": pa.array([j / (i + 1) for j in range(n)], pa.float64()),
                "tags": pa.array([[f"t{j}", None] for j in range(n)], pa.list_(pa.string())),
                "blob": pa.array([bytes([j % 256, i % 256]) for j in range(n)], pa.binary()),
                "span": pa.array(
                    [dt.timedelta(seconds=j * 37) for j in range(n)], pa.duration("us")
                ),
            }
        )
        out.append(Result(kind="read", summary=f"SELECT t{i}", trace_id=f"{i:032x}", table=table))
    return out


@pytest.mark.slow
def test_json_rendering_is_the_same_from_8_threads() -> None:
    items = results()
    reference = {id(r): result_json(r) for r in items}
    by_id = {id(r): r for r in items}
    assert_same(reference, in_threads(list(by_id), lambda key: result_json(by_id[key])))
