"""The metric instruments of DESIGN.md, defined once.

Table-level gauges are observable: their callbacks read the current table states at collection
time, so a dropped table disappears and a restarted sidecar reports the persisted values at once.
Schema changes are an observable counter over the persisted per-table counts for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from lakewarden import __version__
from lakewarden.signals.table_state import TableState


class Gauges(Protocol):
    """Where the table gauges read their values, at each collection."""

    def tables(self) -> Iterable[TableState]: ...

    def check_states(self) -> Iterable[tuple[str, str, bool]]:
        """(table, check name, passing) for every check of every table with a contract."""

    def contract_limits(self) -> Iterable[tuple[str, float | None, dict[str, float]]]:
        """(table, freshness SLA seconds | None, {column: max null ratio})."""

    def anomaly_scores(self) -> Iterable[tuple[str, str, float]]:
        """(table, signal "volume"|"freshness", signed score) for every table with a verdict."""


class _NoTables:
    def tables(self) -> Iterable[TableState]:
        return ()

    def check_states(self) -> Iterable[tuple[str, str, bool]]:
        return ()

    def contract_limits(self) -> Iterable[tuple[str, float | None, dict[str, float]]]:
        return ()

    def anomaly_scores(self) -> Iterable[tuple[str, str, float]]:
        return ()


class Instruments:
    def __init__(self, meter: Meter, gauges: Gauges | None = None) -> None:
        self.gauges: Gauges = gauges or _NoTables()
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of governed database operations, analysis to commit.",
        )
        self.statements = meter.create_counter(
            "lakewarden.statements",
            unit="{statement}",
            description="Statements seen, by agent, operation and governance decision.",
        )
        self.rows_written = meter.create_counter(
            "lakewarden.rows.written",
            unit="{row}",
            description="Rows inserted, updated or deleted by committed writes.",
        )
        self.gate_blocks = meter.create_counter(
            "lakewarden.quality_gate.blocks",
            unit="{statement}",
            description="Writes rolled back by the quality gate, by violated check.",
        )
        self.signal_duration = meter.create_histogram(
            "lakewarden.signal.duration",
            unit="s",
            description="Time spent computing data-quality signals, by signal.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.rows",
            [self._rows],
            unit="{row}",
            description="Rows in the table.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.columns",
            [self._columns],
            unit="{column}",
            description="Columns in the table.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.last_modified.timestamp",
            [self._last_modified],
            unit="s",
            description="Commit time of the last write to the table, labelled by its writer.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.last_event.timestamp",
            [self._last_event],
            unit="s",
            description="Max of the table's declared event-time column.",
        )
        meter.create_observable_gauge(
            "lakewarden.column.null_ratio",
            [self._null_ratio],
            unit="1",
            description="Fraction of the column's values that are NULL.",
        )
        meter.create_observable_counter(
            "lakewarden.schema.changes",
            [self._schema_changes],
            unit="{change}",
            description="Schema changes seen on the table, by kind.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.freshness_sla",
            [self._freshness_sla],
            unit="s",
            description="Freshness SLA of the table, from its contract.",
        )
        meter.create_observable_gauge(
            "lakewarden.column.null_ratio_max",
            [self._null_ratio_max],
            unit="1",
            description="Highest null ratio the column's contract allows.",
        )
        meter.create_observable_gauge(
            "lakewarden.check.passing",
            [self._check_passing],
            unit="1",
            description="1 while the table passes the check, 0 while it fails.",
        )
        meter.create_observable_gauge(
            "lakewarden.table.volume_anomaly_score",
            [self._score("volume")],
            unit="1",
            description="Robust z-score of the rows the latest write added (negative: fewer).",
        )
        meter.create_observable_gauge(
            "lakewarden.table.freshness_anomaly_score",
            [self._score("freshness")],
            unit="1",
            description="Robust z-score of the time since the latest write (positive: late).",
        )
        meter.create_observable_gauge(
            "lakewarden.build_info",
            [self._build_info],
            unit="1",
            description="Always 1; labelled with the lakewarden version.",
        )

    def _each(self) -> Iterable[TableState]:
        return list(self.gauges.tables())

    def _rows(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.rows, {"db.collection.name": t.name}) for t in self._each()]

    def _columns(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(t.columns), {"db.collection.name": t.name}) for t in self._each()]

    def _last_modified(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                t.last_modified,
                {"db.collection.name": t.name, "gen_ai.agent.name": t.last_writer or "unknown"},
            )
            for t in self._each()
            if t.last_modified is not None
        ]

    def _last_event(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(t.last_event_time, {"db.collection.name": t.name})
            for t in self._each()
            if t.last_event_time is not None
        ]

    def _null_ratio(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(ratio, {"db.collection.name": t.name, "lakewarden.column.name": column})
            for t in self._each()
            for column, ratio in t.null_ratios().items()
        ]

    def _schema_changes(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"db.collection.name": t.name, "lakewarden.change": change})
            for t in self._each()
            for change, count in t.schema_changes.items()
        ]

    def _freshness_sla(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(sla, {"db.collection.name": table})
            for table, sla, _ in self.gauges.contract_limits()
            if sla is not None
        ]

    def _null_ratio_max(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(limit, {"db.collection.name": table, "lakewarden.column.name": column})
            for table, _, columns in self.gauges.contract_limits()
            for column, limit in columns.items()
        ]

    def _check_passing(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                1 if passing else 0, {"db.collection.name": table, "lakewarden.check.name": check}
            )
            for table, check, passing in self.gauges.check_states()
        ]

    def _score(self, signal: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value, {"db.collection.name": table})
                for table, which, value in self.gauges.anomaly_scores()
                if which == signal
            ]

        return observe

    def _build_info(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1, {"version": __version__})]
