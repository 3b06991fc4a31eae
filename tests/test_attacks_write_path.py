"""Attacks on the write path: staged inserts (the target found by the tokenizer and replaced by a
temporary stage table) and verdicts cached until the catalog's DDL generation moves.

Every case asserts the safe outcome: refused, or the lake, the statement and the signals agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lakewarden
from lakewarden.core.stages import Stages
from lakewarden.store import staging
from lakewarden.store.transaction import Transaction
from test_hostile import MARKER, SALARY, _seed

POLICY = """version: 1
mode: enforce
agents:
  admin: {read: ['*'], write: ['*'], ddl: true}
  analyst: {read: ['public_*']}
  writer: {read: ['public_*'], write: ['public_*']}
  builder: {read: ['public_*', 'scratch_*'], write: ['scratch_*'], ddl: true}
restore: [admin]
"""

# A statement whose target is preceded by 16 two-byte characters: the tokenizer's positions
# count bytes, so read as character offsets every word is 16 characters to the right, where the
# trailing comment spells the target again.
PAD = "\u00e9" * 16
DECOY = (
    f'WITH "{PAD}" AS (SELECT 1 AS s) INSERT INTO public_scratch SELECT id FROM public_orders '
    "ORDER BY   id-- INSERT INTO public_scratch"
)


@pytest.fixture
def warden(tmp_path: Path) -> Iterator[lakewarden.Warden]:
    _seed(tmp_path / "lake")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with lakewarden.open(
        tmp_path / "lake", policy=policy, telemetry=lakewarden.Telemetry(env={})
    ) as w:
        w.sql("CREATE TABLE public_pair (a INTEGER, b INTEGER)", agent="admin")
        yield w


def _count(w: lakewarden.Warden, table: str) -> int:
    with w.session("admin") as s:
        rows = s.sql(f"SELECT count(*) FROM {table}").rows
    return int(rows[0][0])


def _rows(w: lakewarden.Warden, sql: str) -> list[tuple[Any, ...]]:
    with w.session("admin") as s:
        return list(s.sql(sql).rows)


# -- the target the tokenizer finds ----------------------------------------------------------------

# (id, statement, target, the text the span must cover, or None when it must not be staged).
# Wherever a span is found it must be the statement's real target, right after its INSERT INTO.
SPANS = [
    ("decoy-after-multibyte-cte", DECOY, "public_scratch", "public_scratch"),
    ("multibyte-target", 'INSERT INTO "t\u00e9" VALUES (1)', "t\u00e9", '"t\u00e9"'),
    (
        "multibyte-string-before",
        "WITH q AS (SELECT '\u4e2d\u6587' AS s) INSERT INTO t SELECT 1 FROM q",
        "t",
        "t",
    ),
    ("emoji-cte-name", 'WITH "\U0001f600" AS (SELECT 1) INSERT INTO t SELECT 1', "t", "t"),
    (
        "dollar-quoted-insert",
        "WITH q AS (SELECT $$INSERT INTO t$$ AS s) INSERT INTO t SELECT 1",
        "t",
        "t",
    ),
    ("two-inserts-in-strings", "INSERT INTO t SELECT 'INSERT INTO t', 'INTO t'", "t", "t"),
    ("parameter", "INSERT INTO t VALUES ($1)", "t", "t"),
    ("named-parameter", "INSERT INTO t VALUES ($x)", "t", "t"),
    ("three-part-other-db", "INSERT INTO other.public.t VALUES (1)", "public.t", None),
    ("four-part", "INSERT INTO lake.main.t.x VALUES (1)", "t", None),
    ("comment-between-parts", "INSERT INTO main./**/t VALUES (1)", "t", None),
    ("string-target", "INSERT INTO 't' VALUES (1)", "t", None),
    ("cte-named-like-target", "WITH t AS (SELECT 1) INSERT INTO t SELECT * FROM t", "t", "t"),
    ("insert-in-subquery", "SELECT * FROM (SELECT 1) INSERT", "t", None),
    ("quoted-keyword-insert", 'WITH "INSERT" AS (SELECT 1) SELECT * FROM "INSERT"', "t", None),
    ("returning-after-comment", "INSERT INTO t VALUES (1) /* x */ RETURNING *", "t", None),
]


@pytest.mark.parametrize(
    ("sql", "target", "covers"), [c[1:] for c in SPANS], ids=[c[0] for c in SPANS]
)
def test_the_stage_replaces_only_the_real_target(sql: str, target: str, covers: str | None) -> None:
    span = staging.target_span(sql, target)
    if covers is None:
        assert span is None
        return
    real = ") INSERT INTO " if ") INSERT INTO " in sql else "INSERT INTO "
    start = sql.index(real) + len(real)
    assert sql[start:].startswith(covers)
    assert span == (start, start + len(covers))


def test_a_decoy_target_cannot_write_around_the_stage(warden: lakewarden.Warden) -> None:
    """Read as character offsets, the tokenizer's byte positions pointed the stage at a
    comment: the real INSERT wrote 20 rows straight into the table while the stage stayed
    empty, so the write was reported (and gated) as 0 rows."""
    before = _count(warden, "public_scratch")
    with warden.session("writer") as s:
        result = s.sql(DECOY)
    after = _count(warden, "public_scratch")
    assert after - before == 20
    assert result.rows_affected == 20
    assert result.signals["public_scratch"].rows == after
    assert warden.table("public_scratch").rows == after


# -- the stage table ---------------------------------------------------------------------------

STAGE_ATTACKS = [
    ("read", "SELECT * FROM {stage}"),
    ("insert", "INSERT INTO {stage} VALUES (1)"),
    ("delete", "DELETE FROM {stage}"),
    ("update", "UPDATE {stage} SET v = 0"),
    ("drop", "DROP TABLE {stage}"),
    ("alter", "ALTER TABLE {stage} ADD COLUMN z INTEGER"),
    ("copy-into-lake", "INSERT INTO public_scratch SELECT * FROM {stage}"),
    ("create-temp-same-prefix", "CREATE TEMP TABLE lw_stage_0 (v BIGINT)"),
    ("create-in-temp", "CREATE TABLE temp.main.lw_stage_0 (v BIGINT)"),
    ("temp-view-shadow", "CREATE TEMP VIEW public_scratch AS SELECT 1 AS v"),
    ("temp-macro", "CREATE TEMP MACRO lw() AS 1"),
    ("list-tables", "SELECT table_name FROM duckdb_tables()"),
    ("information-schema", "SELECT table_name FROM information_schema.tables"),
    ("use", "USE temp"),
    ("search-path", "SET search_path = 'temp.main'"),
]


@pytest.mark.parametrize("agent", ["admin", "builder"])
@pytest.mark.parametrize("sql", [c[1] for c in STAGE_ATTACKS], ids=[c[0] for c in STAGE_ATTACKS])
def test_no_agent_can_reach_a_stage(warden: lakewarden.Warden, agent: str, sql: str) -> None:
    with warden.session("admin") as owner:
        owner.sql("INSERT INTO public_scratch VALUES (10)")
        stage = next(iter(owner._stage_tables._made.values()))[1]
        for s in (owner, warden.session(agent)):
            with pytest.raises(lakewarden.PolicyDenied):
                s.sql(sql.format(stage=stage))
        owner.sql("INSERT INTO public_scratch VALUES (11)")
        assert owner.sql("SELECT list(v ORDER BY v) FROM public_scratch").rows == [
            ([1, 2, 3, 4, 10, 11],)
        ]


def test_stages_of_two_sessions_are_separate(warden: lakewarden.Warden) -> None:
    with warden.session("writer") as a, warden.session("writer") as b:
        a.sql("INSERT INTO public_scratch VALUES (20)")
        b.sql("INSERT INTO public_scratch VALUES (21)")
        stages = {
            next(iter(s._stage_tables._made.values()))[1] for s in (a, b)
        }  # one per connection: a temporary table belongs to its cursor
        assert len(stages) == 2
        ra = a.sql("INSERT INTO public_scratch VALUES (22), (23)")
        assert ra.rows_affected == 2
    assert _count(warden, "public_scratch") == 8
    assert warden.table("public_scratch").rows == 8


# -- the stage's shape against the table's ----------------------------------------------------

SWAP = [
    "ALTER TABLE public_pair RENAME COLUMN a TO tmp",
    "ALTER TABLE public_pair RENAME COLUMN b TO a",
    "ALTER TABLE public_pair RENAME COLUMN tmp TO b",
]


def _ddl_before_lock(
    monkeypatch: pytest.MonkeyPatch, w: lakewarden.Warden, victim: Any, ddl: list[str]
) -> None:
    """Commit ``ddl`` once, after ``victim``'s next transaction is set up and before it takes
    the write lock (what another agent's DDL does while the victim waits for the lock)."""
    begin = Transaction.begin
    done: list[bool] = []

    def late_begin(self: Transaction) -> None:
        if self.cur is victim._cur and not done:
            done.append(True)
            with w.session("admin") as admin:
                admin.batch(ddl)
        begin(self)

    monkeypatch.setattr(Transaction, "begin", late_begin)


def test_a_stage_made_before_a_column_swap_is_not_used_after_it(
    warden: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's shape was taken at the generation read when the transaction was set up:
    a DDL committed while it waited for the lock left it with the old column order, and the
    positional move put the value of ``a`` into ``b``."""
    with warden.session("writer") as s:
        s.sql("INSERT INTO public_pair (a) VALUES (1)")  # a stage of the old shape exists
        _ddl_before_lock(monkeypatch, warden, s, SWAP)
        s.sql("INSERT INTO public_pair (a) VALUES (5)")
    # the first row moved with its column, the second landed in ``a`` as its statement says
    assert _rows(warden, "SELECT a, b FROM public_pair ORDER BY ALL") == [(5, None), (None, 1)]


def test_a_stage_follows_a_default_changed_by_recreating_the_table(
    warden: lakewarden.Warden,
) -> None:
    with warden.session("writer") as s:
        s.sql("INSERT INTO public_pair (a) VALUES (1)")
        warden.session("admin").batch(
            ["DROP TABLE public_pair", "CREATE TABLE public_pair (b INTEGER DEFAULT 7, a INTEGER)"]
        )
        r = s.sql("INSERT INTO public_pair (a) VALUES (2)")
    assert _rows(warden, "SELECT a, b FROM public_pair") == [(2, 7)]
    assert r.signals["public_pair"].rows == 1


# -- atomicity ---------------------------------------------------------------------------------

FAILING_BATCHES = [
    (
        "bad-cast-second",
        ["INSERT INTO public_scratch VALUES (30)", "INSERT INTO public_scratch VALUES ('x')"],
    ),
    (
        "missing-table-second",
        ["INSERT INTO public_scratch VALUES (31)", "INSERT INTO public_nothing VALUES (1)"],
    ),
    (
        "refused-second",
        ["INSERT INTO public_scratch VALUES (32)", "INSERT INTO secret_salaries VALUES ('x', 1)"],
    ),
    (
        "runtime-cast-error-in-select",
        [
            "INSERT INTO public_scratch VALUES (33)",
            "INSERT INTO public_scratch SELECT CAST('y' || range AS BIGINT) FROM range(3)",
        ],
    ),
]


@pytest.mark.parametrize(
    "statements", [c[1] for c in FAILING_BATCHES], ids=[c[0] for c in FAILING_BATCHES]
)
def test_a_failed_batch_of_staged_inserts_leaves_no_rows_anywhere(
    warden: lakewarden.Warden, statements: list[str]
) -> None:
    with warden.session("writer") as s:
        before = _count(warden, "public_scratch")
        with pytest.raises(lakewarden.LakewardenError):
            s.batch(statements)
        assert _count(warden, "public_scratch") == before
        # The stage is empty again: the next insert moves its own row and nothing else.
        r = s.sql("INSERT INTO public_scratch VALUES (40)")
        assert r.rows_affected == 1
        assert r.signals["public_scratch"].rows == before + 1
    assert _count(warden, "public_scratch") == before + 1


def test_a_not_null_column_refuses_through_the_stage(warden: lakewarden.Warden) -> None:
    """The stage does not copy NOT NULL: the move into the table must still fail, whole."""
    warden.sql("CREATE TABLE public_strict (k INTEGER NOT NULL, v INTEGER)", agent="admin")
    with warden.session("writer") as s:
        with pytest.raises(lakewarden.LakewardenError):
            s.batch(
                [
                    "INSERT INTO public_strict VALUES (1, 1)",
                    "INSERT INTO public_strict (v) VALUES (2)",
                ]
            )
        assert _count(warden, "public_strict") == 0
        r = s.sql("INSERT INTO public_strict VALUES (3, NULL)")
        assert r.signals["public_strict"].rows == 1
        assert {c.name: c.null_count for c in r.signals["public_strict"].columns} == {
            "k": 0,
            "v": 1,
        }


# -- the verdict cache and DDL -----------------------------------------------------------------

SECRET_VIEW = (
    "CREATE OR REPLACE VIEW public_orders_v AS SELECT 1 AS id, salary FROM secret_salaries"
)


def test_a_write_authorized_before_a_ddl_is_checked_again_after_it(
    warden: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict is taken before the write lock; a view redefined while the write waited for
    it would have copied another table's rows into one the writer can read."""
    with warden.session("writer") as s:
        _ddl_before_lock(monkeypatch, warden, s, [SECRET_VIEW])
        with pytest.raises(lakewarden.PolicyDenied):
            s.sql("INSERT INTO public_orders SELECT id, id FROM public_orders_v")
    assert _count(warden, "public_orders") == 20


def test_a_staged_insert_authorized_before_a_ddl_reads_nothing_secret(
    warden: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql = "INSERT INTO public_pair SELECT id, id FROM public_orders_v"
    with warden.session("writer") as s:
        s.sql(sql)  # allowed and cached
        _ddl_before_lock(monkeypatch, warden, s, [SECRET_VIEW])
        with pytest.raises(lakewarden.PolicyDenied):
            s.sql(sql)
    assert _count(warden, "public_pair") == 20


@pytest.mark.xfail(
    strict=True,
    reason="a read is authorized, then run in its own engine transaction: a DDL committed in "
    "between (no lock orders reads against DDL) is not seen by the verdict. Closing it needs the "
    "plan and the read on one engine snapshot, or a retry when the catalog moved during the "
    "read, with the DDL commit's two generation bumps told apart from a settled generation.",
)
def test_a_read_authorized_before_a_ddl_is_checked_again_after_it(
    warden: lakewarden.Warden, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakewarden.core import session as session_module

    read = session_module.execute.read
    done: list[bool] = []

    def late_read(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            with warden.session("admin") as admin:
                admin.sql(SECRET_VIEW)
        return read(*args, **kwargs)

    monkeypatch.setattr(session_module.execute, "read", late_read)
    with warden.session("analyst") as s:
        try:
            rows = s.sql("SELECT * FROM public_orders_v").rows
        except lakewarden.PolicyDenied:
            rows = []
    assert str(SALARY) not in str(rows)


def _analyst_reads_view(w: lakewarden.Warden) -> Callable[[], Any]:
    s = w.session("analyst")
    return lambda: s.sql("SELECT * FROM public_orders_v")


CATALOG_CHANGES = [
    ("replace-view", [SECRET_VIEW]),
    (
        "drop-and-recreate-as-view",
        [
            "DROP VIEW public_orders_v",
            "CREATE VIEW public_orders_v AS SELECT * FROM secret_salaries",
        ],
    ),
    (
        "view-over-macro",
        [
            "CREATE MACRO public_m() AS TABLE SELECT * FROM secret_salaries",
            "CREATE OR REPLACE VIEW public_orders_v AS SELECT * FROM public_m()",
        ],
    ),
    (
        "rename-secret-into-place",
        [
            "DROP VIEW public_orders_v",
            "ALTER VIEW secret_view RENAME TO public_orders_v",
        ],
    ),
]


@pytest.mark.parametrize(
    "ddl", [c[1] for c in CATALOG_CHANGES], ids=[c[0] for c in CATALOG_CHANGES]
)
def test_a_cached_read_is_checked_again_after_a_committed_ddl_batch(
    warden: lakewarden.Warden, ddl: list[str]
) -> None:
    read = _analyst_reads_view(warden)
    read()
    read()  # from the cache
    try:
        warden.session("admin").batch(ddl)
    except lakewarden.LakewardenError:
        pytest.skip("the lake does not support this change")
    with pytest.raises((lakewarden.PolicyDenied, lakewarden.LakewardenError)):
        read()


@pytest.mark.parametrize(
    "ddl", [c[1] for c in CATALOG_CHANGES], ids=[c[0] for c in CATALOG_CHANGES]
)
def test_a_ddl_rolled_back_leaves_the_view_and_its_verdict(
    warden: lakewarden.Warden, ddl: list[str]
) -> None:
    read = _analyst_reads_view(warden)
    read()
    try:
        warden.session("admin").batch(ddl, dry_run=True)
    except lakewarden.LakewardenError:
        pytest.skip("the lake does not support this change")
    assert MARKER not in str(read().rows)


def test_a_verdict_inside_a_ddl_batch_is_not_kept(warden: lakewarden.Warden) -> None:
    """Reads planned after a DDL in the same transaction describe a catalog nobody else has;
    the builder's read of its own view is checked again once the view is gone."""
    with warden.session("builder") as s:
        s.sql("CREATE TABLE scratch_t (v INTEGER)")
        with s.transaction(dry_run=True):
            s.sql("CREATE OR REPLACE VIEW scratch_v AS SELECT * FROM scratch_t")
            s.sql("SELECT * FROM scratch_v")
        with pytest.raises(lakewarden.LakewardenError):
            s.sql("SELECT * FROM scratch_v")


PRUNED_READS = [
    ("range-filter", "SELECT name FROM secret_salaries WHERE salary > 10000000000"),
    ("limit-zero", "SELECT name FROM secret_salaries LIMIT 0"),
    (
        "union-pruned-branch",
        "SELECT CAST(id AS VARCHAR) FROM public_orders UNION ALL "
        "SELECT name FROM secret_salaries WHERE salary < 0",
    ),
    (
        "semi-join",
        "SELECT id FROM public_orders WHERE id IN (SELECT salary FROM secret_salaries "
        "WHERE salary > 10000000000)",
    ),
    ("false-filter", "SELECT name FROM secret_salaries WHERE false"),
]


@pytest.mark.parametrize("sql", [c[1] for c in PRUNED_READS], ids=[c[0] for c in PRUNED_READS])
def test_a_read_the_optimizer_could_prune_is_refused_before_and_after_data_changes(
    warden: lakewarden.Warden, sql: str
) -> None:
    with warden.session("analyst") as s:
        with pytest.raises(lakewarden.PolicyDenied):
            s.sql(sql)
        warden.sql(
            "INSERT INTO secret_salaries VALUES ('late', 20000000000), ('neg', -1)", agent="admin"
        )
        with pytest.raises(lakewarden.PolicyDenied):
            s.sql(sql)


def test_a_stage_generation_is_read_when_the_insert_runs(warden: lakewarden.Warden) -> None:
    stages: Stages = warden.stages
    stager = stages.stager(staging.StageTables())
    before = stager.generation()
    warden.sql("CREATE TABLE public_more (x INTEGER)", agent="admin")
    assert stager.generation() > before
