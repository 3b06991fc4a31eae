"""The quality gate: judge the state a write would leave, before anything is visible.

The store measures each contracted table inside the open transaction (one aggregate over the
contracted columns, so what is judged is exactly what would be committed); the gate compares it
with the table's state before the write and the contract, and says whether it may commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lakewarden.errors import QualityGateFailed, Violation
from lakewarden.governance.policy import Policy
from lakewarden.signals import checks
from lakewarden.signals.delta import Delta
from lakewarden.signals.table_state import TableState
from lakewarden.signals.update import TableSignals


class Projector(Protocol):
    """An open transaction, as the gate sees it."""

    def project(
        self, table: str, before: TableState | None, columns: Callable[[str], bool]
    ) -> TableState | None:
        """The state ``table`` would be left in, with null counts measured for the
        ``columns`` chosen; None when the transaction drops it."""

    def counts(self, table: str) -> checks.WriteCounts:
        """Rows the transaction inserted, deleted and updated in ``table``."""


@dataclass(frozen=True)
class Verdict:
    """What the gate found, and the signals each contracted table would be left with."""

    violations: tuple[Violation, ...] = ()
    projected: dict[str, TableSignals] = field(default_factory=dict)


class Gate:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def judges(self, tables: Iterable[str]) -> bool:
        """Whether any of ``tables`` has a contract to judge."""
        return any(self._policy.contract(t) is not None for t in tables)

    def judge(
        self,
        tables: Iterable[str],
        before: Mapping[str, TableState | None],
        tx: Projector,
    ) -> Verdict:
        """Judge every written table that has a contract, as ``tx`` would leave it."""
        violations: list[Violation] = []
        projected: dict[str, TableSignals] = {}
        for table in tables:
            contract = self._policy.contract(table)
            if contract is None:
                continue
            old = before.get(table)
            after = tx.project(table, old, contract.has_column)
            if after is None:
                continue  # dropped in this transaction: nothing left to judge
            counts = tx.counts(table)
            projected[table] = TableSignals(
                after,
                Delta(inserted=counts.inserted, deleted=counts.deleted, updated=counts.updated),
            )
            violations += [
                Violation(f.check, f"{table}: {f.detail}", f.measured, f.limit, table)
                for f in checks.gate(old, after, counts, contract)
            ]
        return Verdict(tuple(violations), projected)

    @staticmethod
    def refusal(summary: str, verdict: Verdict) -> QualityGateFailed:
        return QualityGateFailed(
            f"{summary} was rolled back by the quality gate: "
            + "; ".join(v.detail for v in verdict.violations)
            + ". Nothing was committed.",
            list(verdict.violations),
        )
