"""The REST API against its own OpenAPI document: schemathesis generates requests for every
operation from the live server's ``/openapi.json`` and checks every answer against it.

Real servers on real DuckLake lakes: one with a policy of agent tokens, called as an admin
(every grant), as a reader with narrow grants, with no token and with an unknown one; one in
open mode, where the caller names itself in a header. Every answer must be one the document
declares, with the status, content type and body it declares, and none may be a server error;
a caller without a valid token gets nothing but 401s.

Generation is bounded for CI and the same on every run: schemathesis' coverage cases (the
boundaries of each parameter and body, and values just outside them), then a fixed number of
derandomized examples per operation, caller and mode, without shrinking. Inputs that once
broke the contract are kept below as explicit cases.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openapi_spec_validator
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, checks
from schemathesis.config import SchemathesisConfig

import lakewarden
from lakewarden.intake.caller import STATUS
from lakewarden.store.engine import LAKE_ALIAS

from server_helpers import Served, serve

# What every answer is held to.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
# And, for schemathesis' coverage cases, what a request the document does not allow is held
# to: a 4xx, and 405 for a method the path does not take. (Its randomly generated invalid
# requests may leave out the token the test then adds, so they are not judged so.) A caller
# without a valid token is answered 401 before either is judged.
REJECTION_CHECKS = [checks.negative_data_rejection, checks.unsupported_method]
# Generated requests per operation, caller and mode: enough to reach each error path, few
# enough for the file to run in well under a minute on two busy cores.
EXAMPLES = 25

# Every operation of the REST API: one added without being listed here fails
# test_every_operation_is_checked, so none goes unchecked.
OPERATIONS = [
    "POST /v1/sql",
    "GET /v1/tables",
    "GET /v1/tables/{name}",
    "GET /v1/snapshots",
    "POST /v1/tables/{name}/restore",
    "POST /v1/tables/{name}/anomaly/accept",
    "GET /v1/audit",
]

POLICY = """\
version: 1
restore: [admin]
agents:
  admin: {token_env: LW_CONTRACT_ADMIN, read: ["*"], write: ["*"], ddl: true}
  reader: {token_env: LW_CONTRACT_READER, read: [orders]}
tables:
  orders:
    event_time: updated_at
    freshness_sla: 1h
    columns: {id: {type: BIGINT, nullable: false}, email: {max_null_ratio: 0.5}}
