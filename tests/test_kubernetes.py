"""The Kubernetes manifests (deploy/kubernetes), without a cluster: rendered by `kubectl
kustomize` as a user would (after creating the files the README says to create), every
object validated against the Kubernetes API's schemas and the Prometheus Operator's CRDs
(tests/fixtures/kubernetes), the PrometheusRule and the dashboard compared with the
mixin's output for the job the ServiceMonitor gives, pod security and probes checked
field by field, and each pod run for real: its container's command and args, with its
ConfigMap and Secrets written where it mounts them (in a temporary directory), against
the simulator; the HA overlay as three replicas sharing a real redis-server, and its
Redis container's own start script against a real redis-server too."""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter import __version__
from exporter.cli import build_parser, parse_duration
from exporter.mixin import ALERTS, DASHBOARD, RULES, render
from exporter.mixin.config import build_mixin_config
from exporter.sim.http import RunningSimulator
from tests.support.exporters import API_KEY
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import Process
from tests.support.redis import Redis
from tests.support.tools import IN_CI, require_tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
FIXTURES = ROOT / "tests" / "fixtures" / "kubernetes"
K8S_SCHEMAS = FIXTURES / "kubernetes-json-schema" / "v1.32.0-local-strict"
CRDS = FIXTURES / "prometheus-operator" / "v0.93.0"
GENERATOR = ROOT / "tools" / "ship_kubernetes.py"
BASE, HA = "base", "overlays/ha"
TARGETS = (BASE, HA)
each_target = pytest.mark.parametrize("target", TARGETS)
# What the README tells the user to create (git ignores them): rendering needs them...
USER_FILES = ("base/api_key", "overlays/ha/redis_password")
# ...and this one once webhooks are enabled
SECRET_FILES = (*USER_FILES, "base/webhook_token")
REDIS_PASSWORD = "0123456789abcdef0123456789abcdef"
EXPORTER_UID = 10001  # the Dockerfile's USER
STATE_DIR = "/var/lib/copyai-exporter"
GRACE_SECONDS = 30

Object = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------


def copy_tree(into: Path) -> Path:
    """deploy/kubernetes without the user files a developer may have made locally."""
    tree = into / "kubernetes"
    ignore = shutil.ignore_patterns(*(PurePosixPath(f).name for f in SECRET_FILES))
    shutil.copytree(DEPLOY, tree, ignore=ignore)
    return tree


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    """Each target rendered from a copy holding the user's files; the API key in it is
    the one the simulator of the `world` fixture accepts."""
    tree = copy_tree(tmp_path_factory.mktemp("deploy"))
    (tree / "base" / "api_key").write_text(API_KEY + "\n", encoding="utf-8")
    (tree / "overlays" / "ha" / "redis_password").write_text(REDIS_PASSWORD + "\n")
    result = {}
    for target in TARGETS:
        run = kustomize(tree / target)
        assert run.returncode == 0, run.stderr
        result[target] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return result


