"""The end of every change: commit, measure, record. A write and a restore both end here."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lakewarden.core.stages import Stages
from lakewarden.signals.update import TableSignals
from lakewarden.store.audit import AuditRecord
from lakewarden.store.transaction import Transaction
from lakewarden.telemetry import spans
from lakewarden.telemetry.recorder import Event

log = logging.getLogger(__name__)


def commit(
    stages: Stages,
    tx: Transaction,
    event: Event,
    *,
    agent: str,
    summary: str,
    records: Sequence[AuditRecord],
    decision: str = spans.ALLOWED,
) -> tuple[int | None, dict[str, TableSignals]]:
    """Commit ``tx`` with its audit ``records`` and release the write lock; its snapshot id
    and the signals of each table it changed.

    Called with the transaction open. Only the data and its audit records are inside the
    commit; the write lock is held from the transaction's start to its commit and no longer.
    The signals are applied after that, in commit order (see :mod:`lakewarden.core.tracker`),
    except for DDL and plain DuckDB files, which are re-profiled before the lock goes: a
    profile reads the table as it is, so no later commit may land first.
    """
    tracker = stages.tracker
    staged = tracker.stage(tx) if not tx.shape_changed else {}
    if tx.shape_changed:
        # Before and after: a verdict taken while the commit lands is cached under neither
        # the generation before it nor the one after it.
        stages.grants.catalog_changed()
    done = tx.commit(agent, summary, event.trace_hex, event.span_hex, records)
    if tx.shape_changed:
        stages.grants.catalog_changed()
    pending = tracker.enqueue(
        done,
        tx.tables_written,
        agent,
        tx.shape_changed,
        insert_only=tx.insert_only,
        staged=staged,
    )
    try:
        if not (tx.shape_changed or done.snapshot_id is None):
            tx.close()  # releases the write lock
        snapshot_id, signals = tracker.settle(pending)
    except Exception:
        # The write is committed and acknowledged whatever happens here; the tracker may
        # have applied part of it, so every table is re-based at the next refresh.
        log.exception("could not measure commit %s of %s", done.snapshot_id, agent)
        tracker.invalidate()
        snapshot_id, signals = done.snapshot_id, {}
    try:
        # No commit checkpoints the database files by itself (see store/engine.py): past the
        # log's threshold, the first commit after it does, once the device has room.
        stages.engine.checkpoint()
    except Exception:
        log.exception("could not checkpoint the lake's database files")
    spans.committed(event, snapshot_id, signals, decision)
    return snapshot_id, signals
