"""Plumbing shared by the rows: child processes, free ports, the simulator's control API,
a Prometheus-like scrape client, slow clients, VmHWM, percentiles and a settable clock."""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "demo-key"  # the simulator's default key
# What Prometheus 2.x/3.x sends (the exporter answers the classic text format anyway).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


# --- child processes -----------------------------------------------------------------


class Child:
    """A child process with stdin from /dev/null, stdout and stderr to files, in a
    session of its own (so it never holds the caller's terminal or pipes)."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str]):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_until_answers(url: str, child: Child | None, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail early if the child died."""
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.05)


class Processes:
    """Starts children and stops every one of them, whatever happens (use as `with`)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        child = Child(name, argv, self.workdir, env or {})
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    def log_tails(self, lines: int = 40) -> str:
        """The end of every running child's log, for a failure report."""
        return "\n".join(f"--- {c.name} log ---\n{c.log_tail(lines)}" for c in self._children)

    def stop_all(self) -> None:
        while self._children:
            self._children.pop().stop()


class RedisServer:
    """A redis-server of the benchmark's own on a free loopback port, without
    persistence (use as `with`; stopped whatever happens)."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: redis-server)")
        self.port = free_port()
        self._log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        terminate(self.proc)
        self._log.close()


# --- the simulator's control API -----------------------------------------------------


class SimClient:
    """`/_sim/...` of a simulator at `root` (http://host:port), in-process or not."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    @property
    def base_url(self) -> str:
        return f"{self.root}/api"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.root + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def requests(self) -> dict[str, int]:
        return dict(self.stats()["requests"])

    def reset(self) -> None:
        self._call("POST", "/_sim/stats/reset", {})

    def faults(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_sim/faults", changes)

    def add_run(self, workflow_id: str, steps: list[list[Any]], **details: Any) -> str:
        answer = self._call(
            "POST", "/_sim/runs", {"workflow_id": workflow_id, "steps": steps, **details}
        )
        return answer["run_id"]


def api_calls(requests: Mapping[str, int]) -> int:
    """API requests in a /_sim/stats count (control endpoints are not counted there)."""
    return sum(n for endpoint, n in requests.items() if not endpoint.startswith("webhook_"))


# --- scraping like Prometheus --------------------------------------------------------


@dataclass
class Scrape:
    seconds: float  # connect, request, whole body read
    status: int
    wire_bytes: int
    text: str  # decoded body


def scrape(
    host: str,
    port: int,
    *,
    gzip_ok: bool = True,
    timeout_header: float | None = 10.0,
    timeout: float = 120.0,
    path: str = "/metrics",
) -> Scrape:
    """One scrape over a new connection with http.client, as Prometheus sends it."""
    headers = {"Accept": PROMETHEUS_ACCEPT, "User-Agent": "benchmarks/1"}
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    if timeout_header is not None:
        headers["X-Prometheus-Scrape-Timeout-Seconds"] = f"{timeout_header:g}"
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
        encoding = response.getheader("Content-Encoding", "")
    finally:
        connection.close()
    text = (gzip.decompress(body) if encoding == "gzip" else body).decode("utf-8")
    return Scrape(seconds, response.status, len(body), text)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels text, value) of every sample of one metric name."""
    return [
        (m.group(2) or "", float(m.group(3))) for m in _SAMPLE.finditer(text) if m.group(1) == name
    ]


def fetched_runs(text: str) -> int:
    """Runs whose last fetch succeeded (copyai_workflow_run_fetch_success 1)."""
    return sum(1 for _, v in samples(text, "copyai_workflow_run_fetch_success") if v == 1)


def tracked_runs(text: str) -> int:
    """Runs counted in copyai_workflow_runs (every status, every workflow)."""
    return round(sum(v for _, v in samples(text, "copyai_workflow_runs")))


# --- hostile clients -----------------------------------------------------------------


def raise_open_files_limit(needed: int) -> None:
    """Lift this process' soft RLIMIT_NOFILE to at least `needed` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


SLOW_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"s" * 100_000


@dataclass
class _SlowClient:
    sock: socket.socket
    target: tuple[str, int]
    started: float
    sent: int = 0
    connected: bool = False


@dataclass
class SlowClients:
    """Slow clients on one thread, as an attacker runs them: each connects, sends the
    start of a request line, then one more byte every `interval` seconds, and never
    finishes its request. Records when the server closed each one. Use as `with`."""

    targets: Sequence[tuple[str, int]]
    per_target: int
    interval: float = 1.0
    first_bytes: int = 10  # "GET /metri"
    lifetimes: list[float] = field(default_factory=list)  # connect to closed by the server
    refused: int = 0  # could not connect at all

    def __post_init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: dict[int, _SlowClient] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        raise_open_files_limit(len(self.targets) * self.per_target + 256)
        for target in self.targets:
            for _ in range(self.per_target):
                self._open(target)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for client in list(self._clients.values()):
            self._forget(client)
        self._selector.close()

    @property
    def total(self) -> int:
        return len(self.targets) * self.per_target

    def cut(self) -> int:
        """How many the server has closed so far."""
        with self._lock:
            return len(self.lifetimes)

    def _open(self, target: tuple[str, int]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.refused += 1
            return
        client = _SlowClient(sock, target, time.monotonic())
        self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_WRITE)

    def _run(self) -> None:
        next_byte = time.monotonic() + self.interval
        while self._clients and not self._stop.is_set():
            timeout = max(0.0, next_byte - time.monotonic())
            for key, events in self._selector.select(timeout):
                client = self._clients.get(key.fd)
                if client is None:
                    continue
                if not client.connected and events & selectors.EVENT_WRITE:
                    self._connected(client)
                elif events & selectors.EVENT_READ:
                    self._readable(client)
            if time.monotonic() >= next_byte:
                next_byte += self.interval
                for client in list(self._clients.values()):
                    if client.connected:
                        self._send(client, 1)

    def _connected(self, client: _SlowClient) -> None:
        if client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.refused += 1
            self._forget(client)
            return
        client.connected = True
        self._selector.modify(client.sock, selectors.EVENT_READ)
        self._send(client, self.first_bytes)

    def _send(self, client: _SlowClient, count: int) -> None:
        try:
            client.sent += client.sock.send(SLOW_REQUEST[client.sent : client.sent + count])
        except BlockingIOError:
            pass
        except OSError:  # reset or a broken pipe: the server closed it
            self._closed(client)

    def _readable(self, client: _SlowClient) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # (an answer such as a 408 is read on to the end)
            self._closed(client)

    def _closed(self, client: _SlowClient) -> None:
        with self._lock:
            self.lifetimes.append(time.monotonic() - client.started)
        self._forget(client)

    def _forget(self, client: _SlowClient) -> None:
        if self._clients.pop(client.sock.fileno(), None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
            client.sock.close()


# --- measurements --------------------------------------------------------------------


def proc_status(pid: int, field: str) -> float:
    """A memory field of /proc/<pid>/status (VmHWM, VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def thread_count(pid: int) -> int:
    """Threads of a process (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise KeyError("Threads")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, KeyError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
    }


# --- configs -------------------------------------------------------------------------


def exporter_document(
    base_url: str,
    workflows: list[dict[str, Any]],
    *,
    api: Mapping[str, Any] | None = None,
    collector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An exporter config: no client-side rate limit unless asked (the default of 10/s
    would make every row measure the limiter, not the exporter)."""
    return {
        "api": {"base_url": base_url, "max_requests_per_second": 0, **(api or {})},
        "collector": dict(collector or {}),
        "workflows": workflows,
    }


def workflows_of(config_path: Path) -> list[dict[str, Any]]:
    """The workflows of a config written by `simulate --write-config`."""
    return yaml.safe_load(config_path.read_text(encoding="utf-8"))["workflows"]


def write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
