"""The stages one lake's statements pass through, built once by the warden."""

from __future__ import annotations

from dataclasses import dataclass, field

from lakewarden.core.tracker import Tracker
from lakewarden.governance.gate import Gate
from lakewarden.governance.grants import Grants
from lakewarden.settings import Settings
from lakewarden.store.audit import AuditLog
from lakewarden.store.engine import Engine
from lakewarden.store.staging import Shapes, StageTables, Staging
from lakewarden.telemetry.recorder import Recorder


@dataclass(frozen=True)
class Stages:
    settings: Settings
    engine: Engine  # store: the hardened engine and its cursors
    grants: Grants  # governance: who may do what, within what bounds
    gate: Gate  # governance: whether a write may commit
    tracker: Tracker  # signals of every table, kept from the change feed
    audit: AuditLog  # store: the audit trail
    recorder: Recorder  # telemetry: spans and metric points, off the agent's path
    shapes: Shapes = field(default_factory=Shapes)  # store: stage tables of staged inserts

    def stager(self, tables: StageTables) -> Staging:
        """How a transaction stages its inserts into a session's ``tables``."""
        return Staging(self.shapes, lambda: self.grants.generation, self.tracker.get, tables)

    @property
    def namespace(self) -> str:
        return self.engine.location.namespace
