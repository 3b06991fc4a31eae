"""Table health: every contract check and anomaly monitor, judged at a given time.

Checks are evaluated on the tracked table states; the anomaly monitors are fed each table's
write history incrementally, so judging an idle table costs no replay. This is also what the
table gauges read at each metric collection (:class:`lakewarden.telemetry.instruments.Gauges`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lakewarden import wording
from lakewarden.analysis.names import normalize
from lakewarden.core.tracker import Tracker
from lakewarden.governance.policy import AnomalyRule as PolicyAnomalyRule
from lakewarden.governance.policy import AnomalySettings, Policy, TableContract
from lakewarden.signals import checks, monitoring
from lakewarden.signals.anomaly import AnomalyRule
from lakewarden.signals.table_state import TableState

_DEFAULT_ANOMALY = AnomalySettings()
# Volume scores rows added by a write; freshness scores seconds since the last write.
_ANOMALY_UNITS = {monitoring.VOLUME: "rows", monitoring.FRESHNESS: "s"}

Monitored = dict[str, dict[str, monitoring.Monitored]]


def _rule(rule: PolicyAnomalyRule) -> AnomalyRule | None:
    return rule.scorer() if rule.enabled else None


def _anomaly_finding(signal: str, m: monitoring.Monitored) -> checks.Finding:
    return checks.Finding(
        f"{signal}_anomaly",
        not m.result.anomalous,
        m.result.reason,
        round(m.value, 3) if m.value is not None else None,
        [m.result.lower, m.result.upper],
        wording.expected_range(m.result.lower, m.result.upper, _ANOMALY_UNITS[signal]),
    )


class Health:
    def __init__(
        self, tracker: Tracker, policy: Policy, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock  # what "now" is: injectable, so tests move time instead of sleeping
        self._tracker = tracker
        self._policy = policy
        self._monitored: tuple[tuple[int, int | None, int], Monitored] | None = None
        self._monitors: dict[str, tuple[int, monitoring.TableMonitor]] = {}
        self._fed = -1  # the tracker's write generation the monitors have all been fed
        # Every poll judges every table: what does not change between polls is kept. The
        # contract of each table (the policy is fixed), for the tables as last listed ...
        self._contracts: tuple[tuple[str, ...], dict[str, TableContract | None]] | None = None
        # ... and each anomaly finding with the verdict it words: an idle table's volume
        # verdict is the same object from poll to poll, so its finding is too.
        self._findings: dict[tuple[str, str], tuple[monitoring.Monitored, checks.Finding]] = {}
        # Its own lock: the first evaluation replays every table's history, and no agent's
        # session may wait for it.
        self._lock = threading.Lock()

    def checks(
        self, table: str | None = None, now: float | None = None
    ) -> dict[str, list[checks.Finding]]:
        """Every contract check and anomaly verdict of every table (or of one), at ``now``."""
        now = self.clock() if now is None else now
        out: dict[str, list[checks.Finding]] = {}
        monitored = self.monitored(now)
        states = self._tracker.tables()
        contracts = self._contracts_of(states)
        wanted = normalize(table) if table is not None else None
        known = self._findings
        kept = {} if wanted is None else known  # a full pass forgets dropped tables
        for state in states:
            if wanted is not None and state.name != wanted:
                continue
            contract = contracts.get(state.name)
            found = checks.evaluate(state, contract, now) if contract is not None else []
            for signal, m in monitored.get(state.name, {}).items():
                if m.result.score is None:
                    continue
                key = (state.name, signal)
                last = known.get(key)
                if last is not None and last[0] is m:
                    finding = last[1]
                else:
                    finding = _anomaly_finding(signal, m)
                kept[key] = (m, finding)
                found.append(finding)
            if found:
                out[state.name] = found
        self._findings = kept
        return out

    def _contracts_of(self, states: list[TableState]) -> dict[str, TableContract | None]:
        names = tuple(state.name for state in states)
        cached = self._contracts
        if cached is not None and cached[0] == names:
            return cached[1]
        contracts = {name: self._policy.contract(name) for name in names}
        self._contracts = (names, contracts)
        return contracts

    def monitored(self, now: float | None = None) -> Monitored:
        """Volume and freshness anomaly verdicts of every table (kept for the second: the
        check gauges and the score gauges of one scrape read the same numbers)."""
        now = self.clock() if now is None else now
        key = (int(now), self._tracker.snapshot_id, len(self._tracker.tables()))
        cached = self._monitored
        if cached is not None and cached[0] == key:
            return cached[1]
        out: Monitored = {}
        names = [state.name for state in self._tracker.tables()]
        with self._lock:
            # Read before the catch-up: a write remembered meanwhile is caught up next time.
            generation = self._tracker.generation
            # Nothing written anywhere since the last catch-up (an idle poll): no table's
            # monitor needs one.
            fed = generation == self._fed
            for name in names:
                known = self._monitors.get(name) if fed else None
                monitor = known[1] if known is not None else self._monitor(name)
                out[name] = monitor.evaluate(now)
            for gone in set(self._monitors) - set(names):
                del self._monitors[gone]
            self._fed = generation
        self._monitored = (key, out)
        return out

    def _monitor(self, name: str) -> monitoring.TableMonitor:
        """The table's anomaly models, fed only the writes they have not seen (O(1) when idle)."""
        seen, monitor = self._monitors.get(name, (-1, None))
        new = self._tracker.writes_since(name, seen) if monitor is not None else None
        if monitor is None or new is None:
            settings = self._anomaly_settings(name)
            total, writes = self._tracker.writes_since(name, 0) or (0, [])
            monitor = monitoring.replay(
                writes,
                _rule(settings.volume),
                _rule(settings.freshness),
                self._tracker.anomaly_accepts(name),
            )
        else:
            total, writes = new
            for write in writes:
                monitor.add(write)
        self._monitors[name] = (total, monitor)
        return monitor

    def accept_anomaly(self, name: str) -> dict[str, Any]:
        """Take a table's current volume level (and write pace) as its new normal."""
        now = self.clock()
        with self._lock:
            monitor = self._monitor(name)
            changed = monitor.accept(now)
            self._tracker.accept_anomaly(name, now)
            self._monitored = None
        return {
            "table": name,
            "accepted_at": now,
            "changed": changed,
            "monitors": {s: m.to_dict() for s, m in monitor.evaluate(now).items()},
        }

    def _anomaly_settings(self, table: str) -> AnomalySettings:
        contract = self._policy.contract(table)
        return contract.anomaly if contract is not None else _DEFAULT_ANOMALY

    # -- what the table gauges read (lakewarden.telemetry.instruments.Gauges) ----------------

    def tables(self) -> list[TableState]:
        return self._tracker.tables()

    def check_states(self) -> list[tuple[str, str, bool]]:
        return [(t, f.check, f.passing) for t, found in self.checks().items() for f in found]

    def anomaly_scores(self) -> list[tuple[str, str, float]]:
        return [
            (table, signal, m.result.score)
            for table, found in self.monitored().items()
            for signal, m in found.items()
            if m.result.score is not None
        ]

    def contract_limits(self) -> list[tuple[str, float | None, dict[str, float]]]:
        out = []
        for name, contract in self._policy.tables.items():
            limits = {
                c: r.max_null_ratio
                for c, r in contract.columns.items()
                if r.max_null_ratio is not None
            }
            out.append((name, contract.freshness_sla, limits))
        return out
