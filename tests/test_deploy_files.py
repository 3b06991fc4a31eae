"""Structural checks of everything under deploy/ and dashboards/.

Docker and a Kubernetes cluster are not available to the tests: these checks hold the files to
the fields that matter (a native sidecar, probes, secrets, mounts, scrape selectors, ...) and to
each other (names, ports and paths that must agree across files).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakewarden.governance.policy import parse_policy
from prom_helpers import (
    DASHBOARDS,
    DESIGN_METRICS,
    ROOT,
    base_metric,
    dashboards,
    metric_names,
    panels,
    run,
)

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_DIR = DEPLOY / "compose"
YAML_FILES = sorted(
    p for d in (DEPLOY, DASHBOARDS) for p in d.rglob("*") if p.suffix in {".yaml", ".yml"}
)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_file_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) for d in documents)


# --- Kubernetes -------------------------------------------------------------------------------


def manifests(directory: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
    ]


def one(kind: str, directory: Path = K8S / "base") -> dict[str, Any]:
    found = [m for m in manifests(directory) if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {directory}"
    return found[0]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    template = one("Deployment")["spec"]["template"]
    return {"labels": template["metadata"]["labels"], **template["spec"]}


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["initContainers"] if c["name"] == "lakewarden")


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def arg(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return str(args[args.index(flag) + 1])


def test_lakewarden_is_a_native_sidecar(pod: dict[str, Any], sidecar: dict[str, Any]) -> None:
    assert sidecar["restartPolicy"] == "Always"  # an init container that keeps running
    assert "lakewarden" not in [c["name"] for c in pod["containers"]]
    assert sidecar["args"][0] == "serve"
    assert arg(sidecar, "--host") == "0.0.0.0"  # scraped on the pod IP: tokens required


def test_sidecar_probes_use_health_and_readiness(sidecar: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"lakewarden": int(arg(sidecar, "--port"))}
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "lakewarden"}, probe


@pytest.mark.parametrize("name", ["lakewarden", "agent-worker"])
def test_container_has_resources_and_a_locked_down_security_context(
    pod: dict[str, Any], name: str
) -> None:
    container = next(c for c in containers(pod) if c["name"] == name)
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_pod_runs_as_the_images_non_root_user(pod: dict[str, Any]) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile_user() != 0


def test_lake_and_tmp_are_writable_volumes(pod: dict[str, Any], sidecar: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    lake_mount = next(p for p in mounts if arg(sidecar, "--lake").startswith(p + "/"))
    for path in (lake_mount, "/tmp"):
        volume = volumes[mounts[path]["name"]]
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, path
        assert not mounts[path].get("readOnly", False), path


def test_policy_is_mounted_from_the_configmap(pod: dict[str, Any], sidecar: dict[str, Any]) -> None:
    policy_path = Path(arg(sidecar, "--policy"))
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(policy_path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    key = next(i["key"] for i in volume["configMap"]["items"] if i["path"] == policy_path.name)
    policy = parse_policy(config_map["data"][key], source="policy-configmap.yaml")
    assert policy.requires_tokens  # the sidecar listens beyond loopback


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_every_token_of_the_policy_comes_from_the_secret(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    policy = parse_policy(one("ConfigMap")["data"]["policy.yaml"])
    token_envs = {a.token_env for a in policy.agents.values() if a.token_env}
    refs = secret_refs(sidecar)
    assert token_envs <= set(refs), "a token_env of the policy is not set in the sidecar"
    secret = one("Secret")
    for container in containers(pod):
        for name, (secret_name, key) in secret_refs(container).items():
            assert secret_name == secret["metadata"]["name"], name
            assert key in secret["stringData"], f"{name}: no key {key} in the Secret"
    # The agent container authenticates with the token of its own agent in the policy.
    agent = next(c for c in pod["containers"] if c["name"] == "agent-worker")
    token_env = policy.agents["agent-worker"].token_env
    assert token_env is not None
    assert secret_refs(agent)["LAKEWARDEN_TOKEN"] == refs[token_env]


def test_secret_values_are_placeholders() -> None:
    assert all(v.startswith("REPLACE-ME") for v in one("Secret")["stringData"].values())


def test_podmonitor_scrapes_the_sidecar_port_as_job_lakewarden(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    monitor = one("PodMonitor", K8S / "operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in sidecar["ports"]}
    assert endpoint["path"] == "/metrics"
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert job == [{"action": "replace", "targetLabel": "job", "replacement": "lakewarden"}]


def test_service_selects_the_pods_and_targets_the_sidecar_port(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    spec = one("Service")["spec"]
    assert spec["selector"].items() <= pod["labels"].items()
    assert [p["targetPort"] for p in spec["ports"]] == [sidecar["ports"][0]["containerPort"]]


def test_plain_scrape_config_keeps_the_annotated_pods(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    # Debian's promtool is built without Kubernetes discovery, so this config is checked here.
    config = load(K8S / "plain" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "lakewarden"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = job["relabel_configs"][0]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert (keep["action"], keep["regex"]) == ("keep", "true")
    for rule in job["relabel_configs"]:
        re.compile(rule.get("regex", ""))
    for rule_file in config["rule_files"]:
        assert (K8S / "plain" / rule_file).resolve().is_file(), rule_file
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(sidecar["ports"][0]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=rel)
def test_kustomization_lists_existing_resources(kustomization: Path) -> None:
    spec = load(kustomization)
    listed = {(kustomization.parent / r).resolve() for r in spec["resources"]}
    listed |= {(kustomization.parent / p["path"]).resolve() for p in spec.get("patches", [])}
    assert all(path.exists() for path in listed)
    manifests_here = {p.resolve() for p in kustomization.parent.glob("*.yaml")} - {kustomization}
    assert manifests_here <= listed, "a manifest is not in the kustomization"


def test_kustomize_builds_the_operator_variant() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    result = run("kubectl", "kustomize", K8S / "operator")
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout))
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service"]


@pytest.mark.parametrize(
    "manifest",
    [pytest.param(m, id=f"{m['kind']}/{m['metadata']['name']}") for m in manifests(K8S / "base")],
)
def test_manifest_matches_the_kubernetes_schema(manifest: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
    )
    # 1.33: native sidecars are GA; strict: unknown fields (a misspelt key) are errors.
    kubernetes_validate.validate(manifest, "1.33", strict=True)


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    """The fleet variant as kustomize builds it (deploy/kubernetes/fleet)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    result = run("kubectl", "kustomize", K8S / "fleet")
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_fleet_sidecars_share_a_postgres_catalog_lake_with_no_lake_volume(
    fleet: list[dict[str, Any]],
) -> None:
    (deployment,) = [d for d in fleet if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] > 1
    pod = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "lakewarden")
    assert "--lake" not in sidecar["args"] and sidecar["restartPolicy"] == "Always"
    env = {e["name"]: e for e in sidecar["env"]}
    (config,) = [
        d for d in fleet if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "lakewarden-fleet"
    ]
    ref = env["LAKEWARDEN_LAKE"]["valueFrom"]["configMapKeyRef"]
    assert config["data"][ref["key"]].startswith("postgres:")
    assert "password" not in config["data"][ref["key"]]
    data_ref = env["LAKEWARDEN_DATA_PATH"]["valueFrom"]["configMapKeyRef"]
    assert config["data"][data_ref["key"]].startswith("s3://")
    secrets = {d["metadata"]["name"]: d for d in fleet if d["kind"] == "Secret"}
    for name in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        key = env[name]["valueFrom"]["secretKeyRef"]
        assert key["key"] in secrets[key["name"]]["stringData"], name
    assert all(
        v.startswith("REPLACE-ME") for s in secrets.values() for v in s["stringData"].values()
    )
    assert "/data" not in {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert "lake" not in {v["name"] for v in pod["volumes"]}


def test_fleet_manifests_match_the_kubernetes_schema(fleet: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
    )
    for manifest in fleet:
        kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_compose_fleet_shares_one_lake_and_prometheus_scrapes_every_sidecar() -> None:
    services = load(COMPOSE_DIR / "fleet.yaml")["services"]
    sidecars = {name: s for name, s in services.items() if name.startswith("lakewarden-")}
    assert len(sidecars) == 3
    lakes = {s["environment"]["LAKEWARDEN_LAKE"] for s in sidecars.values()}
    (lake,) = lakes
    assert lake.startswith("postgres:") and "password" not in lake
    assert "host=catalog" in lake and "catalog" in services and "objectstore" in services
    for sidecar in sidecars.values():
        env = sidecar["environment"]
        assert env["LAKEWARDEN_DATA_PATH"].startswith("s3://")
        for secret in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY"):
            assert env[secret].startswith("${") and ":?" in env[secret], secret
        assert "--lake" not in sidecar["command"] and sidecar["read_only"] is True
        assert env["AWS_ENDPOINT_URL"].split("//")[1].split(":")[0] in services
    config = load(DEPLOY / "prometheus" / "prometheus-fleet.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "lakewarden"]
    targets = {t.split(":")[0] for c in job["static_configs"] for t in c["targets"]}
    assert targets == set(sidecars)
    mounts = bind_mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"].name == "prometheus-fleet.yml"
    for service in services.values():
        assert all(path.exists() for path in bind_mounts(service).values())


@pytest.mark.parametrize(
    "path",
    [*sorted(K8S.rglob("*.yaml")), COMPOSE_DIR / "docker-compose.yaml", COMPOSE_DIR / "fleet.yaml"],
    ids=rel,
)
def test_images_are_pinned(path: Path) -> None:
    images = re.findall(r"^\s*image:\s*(\S+)", path.read_text(), flags=re.M)
    assert all(":" in image and not image.endswith(":latest") for image in images), images


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load(COMPOSE_DIR / "docker-compose.yaml")["services"])


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    expected = {"lakewarden", "otel-collector", "tempo", "prometheus", "alertmanager", "grafana"}
    assert set(compose) == expected


@pytest.mark.parametrize(
    "service", ["lakewarden", "otel-collector", "tempo", "prometheus", "alertmanager", "grafana"]
)
def test_compose_bind_mounts_exist(compose: dict[str, Any], service: str) -> None:
    for target, source in bind_mounts(compose[service]).items():
        assert source.exists(), f"{service}: {target} <- missing {source}"


def test_compose_sidecar_is_built_here_and_requires_its_tokens(compose: dict[str, Any]) -> None:
    service = compose["lakewarden"]
    build = service["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    command = service["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    policy_in_container = command[command.index("--policy") + 1]
    policy = parse_policy(bind_mounts(service)[policy_in_container].read_text())
    environment = service["environment"]
    for agent in policy.agents.values():
        assert agent.token_env, "listening beyond loopback needs a token for every agent"
        # ${VAR:?message}: compose refuses to start without the secret.
        assert environment[agent.token_env].startswith(f"${{{agent.token_env}:?")
    assert service["read_only"] is True


def test_compose_prometheus_loads_the_rules_and_scrapes_the_sidecar(
    compose: dict[str, Any],
) -> None:
    service = compose["prometheus"]
    mounts = bind_mounts(service)
    assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == DEPLOY / "prometheus" / "rules"
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:  # relative to the config, inside the container too
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (target,) = jobs["lakewarden"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    command = compose["lakewarden"]["command"]
    assert host in compose and port == command[command.index("--port") + 1]
    (alertmanager,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanager.split(":")[0] in compose
    collector = jobs["otel-collector"]["static_configs"][0]["targets"][0]
    exporter = load(DEPLOY / "otel-collector" / "config.yaml")["exporters"]["prometheus"]
    assert collector.split(":")[1] == exporter["endpoint"].split(":")[1]


def test_compose_grafana_is_provisioned_with_the_dashboards(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose["grafana"])
    provider = load(DASHBOARDS / "provisioning" / "dashboards.yaml")["providers"][0]
    assert mounts[provider["options"]["path"]] == DASHBOARDS
    provisioning = {p.name: t for t, p in mounts.items() if t.startswith("/etc/grafana/")}
    assert provisioning["dashboards.yaml"].startswith("/etc/grafana/provisioning/dashboards/")
    assert provisioning["datasources.yaml"].startswith("/etc/grafana/provisioning/datasources/")
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).name).is_file()


def test_grafana_datasources_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    provisioned = load(DASHBOARDS / "provisioning" / "datasources.yaml")["datasources"]
    sources = {d["type"]: d for d in provisioned}
    for kind in ("prometheus", "tempo"):
        host = sources[kind]["url"].split("//")[1].split(":")[0]
        assert host in compose, f"{kind}: {host} is not a compose service"
    scrape_interval = load(DEPLOY / "prometheus" / "prometheus.yml")["global"]["scrape_interval"]
    assert sources["prometheus"]["jsonData"]["timeInterval"] == scrape_interval


def test_alertmanager_pages_critical_and_tickets_the_rest() -> None:
    config = load(COMPOSE_DIR / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    critical = [r for r in route["routes"] if r["matchers"] == ['severity="critical"']]
    assert len(critical) == 1 and critical[0]["receiver"] in receivers - {route["receiver"]}
    amtool = shutil.which("amtool")
    if amtool:  # Debian's prometheus-alertmanager, when installed
        result = run(amtool, "check-config", COMPOSE_DIR / "alertmanager.yml")
        assert result.returncode == 0, result.stdout + result.stderr


# --- OpenTelemetry Collector ------------------------------------------------------------------


def test_collector_receives_otlp_and_exports_traces_and_metrics() -> None:
    config = load(DEPLOY / "otel-collector" / "config.yaml")
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline[section]) <= set(config[section]), f"{name}: undefined {section}"
        assert pipeline["receivers"] == ["otlp"]
        assert pipeline["processors"] == ["memory_limiter", "batch"], name
    (traces,) = pipelines["traces"]["exporters"]
    assert traces.split("/")[0] == "otlp"
    assert config["exporters"][traces]["endpoint"] == "tempo:4317"
    assert pipelines["metrics"]["exporters"] == ["prometheus"]


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_user() -> int:
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    return int(users[-1].split(":")[0])


def test_image_is_python_311_slim_and_runs_as_non_root() -> None:
    bases = [args.split()[0] for instruction, args in dockerfile() if instruction == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert dockerfile_user() >= 1000


def test_image_installs_this_project_and_serves_with_a_policy() -> None:
    steps = dockerfile()
    for instruction, args in steps:
        if instruction == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert any(i == "RUN" and "pip wheel" in a and a.rstrip().endswith(" .") for i, a in steps)
    entrypoint = next(a for i, a in steps if i == "ENTRYPOINT")
    command = next(a for i, a in steps if i == "CMD")
    assert yaml.safe_load(entrypoint) == ["lakewarden"]
    args = yaml.safe_load(command)
    assert args[0] == "serve"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert "--policy" in args
    assert f"EXPOSE {args[args.index('--port') + 1]}" in {f"{i} {a}" for i, a in steps}


# --- dashboards -------------------------------------------------------------------------------


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_dashboards", DASHBOARDS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_what_the_generator_writes() -> None:
    rendered = generator().render()
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert set(committed) == set(rendered)
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python dashboards/generate.py"


def test_dashboards_have_stable_unique_uids() -> None:
    uids = sorted(board["uid"] for board in dashboards().values())
    assert uids == ["lakewarden-agent", "lakewarden-fleet", "lakewarden-table"]


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_is_provisioning_ready(name: str) -> None:
    board = dashboards()[name]
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}/{target['refId']}: empty expr"
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_queries_use_grafana_windows_and_design_metrics(name: str) -> None:
    for panel in panels(dashboards()[name]):
        for target in panel["targets"]:
            expr = target["expr"]
            windows = set(re.findall(r"\[([^\]]+)\]", expr))
            assert windows <= {"$__rate_interval", "$__range"}, f"{panel['title']}: {windows}"
            unknown = {m for m in metric_names(expr) if base_metric(m) not in DESIGN_METRICS}
            assert unknown <= {"up"}, f"{panel['title']}: not DESIGN.md metrics {unknown}"


# What the issue asks each dashboard to show (panel titles) and which variable it needs.
REQUIRED = {
    "lakewarden-fleet": (
        "job",
        {
            "Table health over time",
            "Stale tables",
            "Writes blocked",
            "Denials by agent",
            "Statements by agent",
            "Statement latency p95 by agent",
        },
    ),
    "lakewarden-table": (
        "table",
        {
            "Rows",
            "Freshness vs SLA",
            "Null ratio by column vs contract max",
            "Schema changes",
            "Anomaly scores",
            "Rows written by agent",
        },
    ),
    "lakewarden-agent": (
        "agent",
        {
            "Statements by decision",
            "Rows written by table",
            "Latency p50 and p95",
            "Errors by type",
        },
    ),
}


@pytest.mark.parametrize("uid", sorted(REQUIRED))
def test_dashboard_covers_the_issue(uid: str) -> None:
    board = next(b for b in dashboards().values() if b["uid"] == uid)
    variable, titles = REQUIRED[uid]
    assert variable in {v["name"] for v in board["templating"]["list"]}
    assert titles <= {p["title"] for p in panels(board)}
