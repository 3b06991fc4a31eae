"""The agent's grants, limits and mode: whether a statement may run, and within what bounds.

The decision is taken on what the engine will do (see :mod:`lakewarden.governance.authorize`):
the engine's descriptions come through a :class:`Describer`, which the store provides on the
agent's own cursor, so this stage never talks to the engine itself. Verdicts are remembered by
the exact statement text and the catalog version they were taken at.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Protocol

from lakewarden.analysis import Statement
from lakewarden.analysis.cache import BoundedCache
from lakewarden.analysis.plan import BoundPlan, ParseTree
from lakewarden.errors import ExecutionError, PolicyDenied, Violation
from lakewarden.governance import authorize
from lakewarden.governance.policy import Policy
from lakewarden.governance.refusals import refusals

ENFORCE = "enforce"

# Verdicts kept, by the bytes of the statements they are keyed by (a key holds the whole text).
# Sized beside the analysis cache (analysis/statement.py): a verdict is only reused for a text
# that repeats, and the soak's new texts (0.4 MB a minute) would fill 16 MB in 40 minutes.
_VERDICT_CACHE_BYTES = 2 * 1024 * 1024
_Verdict = tuple[tuple[Violation, ...], bool]
_VerdictKey = tuple[str, str, Hashable, int]


def _weigh_verdict(key: _VerdictKey, verdict: _Verdict) -> int:
    return len(key[0]) + len(key[1]) + sum(len(v.detail) + 64 for v in verdict[0])


class Describer(Protocol):
    """The engine's own descriptions of a statement, without running it."""

    def parse_tree(self, sql: str) -> ParseTree | None:
        """DuckDB's parse tree; None when it has none for this kind of statement."""

    def bound_plan(self, sql: str) -> BoundPlan | None:
        """The bound plan; None when the engine cannot describe the statement before running
        it; raises :class:`ExecutionError` when the statement does not bind."""


