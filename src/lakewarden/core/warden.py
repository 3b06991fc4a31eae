"""The composition root: one lake, its engine, its policy, its stages and its telemetry.

A :class:`Warden` builds the stages once and hands them to the sessions, the restore, the
health judge and the metadata views; it holds no business logic of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from lakewarden.analysis.names import normalize
from lakewarden.core import restore
from lakewarden.core.health import Health
from lakewarden.core.metadata import Metadata
from lakewarden.core.pool import SessionPool
from lakewarden.core.session import Session
from lakewarden.core.stages import Stages
from lakewarden.core.tracker import Tracker
from lakewarden.governance.gate import Gate
from lakewarden.governance.grants import Grants
from lakewarden.governance.policy import OPEN_POLICY, Policy, load_policy
from lakewarden.result import Result
from lakewarden.settings import Settings
from lakewarden.signals import checks, monitoring
from lakewarden.signals.table_state import TableState
from lakewarden.store import catalog, maintenance
from lakewarden.store.audit import AuditLog
from lakewarden.store.engine import Engine, locate
from lakewarden.telemetry import Telemetry
from lakewarden.telemetry.instruments import Instruments


class Warden:
    """Governs every statement agents send to one lake. Create with :func:`lakewarden.open`."""

    def __init__(
        self,
        path: str | Path,
        *,
        policy: Policy | str | Path | None = None,
        telemetry: Telemetry | None = None,
        settings: Settings | None = None,
        data_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or Settings.from_env()
        if policy is None:
            self.policy = OPEN_POLICY
        elif isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = load_policy(policy)
        self.telemetry = telemetry or Telemetry()
        self.engine = Engine(locate(path, self.settings, data_path), self.settings)
        self.instruments = Instruments(self.telemetry.meter)
        self.recorder = self.telemetry.recorder(self.instruments)
        grants = Grants(self.policy, self.engine.database, self.settings.statement_timeout_s)
        self.tracker = Tracker(
            self.engine,
            self.policy.event_time,
            self.recorder.signal_time,
            on_reshape=grants.catalog_changed,
        )
        self.stages = Stages(
            settings=self.settings,
            engine=self.engine,
            grants=grants,
            gate=Gate(self.policy),
            tracker=self.tracker,
            audit=AuditLog(self.engine),
            recorder=self.recorder,
        )
        self.health = Health(self.tracker, self.policy, clock)
        # The table gauges read the tables' health at each collection; the instruments exist
        # first because the tracker times its signals on them.
        self.instruments.gauges = self.health
        self.metadata = Metadata(self.stages, self.health)
        self._pool = SessionPool(self.session)
        self.tracker.sync()

    @property
    def clock(self) -> Callable[[], float]:
        """What "now" is for checks and anomaly verdicts (tests move it instead of sleeping)."""
        return self.health.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.health.clock = clock

    @property
    def grants(self) -> Grants:
        return self.stages.grants

    # -- sessions ----------------------------------------------------------------------------

    def session(self, agent: str) -> Session:
        """A session for ``agent``: its identity selects its policy."""
        return Session(self.stages, agent)

    def pooled_session(self, agent: str) -> AbstractContextManager[Session]:
        """A session for one request of ``agent``, reused across requests."""
        return self._pool.session(agent)

    def sql(self, sql: str, params: Any = None, *, agent: str = "anonymous") -> Result:
        """One statement in a short-lived session (convenience for scripts)."""
        with self.session(agent) as s:
            return s.sql(sql, params)

    def row_limit(self, agent: str, requested: int | None) -> int | None:
        return self.stages.grants.row_limit(agent, requested)

    # -- changes -----------------------------------------------------------------------------

    def restore(
        self, table: str, snapshot_id: int, *, agent: str, traceparent: str | None = None
    ) -> Result:
        """Make ``table`` equal to its content at ``snapshot_id``, as one new commit."""
        return restore.restore(self.stages, normalize(table), int(snapshot_id), agent, traceparent)

    def accept_anomaly(self, table: str, *, agent: str) -> dict[str, Any]:
        """Take a table's current volume level (and write pace) as its new normal. Allowed to
        the agents that may restore tables: both decide what the table should be."""
        # Who may is asked first, and the table is then looked up as the agent sees it: a
        # table the agent may not read answers as a missing one (no existence oracle).
        self.stages.grants.require_restore(agent, table, f"accept a new normal for {table}")
        name = self.table(table, agent).name
        return self.health.accept_anomaly(name)

    def refresh(self, *, poll: bool = False) -> None:
        """Pick up commits made outside this warden (other processes, other tools). ``poll``
        (a periodic catch-up, as the monitor's): the catalog is asked only when its files say
        it may have changed, so an outside commit can take a few polls to be seen (at most a
        minute); without it the catalog is always asked."""
        self.tracker.sync(poll=poll)

    def maintain(self) -> maintenance.MaintenanceRun:
        """DuckLake's maintenance under the policy's ``maintenance`` rules (merge small files,
        expire snapshots past the restore window, delete files nothing needs)."""
        keep = self.policy.maintenance.keep_snapshots
        if keep is not None:  # the audit trail of a commit rides in its snapshot
            keep = max(keep, self.settings.audit_retention_days * 86400)
        run = maintenance.maintain(self.engine, keep)
        self.tracker.sync()  # the merge is a snapshot of its own
        return run

    # -- health and metadata -------------------------------------------------------------------

    def checks(
        self, table: str | None = None, now: float | None = None
    ) -> dict[str, list[checks.Finding]]:
        """Every contract check of every table (or of one), as the tables stand now."""
        return self.health.checks(table, now)

    def monitored(self, now: float | None = None) -> dict[str, dict[str, monitoring.Monitored]]:
        return self.health.monitored(now)

    def tables(self, agent: str | None = None) -> list[TableState]:
        return self.metadata.tables(agent)

    def table(self, name: str, agent: str | None = None) -> TableState:
        return self.metadata.table(name, agent)

    def describe(self, name: str, agent: str | None = None) -> dict[str, Any]:
        """A table's schema and signals, with the state of each of its contract checks."""
        return self.metadata.describe(name, agent)

    def snapshots(
        self, table: str | None = None, limit: int = 50, agent: str | None = None
    ) -> list[catalog.Snapshot]:
        return self.metadata.snapshots(table, limit, agent)

    def audit(
        self, agent: str | None = None, limit: int = 100, *, caller: str | None = None
    ) -> list[dict[str, Any]]:
        return self.metadata.audit(agent, limit, caller=caller)

    def is_admin(self, agent: str) -> bool:
        return self.stages.grants.is_admin(agent)

    def can_see(self, agent: str | None, table: str) -> bool:
        return self.stages.grants.can_see(agent, table)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.close()
        self.tracker.close()
        self.telemetry.shutdown()
        self.engine.close()

    def __enter__(self) -> Warden:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(
    path: str | Path,
    *,
    policy: Policy | str | Path | None = None,
    telemetry: Telemetry | None = None,
    settings: Settings | None = None,
    data_path: str | Path | None = None,
) -> Warden:
    """Open (or create) a DuckLake lake folder, a plain DuckDB file ending in ``.duckdb``, or a
    DuckLake whose catalog is a PostgreSQL database: ``"postgres:dbname=lake host=..."`` with
    its data files in ``data_path`` (or ``LAKEWARDEN_DATA_PATH``)."""
    return Warden(path, policy=policy, telemetry=telemetry, settings=settings, data_path=data_path)


__all__ = ["Warden", "open"]
