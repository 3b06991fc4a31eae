"""The core object: one lake, its engine, its policy, its table signals and its telemetry."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from lakewarden import wording
from lakewarden.analysis import Statement
from lakewarden.analysis.cache import BoundedCache
from lakewarden.analysis.names import normalize
from lakewarden.errors import ExecutionError, LakewardenError, NotFound, PolicyDenied, Violation
from lakewarden.governance import authorize
from lakewarden.governance.policy import OPEN_POLICY, AnomalySettings, Policy, load_policy
from lakewarden.governance.policy import AnomalyRule as PolicyAnomalyRule
from lakewarden.governance.refusals import refusals
from lakewarden.core.session import Session
from lakewarden.settings import Settings
from lakewarden.signals import checks, monitoring
from lakewarden.signals.anomaly import AnomalyRule
from lakewarden.signals.table_state import TableState
from lakewarden.store import audit, catalog, plan
from lakewarden.store.engine import LAKE_ALIAS, Engine, locate
from lakewarden.telemetry import Telemetry
from lakewarden.telemetry.instruments import Instruments
from lakewarden.core.tracker import Tracker

log = logging.getLogger(__name__)

_ENFORCE = "enforce"
_DEFAULT_ANOMALY = AnomalySettings()
# Volume scores rows added by a write; freshness scores seconds since the last write.
_ANOMALY_UNITS = {monitoring.VOLUME: "rows", monitoring.FRESHNESS: "s"}


def _rule(rule: PolicyAnomalyRule) -> AnomalyRule | None:
    return AnomalyRule(**rule.scorer_fields()) if rule.enabled else None


# Verdicts kept, by the bytes of the statements they are keyed by (a key holds the whole text).
_VERDICT_CACHE_BYTES = 16 * 1024 * 1024
_Verdict = tuple[tuple[Violation, ...], bool]
_VerdictKey = tuple[str, str, int | None, int]


def _weigh_verdict(key: _VerdictKey, verdict: _Verdict) -> int:
    return len(key[0]) + len(key[1]) + sum(len(v.detail) + 64 for v in verdict[0])


_IDLE_SESSIONS = 8  # per agent, kept open by pooled_session()


class Warden:
    """Governs every statement agents send to one lake. Create with :func:`lakewarden.open`."""

    def __init__(
        self,
        path: str | Path,
        *,
        policy: Policy | str | Path | None = None,
        telemetry: Telemetry | None = None,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # what "now" is for freshness checks: injectable for tests
        self.settings = settings or Settings.from_env()
        if policy is None:
            self.policy = OPEN_POLICY
        elif isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = load_policy(policy)
        self.telemetry = telemetry or Telemetry()
        self.engine = Engine(locate(path, self.settings), self.settings)
        self._lock = threading.Lock()
        self._idle: dict[str, list[Session]] = {}
        # Keyed by (agent, exact statement text, last snapshot seen, DDL generation): never by
        # sanitised text, whose literals may carry SQL (query('...')). Shared by request threads.
        self._verdicts: BoundedCache[_VerdictKey, _Verdict] = BoundedCache(
            _VERDICT_CACHE_BYTES, _weigh_verdict
        )
        self._ddl_generation = 0
        self._agent_limits: dict[str, tuple[int | None, float | None]] = {}
        self._monitored: tuple[tuple[int, int | None, int], dict[str, Any]] | None = None
        self._monitors: dict[str, tuple[int, monitoring.TableMonitor]] = {}
        # Not self._lock: the first evaluation replays every table's history, and sessions must
        # not wait for it.
        self._monitors_lock = threading.Lock()
        self.instruments = Instruments(
            self.telemetry.meter,
            self._table_states,
            self._check_states,
            self._contract_limits,
            self._anomaly_scores,
        )
        self.recorder = self.telemetry.recorder(self.instruments)
        self._audit_cur = self.engine.cursor()
        with self.engine.write_lock:
            self._bookkeeping(lambda cur: audit.ensure(cur), "audit trail")
            self._bookkeeping(
                lambda cur: audit.prune(cur, self.settings.audit_retention_days), "audit retention"
            )
        self._refusals_cur = self.engine.state_cursor()
        audit.ensure_refusals(self._refusals_cur)
        audit.prune(self._refusals_cur, self.settings.audit_retention_days, audit.REFUSALS)
        self.tracker = Tracker(self.engine, self._event_time, self._time_signal)
        self.tracker.sync()

    # -- sessions ----------------------------------------------------------------------------

    def session(self, agent: str) -> Session:
        """A session for ``agent``: its identity selects its policy."""
        return Session(self, agent)

    @contextlib.contextmanager
    def pooled_session(self, agent: str) -> Iterator[Session]:
        """A session for one request of ``agent``, reused across requests.

        Opening a session opens a DuckDB cursor (about 2 ms); a server answering many small
        requests keeps a few per agent instead.
        """
        with self._lock:
            idle = self._idle.setdefault(agent, [])
            session = idle.pop() if idle else None
        if session is None:
            session = Session(self, agent)
        reusable = False
        try:
            yield session
            reusable = True
        except LakewardenError:
            reusable = True  # a refused statement leaves the session as it was
            raise
        finally:
            with self._lock:
                idle = self._idle.setdefault(agent, [])
                keep = reusable and not session.closed and len(idle) < _IDLE_SESSIONS
                if keep:
                    idle.append(session)
            if not keep:
                session.close()

    def sql(self, sql: str, params: Any = None, *, agent: str = "anonymous") -> Any:
        """One statement in a short-lived session (convenience for scripts)."""
        with self.session(agent) as s:
            return s.sql(sql, params)

    # -- governance ----------------------------------------------------------------------------

    def govern(
        self,
        agent: str,
        stmt: Statement,
        cur: duckdb.DuckDBPyConnection,
        *,
        cacheable: bool = True,
    ) -> list[Violation]:
        """Raise :class:`PolicyDenied` when refused; return violations flagged but allowed.

        The engine describes the statement on ``cur`` (the agent's own cursor, so an open
        transaction's changes are seen) without running it. The verdict depends on the agent,
        the exact text and the lake's catalog, so it is remembered until the catalog may have
        changed; ``cacheable`` is False inside a transaction that has changed the catalog.
        """
        key = (agent, stmt.text, self.tracker.snapshot_id, self._ddl_generation)
        verdict = self._verdicts.get(key) if cacheable else None
        if verdict is None:
            verdict = self._verdict(agent, stmt, cur)
            if cacheable:
                self._verdicts.put(key, verdict)
        violations, denied = verdict
        if denied:
            raise PolicyDenied(_message(agent, stmt, violations), list(violations))
        return list(violations)

    def catalog_changed(self) -> None:
        """A DDL statement committed: remembered verdicts may no longer describe the plan."""
        with self._lock:
            self._ddl_generation += 1

    def _verdict(self, agent: str, stmt: Statement, cur: duckdb.DuckDBPyConnection) -> _Verdict:
        hard = refusals(stmt, self.engine.database) or authorize.ddl_refusals(stmt)
        if hard:
            return tuple(hard), True
        parse = None
        if stmt.statement_type == "SELECT":
            with contextlib.suppress(plan.PlanUnavailable):  # DESCRIBE, SHOW: text suffices
                parse = plan.parse_tree(cur, stmt.text)
        hard = authorize.before_binding(stmt, parse)
        if hard:
            return tuple(hard), True
        enforce = self.policy.effective_mode(agent) == _ENFORCE
        violations = self._policy_violations(agent, stmt)
        if violations and enforce:
            return tuple(violations), True  # refused on the text already: nothing to bind
        bound = self._plan(stmt, cur, stmt.plan_text)
        stored = None
        if stmt.body:
            # What a view or table macro stores; when it does not plan on its own the object
            # is refused below (deny by default) rather than failed as an engine error.
            with contextlib.suppress(ExecutionError):
                stored = self._plan(stmt, cur, stmt.body)
        if bound is None and stmt.kind != "ddl":
            hard = [
                Violation(
                    "unplannable",
                    "the engine cannot describe this statement before running it, so it cannot "
                    "be authorized; write PIVOT with an explicit IN (...) list, or split it",
                )
            ]
        if stmt.body and stored is None:
            hard.append(
                Violation(
                    "stored_query",
                    "the query this object stores cannot be planned on its own (a macro with "
                    "parameters?), so what it reads cannot be checked",
                )
            )
        for described in (bound, stored):
            if described is not None:
                hard += authorize.plan_refusals(stmt, described, self.engine.database)
        if hard:
            return tuple(hard), True
        rules = self.policy.agent(agent)
        if rules is not None and not self.policy.is_open:
            for described in (bound, stored):
                if described is not None:
                    violations += [
                        v
                        for v in authorize.grant_violations(agent, rules, described)
                        if v not in violations
                    ]
        violations = list(dict.fromkeys(violations))
        return tuple(violations), bool(violations) and enforce

    def _plan(
        self, stmt: Statement, cur: duckdb.DuckDBPyConnection, text: str
    ) -> plan.BoundPlan | None:
        """The engine's plan of ``text``; None when it cannot describe such a statement."""
        try:
            return plan.bound_plan(cur, text)
        except plan.PlanUnavailable as exc:
            if not exc.binding:
                return None
            # The statement does not bind (unknown table or column, type error): running it
            # would fail the same way, so it fails now, and nothing ran.
            rule = exc.error_type.replace(" ", "_") + "_error"
            raise ExecutionError(
                f"{exc.reason}; nothing was committed", [Violation(rule, exc.reason)]
            ) from exc

    def _policy_violations(self, agent: str, stmt: Statement) -> list[Violation]:
        if self.policy.is_open:
            return []
        rules = self.policy.agent(agent)
        if rules is None:
            return [Violation("unknown_agent", f"agent {agent!r} is not in the policy")]
        out = [
            Violation("read", f"{agent} may not read {t}", table=t)
            for t in stmt.tables_read
            if not rules.can_read(t)
        ]
        if stmt.kind == "ddl" and not rules.ddl:
            out.append(Violation("ddl", f"{agent} may not run DDL ({stmt.operation})"))
        elif stmt.kind != "read":
            out += [
                Violation("write", f"{agent} may not write {t}", table=t)
                for t in stmt.tables_written
                if not rules.can_write(t)
            ]
        return out

    def read_only(self, agent: str) -> bool:
        """True when the policy gives ``agent`` neither write globs nor DDL."""
        if self.policy.is_open:
            return False
        rules = self.policy.agent(agent)
        return rules is None or (not rules.write and not rules.ddl)

    def row_limit(self, agent: str, requested: int | None) -> int | None:
        cap = self._limits(agent)[0]
        if requested is None:
            return cap
        return min(requested, cap) if cap is not None else requested

    def timeout(self, agent: str) -> float | None:
        return self._limits(agent)[1]

    def _limits(self, agent: str) -> tuple[int | None, float | None]:
        """(max rows, statement timeout) of an agent, looked up once."""
        limits = self._agent_limits.get(agent)
        if limits is None:
            rules = self.policy.agent(agent)
            timeout = rules.timeout_s if rules is not None else None
            limits = (
                rules.max_rows if rules is not None else None,
                timeout if timeout is not None else (self.settings.statement_timeout_s or None),
            )
            self._agent_limits[agent] = limits
        return limits

    # -- signals -------------------------------------------------------------------------------

    def _event_time(self, table: str) -> str | None:
        contract = self.policy.contract(table)
        return contract.event_time if contract is not None else None

    def _table_states(self) -> list[TableState]:
        return self.tracker.tables()

    def checks(
        self, table: str | None = None, now: float | None = None
    ) -> dict[str, list[checks.Finding]]:
        """Every contract check of every table (or of one), as the tables stand now."""
        now = self.clock() if now is None else now
        out: dict[str, list[checks.Finding]] = {}
        monitored = self.monitored(now)
        for state in self.tracker.tables():
            if table is not None and state.name != normalize(table):
                continue
            contract = self.policy.contract(state.name)
            found = checks.evaluate(state, contract, now) if contract is not None else []
            for signal, m in monitored.get(state.name, {}).items():
                if m.result.score is not None:
                    found.append(
                        checks.Finding(
                            f"{signal}_anomaly",
                            not m.result.anomalous,
                            m.result.reason,
                            round(m.value, 3) if m.value is not None else None,
                            [m.result.lower, m.result.upper],
                            wording.expected_range(
                                m.result.lower, m.result.upper, _ANOMALY_UNITS[signal]
                            ),
                        )
                    )
            if found:
                out[state.name] = found
        return out

    def monitored(self, now: float | None = None) -> dict[str, dict[str, monitoring.Monitored]]:
        """Volume and freshness anomaly scores of every table (cached for a second: the
        check gauges and the score gauges of one scrape read the same numbers)."""
        now = self.clock() if now is None else now
        key = (int(now), self.tracker.snapshot_id, len(self.tracker.tables()))
        cached = self._monitored
        if cached is not None and cached[0] == key:
            return cached[1]
        out: dict[str, dict[str, monitoring.Monitored]] = {}
        names = [state.name for state in self.tracker.tables()]
        with self._monitors_lock:
            for name in names:
                out[name] = self._monitor(name).evaluate(now)
            for gone in set(self._monitors) - set(names):
                del self._monitors[gone]
        self._monitored = (key, out)
        return out

    def _monitor(self, name: str) -> monitoring.TableMonitor:
        """The table's anomaly models, fed only the writes they have not seen (O(1) when idle)."""
        seen, monitor = self._monitors.get(name, (-1, None))
        new = self.tracker.writes_since(name, seen) if monitor is not None else None
        if monitor is None or new is None:
            settings = self._anomaly_settings(name)
            total, writes = self.tracker.writes_since(name, 0) or (0, [])
            monitor = monitoring.replay(
                writes,
                _rule(settings.volume),
                _rule(settings.freshness),
                self.tracker.anomaly_accepts(name),
            )
        else:
            total, writes = new
            for write in writes:
                monitor.add(write)
        self._monitors[name] = (total, monitor)
        return monitor

    def accept_anomaly(self, table: str, *, agent: str) -> dict[str, Any]:
        """Take a table's current volume level (and write pace) as its new normal.

        Allowed to the agents that may restore tables: both decide what the table should be.
        """
        name = self.table(table).name
        if not self.policy.can_restore(agent):
            raise PolicyDenied(
                f"agent {agent!r} may not accept a new normal for {name}; the policy's restore "
                "list names who may",
                [Violation("restore", f"{agent} is not allowed to accept anomalies", table=name)],
            )
        now = self.clock()
        with self._monitors_lock:
            monitor = self._monitor(name)
            changed = monitor.accept(now)
            self.tracker.accept_anomaly(name, now)
            self._monitored = None
        return {
            "table": name,
            "accepted_at": now,
            "changed": changed,
            "monitors": {s: m.to_dict() for s, m in monitor.evaluate(now).items()},
        }

    def _anomaly_settings(self, table: str) -> AnomalySettings:
        contract = self.policy.contract(table)
        return contract.anomaly if contract is not None else _DEFAULT_ANOMALY

    def _anomaly_scores(self) -> list[tuple[str, str, float]]:
        return [
            (table, signal, m.result.score)
            for table, found in self.monitored().items()
            for signal, m in found.items()
            if m.result.score is not None
        ]

    def _check_states(self) -> list[tuple[str, str, bool]]:
        return [(t, f.check, f.passing) for t, found in self.checks().items() for f in found]

    def _contract_limits(self) -> list[tuple[str, float | None, dict[str, float]]]:
        out = []
        for name, contract in self.policy.tables.items():
            limits = {
                c: r.max_null_ratio
                for c, r in contract.columns.items()
                if r.max_null_ratio is not None
            }
            out.append((name, contract.freshness_sla, limits))
        return out

    def _time_signal(self, signal: str, seconds: float) -> None:
        self.instruments.signal_duration.record(seconds, {"lakewarden.signal": signal})

    # -- audit and restore ------------------------------------------------------------------

    def _bookkeeping(
        self, work: Callable[[duckdb.DuckDBPyConnection], None], message: str
    ) -> int | None:
        """Run lakewarden's own change in a commit authored by lakewarden; its snapshot id."""
        cur = self._audit_cur
        cur.begin()
        try:
            work(cur)
            if self.engine.location.is_lake:
                cur.execute(f"CALL {LAKE_ALIAS}.set_commit_message(?, ?)", [audit.AUTHOR, message])
            cur.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                cur.rollback()
            raise
        if not self.engine.location.is_lake:
            return None
        last = catalog.last_commit(cur)
        return last[0] if last else None

    def audit_refused(self, record: audit.AuditRecord) -> None:
        """Record a decision that committed nothing (denied, blocked, failed)."""
        try:
            with self._lock:
                audit.insert(self._refusals_cur, [record], audit.REFUSALS)
        except Exception:
            log.exception("could not write the audit record of a refused statement")

    def audit(
        self, agent: str | None = None, limit: int = 100, *, caller: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit records, newest first; a ``caller`` that is not an admin sees only its own."""
        if caller is not None and not self.is_admin(caller):
            if agent not in (None, caller):
                raise PolicyDenied(
                    f"agent {caller!r} may read only its own audit records",
                    [Violation("audit_scope", "only admins read other agents' audit records")],
                )
            agent = caller
        with self._lock:
            cur, refusals = self.engine.cursor(), self.engine.state_cursor()
            try:
                return audit.read(
                    cur, refusals, agent=agent, limit=limit, is_lake=self.engine.location.is_lake
                )
            finally:
                cur.close()
                refusals.close()

    def restore(
        self, table: str, snapshot_id: int, *, agent: str, traceparent: str | None = None
    ) -> Any:
        """Make ``table`` equal to its content at ``snapshot_id``, as one new commit."""
        from lakewarden.core.restore import restore

        return restore(self, normalize(table), int(snapshot_id), agent, traceparent)

    # -- reading the lake ------------------------------------------------------------------------
    #
    # Metadata follows the data: with ``agent`` given, only tables its read grants cover exist,
    # and a table it may not read is "not found" in the very words of a missing one, so the
    # answer tells nothing about what the agent cannot see. ``agent=None`` is the operator (CLI,
    # an application holding the SDK): everything.

    def is_admin(self, agent: str) -> bool:
        """May see every table's metadata and every agent's audit records: open mode, or an
        agent that reads every table (``read: ["*"]``) and is named in the policy's
        ``restore`` list."""
        if self.policy.is_open:
            return True
        rules = self.policy.agent(agent)
        return rules is not None and "*" in rules.read and self.policy.can_restore(agent)

    def can_see(self, agent: str | None, table: str) -> bool:
        """Whether ``agent``'s read grants cover ``table`` (always, for the operator)."""
        if agent is None or self.policy.is_open:
            return True
        rules = self.policy.agent(agent)
        return rules is not None and rules.can_read(table)

    def tables(self, agent: str | None = None) -> list[TableState]:
        states = (t for t in self.tracker.tables() if self.can_see(agent, t.name))
        return sorted(states, key=lambda t: t.name)

    def table(self, name: str, agent: str | None = None) -> TableState:
        state = self.tracker.get(normalize(name))
        if state is None or not self.can_see(agent, state.name):
            raise NotFound(
                f"table {name!r} does not exist in this lake "
                "(name it schema.table, or just table in schema main)"
            )
        return state

    def describe(self, name: str, agent: str | None = None) -> dict[str, Any]:
        """A table's schema and signals, with the state of each of its contract checks."""
        state = self.table(name, agent)
        out = state.summary()
        out["checks"] = [
            {
                "check": f.check,
                "passing": f.passing,
                "detail": f.detail,
                "measured": f.measured,
                "limit": f.limit,
                "expected": f.expected,
            }
            for f in self.checks(state.name).get(state.name, [])
        ]
        out["monitors"] = {
            signal: m.to_dict() for signal, m in self.monitored().get(state.name, {}).items()
        }
        return out

    def snapshots(
        self, table: str | None = None, limit: int = 50, agent: str | None = None
    ) -> list[catalog.Snapshot]:
        """Snapshots newest first, optionally only those that changed ``table``; for ``agent``,
        only snapshots whose every changed table it may read."""
        if table is not None and agent is not None:
            self.table(table, agent)  # NotFound for a table that never was, or is not its to see
        if not self.engine.location.is_lake:
            return []
        everything = agent is None or self.is_admin(agent)
        with self._lock:
            cur = self.engine.cursor()
            try:
                names = catalog.table_ids(cur)

                def visible(snap: catalog.Snapshot) -> bool:
                    # lakewarden's own bookkeeping commits (audit of refusals) are not news
                    return snap.agent != audit.AUTHOR and (
                        everything or self._snapshot_visible(str(agent), snap, names)
                    )

                if table is None:
                    rows = self._rows_by_snapshot(None)
                    history = (
                        catalog.snapshots(cur, limit=limit * 2 + 10)
                        if everything
                        else catalog.snapshots(cur)
                    )
                    found = [s for s in history if visible(s)][:limit]
                    return [_with_rows(s.described(names), rows) for s in found]
                name = normalize(table)
                rows = self._rows_by_snapshot(name)
                ids = {k for k, v in names.items() if v == name}
                out = []
                for snap in catalog.snapshots(cur):
                    if not everything and not self._snapshot_visible(str(agent), snap, names):
                        continue  # it also changed a table the agent may not read
                    if any(
                        (key == "tables_created" and name in map(normalize, values))
                        or ids.intersection(values)
                        for key, values in snap.changes.items()
                    ):
                        out.append(
                            snap.described(names).with_rows(*rows.get(snap.snapshot_id, (0, 0)))
                        )
                        if len(out) >= limit:
                            break
                return out
            finally:
                cur.close()

    def _rows_by_snapshot(self, table: str | None) -> dict[int, tuple[int, int]]:
        """Rows added and removed per snapshot, over one table or all, from the write history."""
        out: dict[int, tuple[int, int]] = {}
        states = self.tracker.tables() if table is None else [self.tracker.get(table)]
        for state in states:
            if state is None:
                continue
            for w in self.tracker.writes(state.name):
                if w.snapshot_id is None:
                    continue
                added, removed = out.get(w.snapshot_id, (0, 0))
                out[w.snapshot_id] = (added + w.rows_added, removed + w.rows_removed)
        return out

    def _snapshot_visible(self, agent: str, snap: catalog.Snapshot, names: dict[str, str]) -> bool:
        for key, values in snap.changes.items():
            if key.startswith("schemas_"):
                continue  # schemas created or dropped name no table
            for value in values:
                # "tables_created" (and "views_created") list names; every other kind of change
                # (inserts, inlined inserts, deletes, drops, alters, ...) lists table ids. What
                # cannot be named is hidden rather than guessed at.
                table = normalize(value) if key.endswith("_created") else names.get(str(value))
                if table == audit.TABLE:
                    continue  # every governed commit writes its audit records along with it
                if table is None or not self.can_see(agent, table):
                    return False
        return True

    def refresh(self) -> None:
        """Pick up commits made outside this warden (other processes, other tools)."""
        # Under the write lock: a commit of ours is applied by the session that made it, which
        # then knows its snapshot id for sure.
        with self.engine.write_lock:
            self.tracker.sync()

    def close(self) -> None:
        with self._lock:
            for sessions in self._idle.values():
                for session in sessions:
                    session.close()
            self._idle.clear()
        self.telemetry.shutdown()
        self.engine.close()

    def __enter__(self) -> Warden:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_rows(snap: catalog.Snapshot, rows: dict[int, tuple[int, int]]) -> catalog.Snapshot:
    """The snapshot with its rows added and removed: 0/0 when it wrote no rows (DDL); unknown
    when it did but the bounded write history no longer holds it."""
    known = rows.get(snap.snapshot_id)
    if known is not None:
        return snap.with_rows(*known)
    wrote = snap.summary and ("inserted into" in snap.summary or "deleted from" in snap.summary)
    return snap if wrote else snap.with_rows(0, 0)


def _message(agent: str, stmt: Statement, violations: Sequence[Violation]) -> str:
    reasons = "; ".join(v.detail for v in violations)
    return f"{stmt.summary} refused for agent {agent!r}: {reasons}"


def open(
    path: str | Path,
    *,
    policy: Policy | str | Path | None = None,
    telemetry: Telemetry | None = None,
    settings: Settings | None = None,
) -> Warden:
    """Open (or create) a DuckLake lake folder, or a plain DuckDB file ending in ``.duckdb``."""
    return Warden(path, policy=policy, telemetry=telemetry, settings=settings)