class Grants:
    """What each agent of a policy may do: statements, tables, rows, time, metadata."""

    def __init__(self, policy: Policy, database: str, default_timeout_s: float | None) -> None:
        self.policy = policy
        self._database = database
        self._default_timeout = default_timeout_s or None
        # Keyed by (agent, exact statement text, catalog version, DDL generation): never by
        # sanitised text, whose literals may carry SQL (query('...')). Shared by request threads.
        self._verdicts: BoundedCache[_VerdictKey, _Verdict] = BoundedCache(
            _VERDICT_CACHE_BYTES, _weigh_verdict
        )
        self._ddl_generation = 0
        self._generation_lock = threading.Lock()
        self._limits: dict[str, tuple[int | None, float | None]] = {}

    # -- statements ------------------------------------------------------------------------

    def check(
        self, agent: str, stmt: Statement, engine: Describer, version: Hashable | None
    ) -> list[Violation]:
        """Raise :class:`PolicyDenied` when refused; return violations flagged but allowed.

        ``version`` names the catalog the verdict was taken on; None (inside a transaction
        that changed the catalog) neither takes a verdict from the cache nor puts one in.
        """
        key = (agent, stmt.text, version, self._ddl_generation)
        verdict = self._verdicts.get(key) if version is not None else None
        if verdict is None:
            verdict = self._verdict(agent, stmt, engine)
            if version is not None:
                self._verdicts.put(key, verdict)
        violations, denied = verdict
        if denied:
            raise PolicyDenied(_message(agent, stmt, violations), list(violations))
        return list(violations)

    def catalog_changed(self) -> None:
        """A DDL statement committed: remembered verdicts may no longer describe the plan."""
        with self._generation_lock:
            self._ddl_generation += 1

    @property
    def generation(self) -> int:
        """How many DDL commits this process has seen (part of every verdict's key)."""
        return self._ddl_generation

    def enforced(self, agent: str) -> bool:
        """Whether the agent's violations refuse (enforce) or are only flagged (warn, observe)."""
        return self.policy.effective_mode(agent) == ENFORCE

    def _verdict(self, agent: str, stmt: Statement, engine: Describer) -> _Verdict:
        hard = refusals(stmt, self._database) or authorize.ddl_refusals(stmt)
        if hard:
            return tuple(hard), True
        parse = engine.parse_tree(stmt.text) if stmt.statement_type == "SELECT" else None
        hard = authorize.before_binding(stmt, parse)
        if hard:
            return tuple(hard), True
        enforce = self.enforced(agent)
        violations = self._text_violations(agent, stmt)
        if violations and enforce:
            return tuple(violations), True  # refused on the text already: nothing to bind
        bound = engine.bound_plan(stmt.plan_text)
        stored = None
        if stmt.body:
            # What a view or table macro stores; when it does not plan on its own the object
            # is refused below (deny by default) rather than failed as an engine error.
            try:
                stored = engine.bound_plan(stmt.body)
            except ExecutionError:
                stored = None
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
        described = [p for p in (bound, stored) if p is not None]
        for plan in described:
            hard += authorize.plan_refusals(stmt, plan, self._database)
        if hard:
            return tuple(hard), True
        rules = self.policy.agent(agent)
        if rules is not None and not self.policy.is_open:
            for plan in described:
                violations += [
                    v for v in authorize.grant_violations(agent, rules, plan) if v not in violations
                ]
        violations = list(dict.fromkeys(violations))
        return tuple(violations), bool(violations) and enforce

    def _text_violations(self, agent: str, stmt: Statement) -> list[Violation]:
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

    # -- bounds ------------------------------------------------------------------------------

    def read_only(self, agent: str) -> bool:
        """True when the policy gives ``agent`` neither write globs nor DDL."""
        if self.policy.is_open:
            return False
        rules = self.policy.agent(agent)
        return rules is None or (not rules.write and not rules.ddl)

    def row_limit(self, agent: str, requested: int | None) -> int | None:
        cap = self._agent_limits(agent)[0]
        if requested is None:
            return cap
        return min(requested, cap) if cap is not None else requested

    def timeout(self, agent: str) -> float | None:
        return self._agent_limits(agent)[1]

    def _agent_limits(self, agent: str) -> tuple[int | None, float | None]:
        """(max rows, statement timeout) of an agent, looked up once."""
        limits = self._limits.get(agent)
        if limits is None:
            rules = self.policy.agent(agent)
            timeout = rules.timeout_s if rules is not None else None
            limits = (
                rules.max_rows if rules is not None else None,
                timeout if timeout is not None else self._default_timeout,
            )
            self._limits[agent] = limits
        return limits

    # -- metadata and restore ----------------------------------------------------------------
    #
    # Metadata follows the data: an agent sees only the tables its read grants cover.
    # ``agent=None`` is the operator (CLI, an application holding the SDK): everything.

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

    def require_restore(self, agent: str, table: str, what: str = "restore tables") -> None:
        """Restoring and accepting a new normal decide what a table should be: only the agents
        the policy's ``restore`` list names may."""
        if not self.policy.can_restore(agent):
            raise PolicyDenied(
                f"agent {agent!r} may not {what}; the policy's restore list names who may",
                [Violation("restore", f"{agent} is not allowed to {what}", table=table)],
            )

    def audit_scope(self, caller: str, agent: str | None) -> str | None:
        """The agent whose audit records ``caller`` may read (None: every agent's)."""
        if self.is_admin(caller):
            return agent
        if agent not in (None, caller):
            raise PolicyDenied(
                f"agent {caller!r} may read only its own audit records",
                [Violation("audit_scope", "only admins read other agents' audit records")],
            )
        return caller


def _message(agent: str, stmt: Statement, violations: Sequence[Violation]) -> str:
    reasons = "; ".join(v.detail for v in violations)
    return f"{stmt.summary} refused for agent {agent!r}: {reasons}"