"""

SETUP = [
    "CREATE TABLE orders (id BIGINT, email VARCHAR, amount DECIMAL(10, 2), updated_at TIMESTAMPTZ)",
    "INSERT INTO orders VALUES (1, 'a@example.com', 12.50, now()), (2, NULL, 3.25, now())",
    "INSERT INTO orders VALUES (3, 'c@example.com', 7.00, now())",
    "CREATE TABLE payroll (employee VARCHAR, salary DOUBLE)",
    "INSERT INTO payroll VALUES ('ada', 'Infinity'::DOUBLE), ('bob', 'NaN'::DOUBLE)",
]


@dataclass(frozen=True)
class Server:
    """A running server and the OpenAPI document it serves."""

    served: Served
    schema: BaseSchema

    @property
    def url(self) -> str:
        return self.served.url

    def operation(self, label: str) -> APIOperation:
        method, path = label.split(" ")
        return self.schema[path][method]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Caller:
    """Who calls: its headers, whether it calls the open-mode server, and whether the server
    must refuse it whatever it asks."""

    name: str
    headers: dict[str, str] = field(default_factory=dict)
    open_mode: bool = False
    refused: bool = False


CALLERS = ["admin", "reader", "no-token", "unknown-token", "open-mode"]


@dataclass(frozen=True)
class Api:
    with_tokens: Server
    open_mode: Server
    callers: dict[str, Caller]

    def server(self, caller: Caller) -> Server:
        return self.open_mode if caller.open_mode else self.with_tokens


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tokens = {"admin": secrets.token_urlsafe(16), "reader": secrets.token_urlsafe(16)}
    root = tmp_path_factory.mktemp("contract")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    callers = [
        Caller("admin", {"Authorization": f"Bearer {tokens['admin']}"}),
        Caller("reader", {"Authorization": f"Bearer {tokens['reader']}"}),
        Caller("no-token", refused=True),
        Caller("unknown-token", {"Authorization": "Bearer not-a-token"}, refused=True),
        Caller("open-mode", open_mode=True),
    ]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LW_CONTRACT_ADMIN", tokens["admin"])
        env.setenv("LW_CONTRACT_READER", tokens["reader"])
        _create(root / "lake")
        _create(root / "open")
        with serve(root / "lake", policy=policy) as served, serve(root / "open") as open_mode:
            yield Api(_server(served), _server(open_mode), {c.name: c for c in callers})


def _create(lake: Path) -> None:
    with lakewarden.open(lake) as warden, warden.session("admin") as session:
        for statement in SETUP:
            session.sql(statement)


def _server(served: Served) -> Server:
    # An explicit configuration: none is read from the working directory.
    document = f"{served.url}/openapi.json"
    return Server(served, schemathesis.openapi.from_url(document, config=SchemathesisConfig()))


def check_answer(api: Api, who: Caller, case: Case, held_to: list[Any]) -> None:
    server = api.server(who)
    response = case.call(base_url=server.url, headers=who.headers, timeout=60)
    case.validate_response(response, checks=held_to, headers=who.headers)
    if who.refused:
        assert response.status_code == 401, case.as_curl_command(who.headers)


@pytest.mark.parametrize("open_mode", [False, True], ids=["with-tokens", "open-mode"])
def test_every_operation_is_checked(api: Api, open_mode: bool) -> None:
    schema = (api.open_mode if open_mode else api.with_tokens).schema
    found = [f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()]
    assert sorted(found) == sorted(OPERATIONS)


@pytest.mark.parametrize("open_mode", [False, True], ids=["with-tokens", "open-mode"])
def test_the_document_is_valid_openapi(api: Api, open_mode: bool) -> None:
    server = api.open_mode if open_mode else api.with_tokens
    openapi_spec_validator.validate(httpx.get(f"{server.url}/openapi.json").json())


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("label", OPERATIONS)
def test_coverage_cases_match_the_document(api: Api, label: str, caller: str) -> None:
    who = api.callers[caller]
    operation = api.server(who).operation(label)
    cases = operation.schema.iter_coverage_cases(
        operation,
        generation_modes=list(GenerationMode),
        generation_config=operation.schema.config.generation_for(operation=operation),
    )
    for case in cases:
        check_answer(api, who, case, CHECKS if who.refused else CHECKS + REJECTION_CHECKS)


# In open mode these take nothing a request can get wrong (any text is a table or agent name,
# and there is no token to leave out): schemathesis can generate no invalid request for them.
NOTHING_INVALID_IN_OPEN_MODE = {
    "GET /v1/tables",
    "GET /v1/tables/{name}",
    "POST /v1/tables/{name}/anomaly/accept",
}
GENERATED = [
    pytest.param(label, caller, mode, id=f"{label}-{caller}-{mode}")
    for label in OPERATIONS
    for caller in CALLERS
    for mode in GenerationMode
    if not (mode.is_negative and caller == "open-mode" and label in NOTHING_INVALID_IN_OPEN_MODE)
]


@pytest.mark.parametrize(("label", "caller", "mode"), GENERATED)
def test_generated_requests_match_the_document(
    api: Api, label: str, caller: str, mode: GenerationMode
) -> None:
    who = api.callers[caller]

    @given(case=api.server(who).operation(label).as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        # Shrinking a failure could take minutes; the derandomized failing input is kept as an
        # explicit case below instead.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case) -> None:
        check_answer(api, who, case, CHECKS)

    check()


@dataclass(frozen=True)
class Sent:
    """One request, sent byte for byte as written, and the answer it must get."""

    operation: str  # as in OPERATIONS
    caller: str
    path: str
    status: int
    code: str | None = None  # the error's code, for an error
    query: dict[str, str] | None = None
    body: Any = None  # sent as JSON
    content: bytes | None = None  # sent as it is
    headers: dict[str, str] = field(default_factory=dict)


def send(api: Api, sent: Sent) -> httpx.Response:
    who = api.callers[sent.caller]
    server = api.server(who)
    method = sent.operation.split(" ")[0]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.request(
            method,
            sent.path,
            params=sent.query,
            json=sent.body,
            content=sent.content,
            headers={**who.headers, **sent.headers},
        )
    server.operation(sent.operation).Case().validate_response(
        response, checks=CHECKS, headers=who.headers
    )
    assert response.status_code == sent.status, response.text
    if sent.code is not None:
        assert response.json()["error"]["code"] == sent.code, response.text
    return response


SQL = "POST /v1/sql"

# Each kind of answer, so that every body the document declares is met at least once: values
# of every JSON mapping (NaN, infinities, decimals, intervals, nested types), writes with their
# signals, batches, dry runs, and each refusal.
ANSWERS = [
    pytest.param(
        Sent(SQL, "admin", "/v1/sql", 200, body={"sql": "SELECT * FROM orders"}), id="read"
    ),
    pytest.param(
        Sent(SQL, "admin", "/v1/sql", 200, body={"sql": "SELECT * FROM payroll"}),
        id="read-nan-infinity",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={
                "sql": "SELECT INTERVAL 1 DAY AS i, [1, NULL] AS l, {'a': 1.5} AS s, "
                "MAP {1: 'x'} AS m, 'ab'::BLOB AS b, 12.5::DECIMAL(5, 2) AS d, "
                "uuid() AS u, now() AS t, 'NaN'::DOUBLE AS n, "
                "170141183460469231731687303715884105727::HUGEINT AS h, ? AS p",
                "params": [{"nested": [1.5, None]}],
            },
        ),
        id="read-every-type",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={"sql": "SELECT * FROM orders", "max_rows": 1},
        ),
        id="read-truncated",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={"sql": "SELECT * FROM orders"},
            headers={"Accept": "application/vnd.apache.arrow.stream"},
        ),
        id="read-arrow",
    ),
    pytest.param(
        Sent(
            SQL,
            "reader",
            "/v1/sql",
            200,
            body={"sql": "SELECT * FROM orders", "max_rows": 1},
            headers={"Accept": "application/vnd.apache.arrow.stream"},
        ),
        id="read-arrow-truncated",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={
                "sql": "INSERT INTO orders VALUES (?, ?, ?, now())",
                "params": [10, "d@example.com", "4.50"],
            },
        ),
        id="write",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={"sql": "DELETE FROM orders WHERE id = 10", "dry_run": True},
        ),
        id="write-dry-run",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={
                "statements": [
                    "INSERT INTO orders VALUES (11, 'e@example.com', 1, now())",
                    "UPDATE orders SET amount = 2 WHERE id = 11",
                ]
            },
        ),
        id="batch",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            200,
            body={"sql": "ALTER TABLE payroll ADD COLUMN team VARCHAR"},
        ),
        id="ddl",
    ),
    pytest.param(
        Sent(
            SQL,
            "admin",
            "/v1/sql",
            409,
            "quality_gate_failed",
            body={"sql": "INSERT INTO orders VALUES (NULL, NULL, 1, now())"},
        ),
        id="quality-gate",
    ),
    pytest.param(
        Sent(SQL, "admin", "/v1/sql", 400, "invalid_sql", body={"sql": "SELECT 1; SELECT 2"}),
        id="two-statements",
    ),
    pytest.param(
        Sent(SQL, "admin", "/v1/sql", 422, "execution_failed", body={"sql": "SELECT * FROM nope"}),
        id="unknown-table",
    ),
    pytest.param(
        Sent(SQL, "reader", "/v1/sql", 403, "policy_denied", body={"sql": "SELECT * FROM payroll"}),
        id="read-not-granted",
    ),
    pytest.param(
        Sent(SQL, "reader", "/v1/sql", 403, "policy_denied", body={"sql": "DELETE FROM orders"}),
        id="write-not-granted",
    ),
    pytest.param(
        Sent(SQL, "admin", "/v1/sql", 413, "too_large", content=b" " * (2 << 20)),
        id="body-too-large",
    ),
    pytest.param(
        Sent(
            SQL,
            "open-mode",
            "/v1/sql",
            200,
            body={"sql": "SELECT * FROM payroll"},
            headers={"X-Lakewarden-Agent": "analyst"},
        ),
        id="read-open-mode",
    ),
    pytest.param(Sent("GET /v1/tables", "reader", "/v1/tables", 200), id="tables"),
    pytest.param(
        Sent("GET /v1/tables/{name}", "admin", "/v1/tables/orders", 200), id="table-described"
    ),
    pytest.param(
        Sent("GET /v1/tables/{name}", "reader", "/v1/tables/payroll", 404, "not_found"),
        id="table-not-granted",
    ),
    pytest.param(
        Sent("GET /v1/snapshots", "admin", "/v1/snapshots", 200, query={"table": "orders"}),
        id="snapshots-of-a-table",
    ),
    pytest.param(Sent("GET /v1/snapshots", "reader", "/v1/snapshots", 200), id="snapshots"),
    pytest.param(Sent("GET /v1/audit", "admin", "/v1/audit", 200), id="audit"),
    pytest.param(
        Sent(
            "GET /v1/audit", "reader", "/v1/audit", 403, "policy_denied", query={"agent": "admin"}
        ),
        id="audit-of-another-agent",
    ),
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/anomaly/accept",
            "admin",
            "/v1/tables/orders/anomaly/accept",
            200,
        ),
        id="anomaly-accepted",
    ),
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/restore",
            "reader",
            "/v1/tables/orders/restore",
            403,
            "policy_denied",
            body={"snapshot_id": 1},
        ),
        id="restore-not-granted",
    ),
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/restore",
            "admin",
            "/v1/tables/orders/restore",
            404,
            "not_found",
            body={"snapshot_id": 10**9},
        ),
        id="restore-unknown-snapshot",
    ),
]


@pytest.mark.parametrize("sent", ANSWERS)
def test_each_kind_of_answer_matches_the_document(api: Api, sent: Sent) -> None:
    send(api, sent)


def test_a_restore_answer_matches_the_document(api: Api) -> None:
    listed = send(
        api, Sent("GET /v1/snapshots", "admin", "/v1/snapshots", 200, query={"table": "orders"})
    )
    oldest = listed.json()["snapshots"][-1]["snapshot_id"]
    restore = "POST /v1/tables/{name}/restore"
    answer = send(
        api, Sent(restore, "admin", "/v1/tables/orders/restore", 200, body={"snapshot_id": oldest})
    )
    assert answer.json()["kind"] == "write"


# Inputs schemathesis found answered against the document, kept as they were sent.
FOUND = [
    # FastAPI validated the query before the route identified the caller: a caller without a
    # token was told what the operation accepts (400) instead of 401.
    pytest.param(
        Sent(
            "GET /v1/audit",
            "no-token",
            "/v1/audit",
            401,
            "unauthenticated",
            query={"limit": "5410209586067", "agent": "null"},
        ),
        id="query-invalid-without-token",
    ),
    pytest.param(
        Sent(
            "GET /v1/snapshots",
            "unknown-token",
            "/v1/snapshots",
            401,
            "unauthenticated",
            query={"limit": "0"},
        ),
        id="query-invalid-unknown-token",
    ),
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/restore",
            "no-token",
            "/v1/tables/orders/restore",
            401,
            "unauthenticated",
            body={"snapshot_id": -1},
        ),
        id="body-invalid-without-token",
    ),
    # A body that is not UTF-8 failed in FastAPI's JSON decoding: 400 with the code
    # "http_error", before authentication.
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/restore",
            "no-token",
            "/v1/tables/%C3%9B%1C%28/restore",
            401,
            "unauthenticated",
            content=b"\xce\xa3\x1e\xb4R\xd1P",
            headers={"Content-Type": "application/json"},
        ),
        id="body-not-utf8-without-token",
    ),
    pytest.param(
        Sent(
            "POST /v1/tables/{name}/restore",
            "admin",
            "/v1/tables/%C3%9B%1C%28/restore",
            400,
            "invalid_request",
            content=b"\xce\xa3\x1e\xb4R\xd1P",
            headers={"Content-Type": "application/json"},
        ),
        id="body-not-utf8",
    ),
]


@pytest.mark.parametrize("sent", FOUND)
def test_inputs_found_answer_as_documented(api: Api, sent: Sent) -> None:
    send(api, sent)


def test_every_error_is_documented(api: Api) -> None:
    """Every error status the API sends is declared, always with the one error body."""
    declared: set[int] = set()
    for label in OPERATIONS:
        for status, answer in api.with_tokens.operation(label).definition.raw["responses"].items():
            if status != "200":
                declared.add(int(status))
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (label, status)
    assert {*STATUS.values(), 500, 431} == declared


# Anyone who can commit to the catalog can leave extra info; the audit reads its records from
# it, and must still answer records of the documented shape.
FORGED_AUDIT = [
    pytest.param('{"audit": [{"violations": [{"rule": "r"}]}]}', id="violation-without-detail"),
    pytest.param(
        '{"audit": [{"violations": [{"rule": "r", "detail": "d", "by": "x", "table": 1}]}]}',
        id="violation-with-other-fields",
    ),
    pytest.param(
        '{"audit": [{"decision": 5, "tables": [1, "t"], "violations": [1, [], null]}]}',
        id="fields-of-the-wrong-type",
    ),
]


@pytest.mark.parametrize("extra", FORGED_AUDIT)
def test_audit_of_a_forged_commit_matches_the_document(api: Api, extra: str) -> None:
    intruder = f"intruder-{secrets.token_hex(4)}"
    cur = api.with_tokens.served.warden.engine.cursor()
    try:
        cur.begin()
        cur.execute("CREATE TABLE IF NOT EXISTS forged (i INTEGER)")
        cur.execute("INSERT INTO forged VALUES (1)")
        cur.execute(
            f"CALL {LAKE_ALIAS}.set_commit_message(?, ?, extra_info => ?)",
            [intruder, "forged", extra],
        )
        cur.commit()
    finally:
        cur.close()
    answer = send(api, Sent("GET /v1/audit", "admin", "/v1/audit", 200, query={"agent": intruder}))
    assert answer.json()["records"]
