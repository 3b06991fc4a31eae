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
    """Commit ``tx`` with its audit ``records``; its snapshot id and the signals of each table
    it changed. Called with the transaction open, so signals are applied in commit order."""
    done = tx.commit(agent, summary, event.trace_hex, event.span_hex, records)
    if tx.shape_changed:
        stages.grants.catalog_changed()
    try:
        snapshot_id, signals = stages.tracker.record(
            done,
            tx.tables_written,
            agent,
            tx.shape_changed,
            insert_only=tx.insert_only,
        )
    except Exception:
        # The write is committed and acknowledged whatever happens here; the tracker may
        # have applied part of it, so every table is re-based at the next refresh.
        log.exception("could not measure commit %s of %s", done.snapshot_id, agent)
        stages.tracker.invalidate()
        snapshot_id, signals = done.snapshot_id, {}
    spans.committed(event, snapshot_id, signals, decision)
    return snapshot_id, signals
