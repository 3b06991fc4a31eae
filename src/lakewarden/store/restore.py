"""The SQL of a restore: bring a table's schema and rows back to an earlier snapshot.

DuckLake has no restore function; a restore is a compensating commit made of these statements,
run inside one :class:`~lakewarden.store.transaction.Transaction`.
"""

from __future__ import annotations

import duckdb

from lakewarden.errors import NotFound
from lakewarden.store import catalog
from lakewarden.store.catalog import ident, table_ref
from lakewarden.store.engine import LAKE_ALIAS
from lakewarden.store.transaction import Transaction

_STAGE = "temp.main.lakewarden_restore"


def check_target(cur: duckdb.DuckDBPyConnection, table: str, snapshot_id: int) -> None:
    """:class:`NotFound` unless ``table`` exists now and existed at ``snapshot_id``."""
    if snapshot_id < 0 or snapshot_id > catalog.current_snapshot(cur):
        raise NotFound(f"snapshot {snapshot_id} does not exist; see `lakewarden snapshots`")
    try:
        cur.execute(f"SELECT 1 FROM {table_ref(table)} AT (VERSION => {snapshot_id}) LIMIT 0")
    except duckdb.Error as exc:
        if "No snapshot found" in str(exc):
            raise NotFound(
                f"snapshot {snapshot_id} has expired: it is older than the lake's restore "
                "window (the policy's maintenance.keep_snapshots); see `lakewarden snapshots`"
            ) from exc
        raise NotFound(f"table {table!r} did not exist at snapshot {snapshot_id}: {exc}") from exc
    if table not in catalog.schemas(cur, LAKE_ALIAS):
        raise NotFound(
            f"table {table!r} does not exist now; restore only replaces a table's "
            "content (re-create it first)"
        )


def rewrite(tx: Transaction, table: str, version: int) -> None:
    """Bring schema and rows back to ``version`` inside ``tx`` (its ``shape_changed`` says
    whether the schema had to change)."""
    cur, ref = tx.cur, table_ref(table)
    then = dict(
        (r[0], r[1])
        for r in cur.execute(f"DESCRIBE SELECT * FROM {ref} AT (VERSION => {version})").fetchall()
    )
    now = catalog.schemas(cur, LAKE_ALIAS)[table]
    tx.register(table)
    ddl = [f"ALTER TABLE {ref} DROP COLUMN {ident(c)}" for c in now if c not in then]
    ddl += [f"ALTER TABLE {ref} ADD COLUMN {ident(c)} {t}" for c, t in then.items() if c not in now]
    ddl += [
        f"ALTER TABLE {ref} ALTER {ident(c)} TYPE {t}"
        for c, t in then.items()
        if c in now and now[c] != t
    ]
    columns = ", ".join(ident(c) for c in then)
    # Keep the old rows aside first (measured with duckdb 1.5.5 and DuckLake): inside the
    # transaction, a time-travel scan sees the transaction's own deletes, and it resolves
    # columns against the current schema, so a column dropped and added back has no past.
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE {_STAGE} AS "
        f"SELECT {columns} FROM {ref} AT (VERSION => {version})"
    )
    for statement in ddl:
        cur.execute(statement)
    cur.execute(f"DELETE FROM {ref}")
    cur.execute(f"INSERT INTO {ref} ({columns}) SELECT {columns} FROM {_STAGE}")
    cur.execute(f"DROP TABLE {_STAGE}")
    tx.shape_changed = tx.shape_changed or bool(ddl)