def of_kind(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Object], kind: str, name: str) -> Object:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def only(objects: list[Object], kind: str) -> Object:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    return all((labels or {}).get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class Workload:
    """A Deployment's or StatefulSet's pod template and its one container."""

    owner: Object

    @property
    def pod(self) -> Object:
        return self.owner["spec"]["template"]["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.owner["spec"]["template"]["metadata"]["labels"]

    @property
    def container(self) -> Object:
        (container,) = self.pod["containers"]
        return container

    def port(self, name: str) -> int:
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        return ports[name]

    def volume(self, name: str) -> Object:
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        if name in volumes:
            return volumes[name]
        templates = {
            t["metadata"]["name"] for t in self.owner["spec"].get("volumeClaimTemplates", [])
        }
        assert name in templates, f"no volume {name}"
        return {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-(template)"}}

    def mount_of(self, path: str) -> Object:
        """The volume mount a file path inside the container lies under."""
        mounts = [
            m
            for m in self.container.get("volumeMounts", [])
            if PurePosixPath(path).is_relative_to(m["mountPath"])
        ]
        assert mounts, f"{path} is on no volume"
        return max(mounts, key=lambda m: len(m["mountPath"]))


def exporter(objects: list[Object]) -> Workload:
    return Workload(only(objects, "Deployment"))


def redis(objects: list[Object]) -> Workload:
    return Workload(only(objects, "StatefulSet"))


def exporter_args(workload: Workload) -> Any:
    return build_parser().parse_args(workload.container["args"])


def config_map_data(objects: list[Object], workload: Workload, path: str) -> str:
    """The text of a file a workload mounts from a ConfigMap."""
    mount = workload.mount_of(path)
    volume = workload.volume(mount["name"])
    assert "configMap" in volume, f"{path} is not from a ConfigMap"
    config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
    key = PurePosixPath(path).relative_to(mount["mountPath"]).as_posix()
    return config_map["data"][key]


def exporter_config(objects: list[Object]) -> dict[str, Any]:
    workload = exporter(objects)
    return yaml.safe_load(config_map_data(objects, workload, exporter_args(workload).config_file))


def secret_of(objects: list[Object], workload: Workload, path: str) -> tuple[Object, str]:
    """The Secret a file a workload mounts comes from, and its key."""
    mount = workload.mount_of(path)
    volume = workload.volume(mount["name"])
    assert "secret" in volume, f"{path} is not from a Secret"
    secret = named(objects, "Secret", volume["secret"]["secretName"])
    return secret, PurePosixPath(path).relative_to(mount["mountPath"]).as_posix()


def test_kustomize_renders_each_target_with_the_expected_objects(rendered):
    kinds = {target: sorted(o["kind"] for o in rendered[target]) for target in TARGETS}
    common = [
        "ConfigMap",  # the config
        "ConfigMap",  # the dashboard
        "Deployment",
        "PrometheusRule",
        "Secret",  # the API key
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    assert kinds[BASE] == sorted([*common, "PersistentVolumeClaim"])
    assert kinds[HA] == sorted(
        [*common, "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "StatefulSet"]
    )
    for target in TARGETS:
        for obj in rendered[target]:
            assert "namespace" not in obj["metadata"], "the namespace is the user's choice"
            labels = obj["metadata"].get("labels") or {}
            assert labels.get("app.kubernetes.io/part-of") == "copyai-exporter", obj["kind"]


def test_kustomize_says_which_user_file_is_missing(tmp_path: Path):
    tree = copy_tree(tmp_path)
    run = kustomize(tree / "base")
    assert run.returncode != 0
    assert "api_key" in run.stderr
    (tree / "base" / "api_key").write_text("key\n")
    run = kustomize(tree / "overlays" / "ha")
    assert run.returncode != 0
    assert "redis_password" in run.stderr


def test_git_ignores_the_files_the_user_creates():
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in SECRET_FILES:
        result = subprocess.run(
            [git, "check-ignore", "-q", f"deploy/kubernetes/{path}"], cwd=ROOT, check=False
        )
        assert result.returncode == 0, f"deploy/kubernetes/{path} is not ignored by git"


# --- schemas ------------------------------------------------------------------------------


def require_module(name: str) -> Any:
    """A test-only dependency (pyproject's `test` extra): missing, it fails under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{name} is required under CI=true (pip install -e '.[test]')")
        pytest.skip(f"{name} not installed (pip install -e '.[test]'); CI runs this test")


def go_pattern(validator: Any, pattern: str, instance: object, schema: Object) -> Iterator[Any]:
    """`pattern` as Go's regexp reads it: Python refuses `(?i)` after the start."""
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    flags = re.IGNORECASE if "(?i)" in pattern else 0
    if not re.search(pattern.replace("(?i)", ""), instance, flags):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def structural(schema: Object) -> Object:
    """A CRD's openAPIV3Schema as the API server applies it under strict field
    validation: no unknown fields unless x-kubernetes-preserve-unknown-fields."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: structural(s) for name, s in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = structural(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [structural(s) for s in out[key]]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def validate() -> Callable[[Object], list[str]]:
    """Every problem the schemas find in one object ([] when valid)."""
    jsonschema = require_module("jsonschema")
    from referencing import Registry, Resource

    definitions = json.loads((K8S_SCHEMAS / "_definitions.json").read_text(encoding="utf-8"))
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": go_pattern})
    crds: dict[tuple[str, str], Object] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = structural(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"$ref": OBJECT_META}
            crds[(f"{group}/{version['name']}", kind)] = schema

    def schema_for(obj: Object) -> Object:
        api_version, kind = obj["apiVersion"], obj["kind"]
        if (api_version, kind) in crds:
            return crds[(api_version, kind)]
        group, _, version = api_version.rpartition("/")
        suffix = f"{group.split('.')[0]}-{version}" if group else version
        path = K8S_SCHEMAS / f"{kind.lower()}-{suffix}.json"
        assert path.is_file(), f"no schema for {api_version} {kind} in tests/fixtures/kubernetes"
        return json.loads(path.read_text(encoding="utf-8"))

    def check(obj: Object) -> list[str]:
        validator = strict(schema_for(obj), registry=registry)
        return sorted(
            f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
            for error in validator.iter_errors(obj)
        )

    return check


@each_target
def test_every_rendered_object_is_valid_against_its_schema(rendered, validate, target):
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": validate(obj) for obj in rendered[target]
    }
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_schema_check_is_not_fooled(rendered, validate):
    """Broken copies of the rendered objects must fail, or the check proves nothing."""
    objects = rendered[HA]

    def broken(kind: str, change: Callable[[Object], None]) -> list[str]:
        obj = json.loads(json.dumps(only(objects, kind)))
        change(obj)
        return validate(obj)

    def misspelt(d: Object) -> None:
        context = d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        context["readonlyRootFilesystem"] = context.pop("readOnlyRootFilesystem")

    assert broken("Deployment", misspelt)
    assert broken("Deployment", lambda d: d["spec"].update(replicas="three"))
    assert broken("StatefulSet", lambda s: s["spec"]["template"]["spec"].update(volumes=[{}]))
    assert broken("PodDisruptionBudget", lambda p: p["spec"].update(minAvailable=[2]))
    assert broken("ServiceAccount", lambda s: s["metadata"].update(labels={"a": 1}))
    assert broken("NetworkPolicy", lambda n: n["spec"].update(podSelector="redis"))
    endpoint = "spec.endpoints.0"
    found = broken("ServiceMonitor", lambda m: m["spec"]["endpoints"][0].update(timeout="10s"))
    assert any(p.startswith(endpoint) for p in found), found
    found = broken(
        "ServiceMonitor", lambda m: m["spec"]["endpoints"][0].update(scrapeTimeout="10 seconds")
    )
    assert any(p.startswith(f"{endpoint}.scrapeTimeout") for p in found), found
    found = broken("PrometheusRule", lambda r: r["spec"]["groups"][0].pop("name"))
    assert any(p.startswith("spec.groups.0") for p in found), found
    found = broken(
        "PrometheusRule", lambda r: r["spec"]["groups"][0].update(partial_response_strategy="x")
    )
    assert found
    found = broken("PrometheusRule", lambda r: r["metadata"].update(labels=["x"]))
    assert any(p.startswith("metadata.labels") for p in found), found
    # and what Go reads case-insensitively passes
    assert not broken(
        "PrometheusRule", lambda r: r["spec"]["groups"][0].update(partial_response_strategy="Warn")
    )


# --- the ServiceMonitor, the rules and the dashboard --------------------------------------


def scraped(objects: list[Object]) -> tuple[Object, Object]:
    """The ServiceMonitor and the one Service it scrapes (in its own namespace)."""
    monitor = only(objects, "ServiceMonitor")
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace, where we are
    matched = [
        s
        for s in of_kind(objects, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels"))
    ]
    assert len(matched) == 1, [s["metadata"]["name"] for s in matched]
    return monitor, matched[0]


def scraped_job(objects: list[Object]) -> str:
    """The Prometheus Operator's `job`: the Service's label named by jobLabel, else (no
    jobLabel, or the Service lacks that label) the Service's name."""
    monitor, service = scraped(objects)
    label = monitor["spec"].get("jobLabel")
    labels = service["metadata"].get("labels") or {}
    return labels[label] if label and labels.get(label) else service["metadata"]["name"]


def mixin_outputs(objects: list[Object]) -> dict[str, str]:
    return render(build_mixin_config({"selector": f'job="{scraped_job(objects)}"'}))


@each_target
def test_the_service_monitor_scrapes_the_exporters_metrics_port_within_its_timeout(
    rendered, target
):
    objects = rendered[target]
    monitor, service = scraped(objects)
    workload = exporter(objects)
    (endpoint,) = monitor["spec"]["endpoints"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    port = ports[endpoint["port"]]
    # the Service sends it to the container port the exporter listens on
    assert port["targetPort"] == "metrics"
    listen = exporter_args(workload).listen_address
    assert int(listen.rpartition(":")[2]) == workload.port("metrics") == port["port"] == 10117
    assert endpoint["path"] == exporter_args(workload).telemetry_path
    assert endpoint.get("scheme", "http") == "http"
    # Prometheus sends scrapeTimeout in X-Prometheus-Scrape-Timeout-Seconds and the
    # exporter answers before it; it must be set, and below the interval
    assert parse_duration(endpoint["scrapeTimeout"]) < parse_duration(endpoint["interval"])
    # the Service selects exactly the exporter's pods, not Redis
    assert selects(service["spec"]["selector"], workload.labels)
    for other in of_kind(objects, "StatefulSet"):
        assert not selects(service["spec"]["selector"], Workload(other).labels)
    # the job is the Service's app.kubernetes.io/name, unchanged by a name prefix
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert scraped_job(objects) == "copyai-exporter"


@each_target
def test_the_prometheus_rule_is_the_mixin_for_the_scraped_job(rendered, target):
    objects = rendered[target]
    rule = only(objects, "PrometheusRule")
    outputs = mixin_outputs(objects)
    expected = yaml.safe_load(outputs[RULES])["groups"] + yaml.safe_load(outputs[ALERTS])["groups"]
    assert rule["spec"]["groups"] == expected, "run python tools/ship_kubernetes.py"
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names))  # the CRD's list-map key


@each_target
def test_the_dashboard_config_map_is_the_mixins_for_the_sidecar(rendered, target):
    objects = rendered[target]
    dashboards = [
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")
    ]
    (dashboard,) = dashboards
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["name"] == "copyai-exporter-dashboard"  # no hash suffix
    assert dashboard["data"] == {"copyai-exporter.json": mixin_outputs(objects)[DASHBOARD]}, (
        "run python tools/ship_kubernetes.py"
    )


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_shipped_rules_and_dashboard_are_what_the_generator_writes(tmp_path: Path):
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr  # it names the command to run
    # the check notices a stale file, and says what to run
    tree = tmp_path / "repo"
    shutil.copytree(DEPLOY / "base", tree / "deploy" / "kubernetes" / "base")
    rules = tree / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
    rules.write_text(rules.read_text().replace("for: 5m", "for: 6m"))
    result = run_generator("--check", "--root", str(tree))
    assert result.returncode == 1
    assert "deploy/kubernetes/base/prometheusrule.yaml is stale" in result.stderr
    assert "run python tools/ship_kubernetes.py" in result.stderr
    assert "dashboards" not in result.stderr
    # writing makes it fresh again
    assert run_generator("--root", str(tree)).returncode == 0
    assert run_generator("--check", "--root", str(tree)).returncode == 0


# --- image, security, probes, resources ---------------------------------------------------


def test_the_image_is_named_once_with_the_package_version(rendered):
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "copyai-exporter"]
    assert image["newTag"] == __version__
    for target in TARGETS:
        container = exporter(rendered[target]).container
        assert container["image"] == f"{image['newName']}:{__version__}"
    # nowhere else: the manifests name the image only by its placeholder
    for path in DEPLOY.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert image["newName"] not in path.read_text(), path


def test_the_redis_image_is_the_compose_ha_stacks(rendered):
    compose = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())
    assert redis(rendered[HA]).container["image"] == compose["services"]["redis"]["image"]


def workloads(objects: list[Object]) -> list[Workload]:
    return [Workload(o) for o in of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet")]


@each_target
def test_pods_run_unprivileged_with_a_read_only_root(rendered, target):
    objects = rendered[target]
    for workload in workloads(objects):
        pod, container = workload.pod, workload.container
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        account = named(objects, "ServiceAccount", pod["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["runAsUser"] != 0 and context["runAsGroup"] != 0
        assert context["fsGroup"] == context["runAsGroup"]
        assert container["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # secrets are files (read by the group fsGroup gives), never the environment
        assert "env" not in container and "envFrom" not in container
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] == 0o440, volume["name"]
    # the exporter as the image's user
    context = exporter(objects).pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (
        EXPORTER_UID,
        EXPORTER_UID,
        EXPORTER_UID,
    )
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {EXPORTER_UID}:{EXPORTER_UID}" in dockerfile


def writable_mounts(workload: Workload) -> dict[str, str]:
    """mountPath -> the kind of volume, for every mount not read-only."""
    found = {}
    for mount in workload.container.get("volumeMounts", []):
        if not mount.get("readOnly"):
            volume = workload.volume(mount["name"])
            kinds = [k for k in volume if k != "name"]
            found[mount["mountPath"]] = kinds[0]
    return found


def test_the_exporter_writes_only_where_its_state_is(rendered):
    base_config = exporter_config(rendered[BASE])
    assert str(PurePosixPath(base_config["state"]["path"]).parent) == STATE_DIR
    assert writable_mounts(exporter(rendered[BASE])) == {STATE_DIR: "persistentVolumeClaim"}
    # SQLite's temporary files go to the working directory when /tmp is read-only
    assert exporter(rendered[BASE]).container["workingDir"] == STATE_DIR
    assert f"WORKDIR {STATE_DIR}" in (ROOT / "Dockerfile").read_text()
    assert writable_mounts(exporter(rendered[HA])) == {}  # its state is in Redis
    assert writable_mounts(redis(rendered[HA])) == {
        "/data": "persistentVolumeClaim",
        "/run/redis": "emptyDir",
    }
    conf = redis(rendered[HA]).volume("conf")["emptyDir"]
    assert conf["medium"] == "Memory"  # the password's config file never reaches a disk


EXPORTER_PROBES = {
    "startupProbe": {
        "httpGet": {"path": "/-/healthy", "port": "metrics"},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 60,
    },
    "livenessProbe": {
        "httpGet": {"path": "/-/healthy", "port": "metrics"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    },
    "readinessProbe": {
        "httpGet": {"path": "/-/ready", "port": "metrics"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    },
}


@each_target
def test_exporter_probes_and_shutdown_budget(rendered, target):
    workload = exporter(rendered[target])
    container = workload.container
    for probe, expected in EXPORTER_PROBES.items():
        assert container[probe] == expected, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # a large state file
    assert workload.pod["terminationGracePeriodSeconds"] == GRACE_SECONDS


def test_redis_probes(rendered):
    container = redis(rendered[HA]).container
    assert container["startupProbe"]["tcpSocket"] == {"port": "redis"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "redis"}
    command = container["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert "redis-cli -p 6379 ping" in command[2] and "REDISCLI_AUTH" in command[2]


def quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match.group(1)) * units.get(match.group(2), 1)


def benchmark_peaks_mb(row: str) -> list[float]:
    """The exporter's measured peaks (MB) in a row of BENCHMARKS.md's results table."""
    peaks = []
    for line in (ROOT / "BENCHMARKS.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1] == row:
            peaks += [float(v) for v in re.findall(r"([\d.]+) MB", cells[3])[:1]]
    assert peaks, f"no row {row} in BENCHMARKS.md"
    return peaks


@each_target
def test_exporter_resources_cover_the_measured_memory(rendered, target):
    resources = exporter(rendered[target]).container["resources"]
    request = quantity(resources["requests"]["memory"])
    limit = quantity(resources["limits"]["memory"])
    largest = max(benchmark_peaks_mb("5") + benchmark_peaks_mb("8")) * 1e6
    assert request >= largest, "requests.memory is below BENCHMARKS.md's largest peak"
    assert limit >= 2 * largest
    assert quantity(resources["requests"]["cpu"]) <= quantity(resources["limits"]["cpu"])
    assert redis(rendered[HA]).container["resources"]["limits"]["memory"]


# --- base and HA: the shapes --------------------------------------------------------------


def test_base_is_one_exporter_with_its_history_on_a_volume_claim(rendered):
    objects = rendered[BASE]
    workload = exporter(objects)
    assert workload.owner["spec"]["replicas"] == 1
    assert workload.owner["spec"]["strategy"] == {"type": "Recreate"}  # one SQLite writer
    config = exporter_config(objects)
    assert config["state"] == {"path": f"{STATE_DIR}/state.db"}
    mount = workload.mount_of(config["state"]["path"])
    claim = workload.volume(mount["name"])["persistentVolumeClaim"]["claimName"]
    pvc = named(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    # the key is a file from the Secret, whose data is what the user put in api_key
    secret, key = secret_of(objects, workload, config["api"]["api_key_file"])
    assert base64.b64decode(secret["data"][key]).decode().strip() == API_KEY
    assert secret["metadata"]["name"].startswith("copyai-exporter-api-key-")  # hashed
    # webhooks off, but the Service names the port for when they are on
    assert "webhooks" not in config
    _, service = scraped(objects)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["webhook"] == {
        "name": "webhook",
        "port": 10118,
        "targetPort": "webhook",
        "protocol": "TCP",
    }
    assert workload.port("webhook") == 10118
    # the config is hashed too, so that a change rolls the pod
    config_volume = workload.volume(workload.mount_of(exporter_args(workload).config_file)["name"])
    assert config_volume["configMap"]["name"].startswith("copyai-exporter-config-")


def test_ha_config_is_base_config_with_the_state_in_redis(rendered):
    base_config, ha_config = exporter_config(rendered[BASE]), exporter_config(rendered[HA])
    for key in set(base_config) | set(ha_config):
        if key != "state":
            assert ha_config.get(key) == base_config.get(key), key
    assert ha_config["state"]["backend"] == "redis"
    assert "path" not in ha_config["state"]


def test_ha_runs_three_replicas_spread_and_kept_at_two(rendered):
    objects = rendered[HA]
    workload = exporter(objects)
    spec = workload.owner["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert not of_kind(objects, "PersistentVolumeClaim")  # the exporters keep nothing
    assert not [v for v in workload.pod["volumes"] if "persistentVolumeClaim" in v]
    (term,) = workload.pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], workload.labels)
    budget = only(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 2
    assert selects(budget["spec"]["selector"]["matchLabels"], workload.labels)
    assert not selects(budget["spec"]["selector"]["matchLabels"], redis(objects).labels)


def test_ha_redis_is_persistent_password_protected_and_reached_only_by_the_exporters(rendered):
    objects = rendered[HA]
    exporters, store = exporter(objects), redis(objects)
    config = exporter_config(objects)["state"]["redis"]
    # the url names the Redis Service and its port, which lead to the Redis container
    url = urlsplit(config["url"])
    service = named(objects, "Service", url.hostname)
    assert store.owner["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], store.labels)
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"] == store.port(port["targetPort"]) == 6379
    # appendonly on the claim template's volume, as in docker-compose.ha.yml
    args = store.container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    assert args[args.index("--port") + 1] == "6379"
    assert store.volume(store.mount_of(data_dir)["name"])["persistentVolumeClaim"]
    (template,) = store.owner["spec"]["volumeClaimTemplates"]
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    # one Secret: the exporters' password_file and the file Redis' script reads
    exporter_secret, exporter_key = secret_of(objects, exporters, config["password_file"])
    script = store.container["command"][2]
    (redis_password_file,) = re.findall(r"password_file=(\S+)", script)
    redis_secret, redis_key = secret_of(objects, store, redis_password_file)
    assert exporter_secret is redis_secret and exporter_key == redis_key == "password"
    assert base64.b64decode(redis_secret["data"]["password"]).decode().strip() == REDIS_PASSWORD
    # only the exporters may connect
    policy = only(objects, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], store.labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], exporters.labels)
    assert not selects(peer["podSelector"]["matchLabels"], store.labels)
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


# --- running the pods ---------------------------------------------------------------------


@dataclass
class LocalPod:
    """A workload's container run here: each volume it mounts becomes a directory, holding
    its ConfigMap's or Secret's files as the kubelet writes them, and every path under a
    mount is rewritten to that directory."""

    workload: Workload
    mounts: dict[str, Path]

    @classmethod
    def materialise(cls, objects: list[Object], workload: Workload, root: Path) -> LocalPod:
        mounts = {}
        for mount in workload.container.get("volumeMounts", []):
            volume = workload.volume(mount["name"])
            local = root / mount["name"]
            local.mkdir(parents=True)
            if "configMap" in volume:
                config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
                for key, text in config_map["data"].items():
                    (local / key).write_text(text, encoding="utf-8")
            elif "secret" in volume:
                secret = named(objects, "Secret", volume["secret"]["secretName"])
                for key, data in secret["data"].items():
                    (local / key).write_bytes(base64.b64decode(data))
                    (local / key).chmod(volume["secret"]["defaultMode"])
            else:
                assert {"persistentVolumeClaim", "emptyDir"} & set(volume), volume
            mounts[mount["mountPath"]] = local
        return cls(workload, mounts)

    def local(self, text: str) -> str:
        for path in sorted(self.mounts, key=len, reverse=True):
            text = text.replace(path, str(self.mounts[path]))
        return text

    def file(self, path: str) -> Path:
        return Path(self.local(path))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def sample(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def answered(port: int, metric: str, value: float) -> tuple[int, str] | None:
    """/metrics' answer once it shows metric == value."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    return (status, text) if status == 200 and sample(text, metric) == value else None


def clean_env() -> dict[str, str]:
    """This environment without COPYAI_* (the key must come from the mounted file)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}


def local_exporter_args(pod: LocalPod, port: int) -> list[str]:
    """The container's args with paths on its volumes made local and the listen address
    on loopback; the container's command is the image's `copyai-exporter` script, run
    here as `python -m exporter` (the same exporter.cli:main)."""
    container = pod.workload.container
    assert container["command"] == ["copyai-exporter"]
    listen = exporter_args(pod.workload).listen_address
    assert int(listen.rpartition(":")[2]) == pod.workload.port("metrics")
    args = []
    for arg in container["args"]:
        if arg.startswith("--web.listen-address="):
            args.append(f"--web.listen-address=127.0.0.1:{port}")
        else:
            args.append(pod.local(arg))
    return args


def write_local_config(pod: LocalPod, objects: list[Object], edit: Callable[[dict], None]) -> None:
    """The config the container reads, its paths made local, edited for this machine."""
    config_path = pod.file(exporter_args(pod.workload).config_file)
    text = pod.local(
        config_map_data(objects, pod.workload, exporter_args(pod.workload).config_file)
    )
    document = yaml.safe_load(text)
    edit(document)
    config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def probe_url(pod: LocalPod, probe: str, local_port: int) -> str:
    """The URL the kubelet would ask for a probe, on the port the exporter listens on
    here; the probe's port must be the metrics port the Service targets."""
    action = pod.workload.container[probe]["httpGet"]
    assert pod.workload.port(action["port"]) == pod.workload.port("metrics")
    return f"http://127.0.0.1:{local_port}{action['path']}"


def check_config(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args, "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )


def stop_within_grace(process: Process) -> None:
    started = time.monotonic()
    assert process.stop() == 0, process.log_text()
    assert time.monotonic() - started < GRACE_SECONDS


def start_exporter(spawn: Callable[..., Process], args: list[str]) -> Process:
    """The exporter with the container's args, without any COPYAI_* variable."""
    return spawn(*args, env=clean_env(), clean_env=True)


def test_base_pod_runs_against_the_simulator(
    rendered, sim: RunningSimulator, spawn, tmp_path: Path
):
    objects = rendered[BASE]
    pod = LocalPod.materialise(objects, exporter(objects), tmp_path)
    write_local_config(pod, objects, lambda d: d["api"].update(base_url=sim.base_url))
    port = free_port()
    args = local_exporter_args(pod, port)
    checked = check_config(args)
    assert checked.returncode == 0, checked.stderr
    assert "valid (2 workflow(s), 0 run(s))" in checked.stdout

    process = start_exporter(spawn, args)
    process.wait_for_line(re.compile(rf"listening url=http://127\.0\.0\.1:{port}/metrics"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert get(probe_url(pod, probe, port))[0] == 200, probe
    # /metrics serves, and the API took the key from the mounted Secret
    status, text = wait_for(lambda: answered(port, "copyai_up", 1))
    assert status == 200
    assert sample(text, "copyai_state_backend_up") == 1
    stop_within_grace(process)
    # the history is on the claim's volume, where state.path points
    state = pod.file(exporter_config(objects)["state"]["path"])
    assert state.is_file() and state.stat().st_size > 0
    assert API_KEY not in process.log_text()


WEBHOOK_TOKEN = "k8s-webhook-token-0123456789"


def enable_webhooks_as_documented(tree: Path) -> None:
    """What base/config.yaml and base/kustomization.yaml tell the user to do."""
    base = tree / "base"
    config = base / "config.yaml"
    text = config.read_text()
    block = re.search(r"^# webhooks:\n(?:#   .*\n)+", text, re.MULTILINE)
    assert block, "base/config.yaml no longer shows the webhooks block"
    uncommented = re.sub(r"^# ", "", block.group(0), flags=re.MULTILINE)
    config.write_text(text.replace(block.group(0), uncommented))
    (base / "webhook_token").write_text(WEBHOOK_TOKEN + "\n")
    kustomization = base / "kustomization.yaml"
    document = yaml.safe_load(kustomization.read_text())
    (generator,) = document["secretGenerator"]
    generator["files"].append("webhook_token")
    kustomization.write_text(yaml.safe_dump(document))


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_webhooks_enabled_as_documented_listen_on_the_services_port(
    sim: RunningSimulator, spawn, tmp_path: Path
):
    tree = copy_tree(tmp_path / "deploy")
    (tree / "base" / "api_key").write_text(API_KEY)
    enable_webhooks_as_documented(tree)
    run = kustomize(tree / "base")
    assert run.returncode == 0, run.stderr
    objects = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    workload = exporter(objects)
    config = exporter_config(objects)
    listen = config["webhooks"]["listen_address"]
    assert int(listen.rpartition(":")[2]) == workload.port("webhook")
    secret, key = secret_of(objects, workload, config["webhooks"]["token_file"])
    assert base64.b64decode(secret["data"][key]).decode().strip() == WEBHOOK_TOKEN

    pod = LocalPod.materialise(objects, workload, tmp_path / "pod")
    hook_port, port = free_port(), free_port()

    def local(document: dict) -> None:
        document["api"]["base_url"] = sim.base_url
        document["webhooks"]["listen_address"] = f"127.0.0.1:{hook_port}"

    write_local_config(pod, objects, local)
    args = local_exporter_args(pod, port)
    assert check_config(args).returncode == 0
    process = start_exporter(spawn, args)
    process.wait_for_line(re.compile(r"webhook receiver listening"))
    # the token is the Secret's: a wrong one is refused before the body is read
    assert post(f"http://127.0.0.1:{hook_port}/webhook/wrong-token-0123456789", b"{}") == 401
    assert post(f"http://127.0.0.1:{hook_port}/webhook/{WEBHOOK_TOKEN}", b"not json") == 400
    stop_within_grace(process)
    assert WEBHOOK_TOKEN not in process.log_text()


def test_ha_pods_share_a_password_protected_redis(
    rendered, sim: RunningSimulator, spawn, redis_server: Redis, tmp_path: Path
):
    objects = rendered[HA]
    redis_client = require_module("redis")
    client = redis_client.Redis(host="127.0.0.1", port=redis_server.port)
    client.config_set("requirepass", REDIS_PASSWORD)  # the password the Secret holds
    client.close()
    pod = LocalPod.materialise(objects, exporter(objects), tmp_path)

    def local(document: dict) -> None:
        document["api"]["base_url"] = sim.base_url
        document["state"]["redis"]["url"] = redis_server.url

    write_local_config(pod, objects, local)
    ports = [free_port() for _ in range(exporter(objects).owner["spec"]["replicas"])]
    assert len(ports) == 3
    checked = check_config(local_exporter_args(pod, ports[0]))
    assert checked.returncode == 0, checked.stderr
    replicas = [start_exporter(spawn, local_exporter_args(pod, port)) for port in ports]

    def settled() -> bool:
        answers = [get(f"http://127.0.0.1:{port}/metrics") for port in ports]
        if any(status != 200 for status, _ in answers):
            return False
        if any(sample(text, "copyai_state_backend_up") != 1 for _, text in answers):
            return False
        leaders = [sample(text, "copyai_state_leader") for _, text in answers]
        return sorted(leaders) == [0, 0, 1]

    wait_for(settled, timeout=30)
    for port in ports:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert get(probe_url(pod, probe, port))[0] == 200, (port, probe)
    for replica in replicas:
        stop_within_grace(replica)
        assert REDIS_PASSWORD not in replica.log_text()


def start_redis_container(
    objects: list[Object], root: Path, port: int
) -> tuple[subprocess.Popen[str], LocalPod, dict[str, str]]:
    """The Redis container's command and args, its volumes local, on a loopback port."""
    server = require_tool("redis-server")
    require_tool("redis-cli")
    pod = LocalPod.materialise(objects, redis(objects), root)
    container = pod.workload.container
    assert container["command"][:2] == ["/bin/sh", "-c"]
    args = list(container["args"])
    args[args.index("--port") + 1] = str(port)
    command = [pod.local(part) for part in container["command"]] + [pod.local(a) for a in args]
    env = {**clean_env(), "PATH": f"{Path(server).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [*command, "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,  # Redis' log
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return process, pod, env


def redis_cli(env: dict[str, str], port: int, *args: str, password: str | None = None) -> str:
    run_env = {**env, **({"REDISCLI_AUTH": password} if password else {})}
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env=run_env,
    )
    return result.stdout.strip()


def test_the_redis_container_starts_with_the_secrets_password_and_appendonly(
    rendered, tmp_path: Path
):
    objects = rendered[HA]
    port = free_port()
    process, pod, env = start_redis_container(objects, tmp_path, port)
    try:
        wait_for(lambda: redis_cli(env, port, "ping", password=REDIS_PASSWORD) == "PONG")
        assert "NOAUTH" in redis_cli(env, port, "get", "x")  # no password, no access
        assert redis_cli(env, port, "config", "get", "appendonly", password=REDIS_PASSWORD) == (
            "appendonly\nyes"
        )
        # the readiness probe, as the kubelet runs it in the container
        probe = pod.workload.container["readinessProbe"]["exec"]["command"]
        local_probe = [pod.local(p).replace("-p 6379", f"-p {port}") for p in probe]
        assert subprocess.run(local_probe, env=env, timeout=10, check=False).returncode == 0
        # the password is in a private file on the memory volume, not on the command line
        conf = pod.file("/run/redis/redis.conf")
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and REDIS_PASSWORD.encode() not in cmdline
        assert redis_cli(env, port, "set", "k", "v", password=REDIS_PASSWORD) == "OK"
        wait_for(lambda: list((pod.file("/data")).rglob("*.aof")))
    finally:
        process.terminate()
        process.wait(timeout=10)
    # the probe fails when Redis is gone
    assert subprocess.run(local_probe, env=env, timeout=10, check=False).returncode != 0


@pytest.mark.parametrize("password", ["", "with space", 'quo"te'])
def test_the_redis_container_refuses_a_password_it_cannot_pass_on(
    rendered, tmp_path: Path, password: str
):
    objects = json.loads(json.dumps(rendered[HA]))
    store = redis(objects)
    secret_name = store.volume("password")["secret"]["secretName"]
    secret = named(objects, "Secret", secret_name)
    secret["data"]["password"] = base64.b64encode(password.encode()).decode()
    port = free_port()
    process, _, _ = start_redis_container(objects, tmp_path, port)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1
    assert "the password must be letters and digits" in stderr
