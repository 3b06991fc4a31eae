"""The stages one lake's statements pass through, built once by the warden."""

from __future__ import annotations

from dataclasses import dataclass

from lakewarden.core.tracker import Tracker
from lakewarden.governance.gate import Gate
from lakewarden.governance.grants import Grants
from lakewarden.settings import Settings
from lakewarden.store.audit import AuditLog
from lakewarden.store.engine import Engine
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

    @property
    def namespace(self) -> str:
        return self.engine.location.namespace
