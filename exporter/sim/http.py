"""The simulated API over HTTP, and its control endpoints (no API key needed; bind to
loopback):
  GET  /_sim/stats          request counts by endpoint, and per run
  POST /_sim/stats/reset
  GET  /_sim/faults         POST /_sim/faults  {"latency_seconds": 0.05, "error_rate": 0.5, ...}
                            {"mode": "hang"}, {"mode": "flap", "flap_statuses": [500, 503]}
  POST /_sim/runs           {"workflow_id": ..., "steps": [["PROCESSING", 5], ["COMPLETE", null]]}
  POST /_sim/canned         {"method": "GET", "path": "/workflow/W/run/R", "status": 200,
                             "body": {...}} (or "text" and "content_type"): answer that
                            request with exactly this; DELETE /_sim/canned forgets them all
  GET  /_sim/config         an exporter config (YAML) watching every simulated run
  GET  /_sim/truth?since=T  ground truth per workflow

`RunningSimulator.pause()` / `resume()` refuse connections and come back on the same
port.

Longer than 500 lines because every fault mode and answer shape is a branch of one
request handler; the faults themselves are declared in faults.py.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from exporter.sim.faults import (
    HTML_ERROR,
    HUGE_BODY_BYTES,
    HUGE_BODY_CHUNK,
    SLOW_BODY_BYTE_SECONDS,
    WRONG_SHAPE,
    Faults,
    gzip_bomb,
    wrong_types_record,
)
from exporter.sim.world import WEBHOOK_EVENTS, World

log = logging.getLogger(__name__)


TICK_SECONDS = 0.1


MAX_CONTROL_BODY = 1024 * 1024


def _request_invalid(detail: str) -> dict[str, Any]:
    """The documented validation error (422)."""
    return {"status": "error", "errorCode": "REQUEST_INVALID", "details": [{"message": detail}]}


_RUN_PATH = re.compile(r"^/workflow/([A-Za-z0-9_-]+)/run/([A-Za-z0-9_-]+)$")


_LIST_PATH = re.compile(r"^/workflow/([A-Za-z0-9_-]+)/run$")


_WEBHOOK_PATH = re.compile(r"^/webhook(?:/([A-Za-z0-9_-]+))?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind a CDN
    # headers and body go out in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer
    disable_nagle_algorithm = True
    server: SimulatorServer
    # how _send delivers this request's answer: "", "truncated_json" or "slow_body"
    _delivery = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator %s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        world = self.server.world
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        self._delivery = ""  # one handler serves every request of a keep-alive connection
        if path.startswith("/_sim/"):
            self._control(method, path, world)
            return
        # A prefix like /api is accepted so base_url can be http://host:port/api.
        if path.startswith("/api/"):
            path = path[4:]
        run_match = _RUN_PATH.match(path)
        list_match = _LIST_PATH.match(path)
        hook_match = _WEBHOOK_PATH.match(path)
        if run_match:
            endpoint = "get_run"
        elif list_match:
            endpoint = "list_runs" if method == "GET" else "start_run"
        elif hook_match:
            endpoint = f"{method.lower()}_webhook"
        else:
            endpoint = "other"
        with world.lock:
            world.stats[endpoint] += 1
            if run_match:
                world.run_stats[run_match.group(2)] += 1
        world.record_arrival(method, endpoint, run_match.group(2) if run_match else None)
        faults = world.faults
        if faults.latency_seconds > 0:
            time.sleep(faults.latency_seconds)
        canned = world.canned.get((method, path))
        if canned is not None:  # a body set through /_sim/canned, served as it is
            self._send(canned[0], canned[1], canned[2])
            return
        if faults.drop_connections:
            self.close_connection = True
            self.connection.close()
            return
        # before the key check, as a broken server or proxy in front of the API answers
        if faults.mode and self._fault_mode(faults, run_match):
            return
        if self.headers.get("x-copy-ai-api-key") != world.api_key or faults.refuse_key:
            self._json(401, {"status": "error", "errorCode": "UNAUTHORIZED"})
            return
        if not world.take_rate_token():
            self._json(
                429,
                {"status": "error", "errorCode": "RATE_LIMITED"},
                {"Retry-After": faults.retry_after},
            )
            return
        if faults.error_rate > 0 and world.rng.random() < faults.error_rate:
            if faults.error_html:
                self._send(faults.error_status, HTML_ERROR.encode(), "text/html")
            else:
                self._json(faults.error_status, {"status": "error", "errorCode": "INTERNAL"})
            return
        if method == "GET" and run_match:
            self._json(*world.get_run(run_match.group(1), run_match.group(2)))
        elif method == "GET" and list_match:
            query = parse_qs(parts.query)
            try:
                size = int(query.get("size", ["10"])[0])
                page = int(query.get("page", ["1"])[0])
            except ValueError:
                size = page = 0
            if not 1 <= size <= 100 or page < 1:
                self._json(422, _request_invalid("size must be 1-100 and page at least 1"))
                return
            self._json(*world.list_runs(list_match.group(1), size, page))
        elif method == "POST" and list_match:
            workflow_id = list_match.group(1)
            if workflow_id not in world.workflows:
                self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})
                return
            self._read_body()
            run = world.start_run(workflow_id)
            self._json(200, {"status": "success", "data": {"id": run.run_id}})
        elif hook_match:
            self._webhook_api(method, hook_match.group(1), parts.query, world)
        else:
            self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})

    def _fault_mode(self, faults: Faults, run_match: re.Match[str] | None) -> bool:
        """Answer in `faults.mode`; False if the request is to be answered normally
        (possibly delivered in a faulty way, see _send)."""
        mode = faults.mode
        try:
            if mode == "hang":
                self._drain_body()
                self._hang()
            elif mode in ("truncated_json", "slow_body"):
                self._delivery = mode
                return False
            elif mode == "wrong_shape":
                self._json(200, WRONG_SHAPE)
            elif mode == "wrong_types":
                record = wrong_types_record()
                if run_match is None:  # a list page with one such item
                    self._json(200, {"status": "success", "data": {"total": 1, "data": [record]}})
                else:
                    self._json(200, {"status": "success", "data": record})
            elif mode == "huge_body":
                self._huge_body(run_match.group(2) if run_match else "WRUN-huge")
            elif mode == "gzip_bomb":
                # clients stop reading a bomb early and reset the connection: end it here
                self.close_connection = True
                self._send(
                    200,
                    gzip_bomb(),
                    "application/json",
                    {"Content-Encoding": "gzip", "Connection": "close"},
                )
            elif mode == "redirect":
                location = faults.redirect_to or "http://127.0.0.1:9/nowhere"
                self._send(
                    302, b"", "text/plain", {"Location": location.replace("{path}", self.path)}
                )
            elif mode == "flap":
                status = faults.next_flap_status()
                if status is None:
                    return False
                self._json(status, {"status": "error", "errorCode": "FLAPPING"})
            else:  # validated by Faults.update; set directly to nonsense: answer normally
                return False
        except OSError:  # the client hung up, as clients of such answers tend to
            self.close_connection = True
        return True

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length") or "0"
        if length.isdigit() and 0 < int(length) <= MAX_CONTROL_BODY:
            self.rfile.read(int(length))

    def _hang(self) -> None:
        """Never answer: wait until the client hangs up or the simulator stops."""
        self.close_connection = True
        stopping = self.server.stopping
        connection = self.connection
        while not stopping.wait(0.05):
            try:
                readable, _, _ = select.select([connection], [], [], 0)
                if readable and not connection.recv(1, socket.MSG_PEEK):
                    return  # the client closed its end (or pause() cut the connection)
            except (OSError, ValueError):  # closed under us
                return

    def _huge_body(self, run_id: str) -> None:
        """A 200 of HUGE_BODY_BYTES, valid JSON, written a chunk at a time; its length is
        told by closing the connection (no Content-Length)."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        head = json.dumps({"status": "success", "data": {"id": run_id}})[:-2].encode()
        head += b', "filler": "'
        tail = b'"}}'
        filler = b"x" * HUGE_BODY_CHUNK
        self.wfile.write(head)
        remaining = HUGE_BODY_BYTES - len(head) - len(tail)
        stopping = self.server.stopping
        while remaining > 0 and not stopping.is_set():
            chunk = filler[: min(remaining, len(filler))]
            self.wfile.write(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            self.wfile.write(tail)

    def _webhook_api(self, method: str, hook_id: str | None, query: str, world: World) -> None:
        if method == "POST" and hook_id is None:
            body = self._read_body()
            if not isinstance(body, dict) or not isinstance(body.get("url"), str):
                self._json(422, _request_invalid("url is required"))
                return
            if body.get("eventType") not in WEBHOOK_EVENTS:
                self._json(422, _request_invalid("eventType is not a known event type"))
                return
            workflow_id = body.get("workflowId")
            if workflow_id is None and world.faults.webhook_empty_workflow_id:
                workflow_id = ""  # one rendering of the docs echoes a workspace-wide hook so
            hook = {
                "id": world.new_id("WHK"),
                "url": body["url"],
                "eventType": body["eventType"],
                "workflowId": workflow_id,
            }
            with world.lock:
                world.webhooks[hook["id"]] = hook
            self._json(200, {"status": "success", "data": hook})
        elif method == "GET" and hook_id is None:
            params = parse_qs(query)
            size = int(params.get("size", ["10"])[0])
            page = int(params.get("page", ["0"])[0])  # pages start at 0 here
            with world.lock:
                hooks = list(world.webhooks.values())
            self._json(200, {"total": len(hooks), "data": hooks[page * size : (page + 1) * size]})
        elif hook_id is not None and method in ("GET", "DELETE"):
            with world.lock:
                hook = world.webhooks.get(hook_id)
                if hook is not None and method == "DELETE":
                    del world.webhooks[hook_id]
            if hook is None:
                self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})
            elif method == "DELETE":  # documented: 202 with {}; some answer with no body
                empty = world.faults.webhook_delete_empty
                self._send(202, b"" if empty else b"{}", "application/json")
            else:
                self._json(200, {"status": "success", "data": hook})
        else:
            self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})

    def _control(self, method: str, path: str, world: World) -> None:
        try:
            if method == "GET" and path == "/_sim/stats":
                with world.lock:
                    body = {"requests": dict(world.stats), "runs": dict(world.run_stats)}
                self._json(200, body)
            elif method == "POST" and path == "/_sim/stats/reset":
                with world.lock:
                    world.stats.clear()
                    world.run_stats.clear()
                    world._arrivals.clear()
                self._json(200, {"ok": True})
            elif path == "/_sim/faults":
                if method == "POST":
                    changes = self._read_body()
                    if not isinstance(changes, dict):
                        raise ValueError("faults must be a JSON object")
                    world.faults.update(changes)
                self._json(
                    200, {f.name: getattr(world.faults, f.name) for f in fields(world.faults)}
                )
            elif method == "POST" and path == "/_sim/runs":
                spec = self._read_body()
                if not isinstance(spec, dict):
                    raise ValueError("run spec must be a JSON object")
                workflow_id = spec.pop("workflow_id")
                steps = [tuple(step) for step in spec.pop("steps")]
                run = world.add_run(workflow_id, steps, **spec)
                self._json(200, {"workflow_id": run.workflow_id, "run_id": run.run_id})
            elif method == "GET" and path == "/_sim/truth":
                since = float(parse_qs(urlsplit(self.path).query).get("since", ["0"])[0])
                self._json(200, world.truth(since))
            elif path == "/_sim/canned" and method == "POST":
                spec = self._read_body()
                body = spec.get("body")
                payload = spec["text"].encode() if "text" in spec else json.dumps(body).encode()
                content_type = spec.get("content_type", "application/json")
                api_path = "/" + str(spec["path"]).strip("/")
                with world.lock:
                    world.canned[(spec.get("method", "GET"), api_path)] = (
                        int(spec.get("status", 200)),
                        payload,
                        content_type,
                    )
                self._json(200, {"ok": True})
            elif path == "/_sim/canned" and method == "DELETE":
                with world.lock:
                    world.canned.clear()
                self._json(200, {"ok": True})
            elif method == "POST" and path == "/_sim/credit-limit":
                body = self._read_body()
                world.credit_limit_reached(body.get("workflow_id") if body else None)
                self._json(200, {"ok": True})
            elif method == "POST" and path == "/_sim/start":
                body = self._read_body()
                run = world.start_run(body["workflow_id"], body.get("fail"))
                self._json(200, {"workflow_id": run.workflow_id, "run_id": run.run_id})
            elif method == "GET" and path == "/_sim/config":
                host, port = self.server.server_address[:2]
                text = world.exporter_config(f"http://{host}:{port}/api")
                self._send(200, text.encode(), "application/yaml")
            else:
                self._json(404, {"error": "no such control endpoint"})
        except (ValueError, KeyError, TypeError) as exc:
            self._json(400, {"error": str(exc)})

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_CONTROL_BODY:
            raise ValueError("body too large")
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        delivery = self._delivery
        if delivery == "truncated_json":
            payload = payload[: len(payload) // 2]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if delivery != "slow_body":
            self.wfile.write(payload)
            return
        stopping = self.server.stopping
        try:
            for index in range(len(payload)):
                self.wfile.write(payload[index : index + 1])
                if index + 1 < len(payload) and stopping.wait(SLOW_BODY_BYTE_SECONDS):
                    break
            else:
                return
        except OSError:
            pass  # the client gave up waiting
        self.close_connection = True  # the body was not all sent


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], world: World):
        self.world = world
        self.stopping = threading.Event()  # set by RunningSimulator.stop(): ends hangs
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # instead of socketserver's traceback on stderr (--demo runs this in the
        # exporter's process): one log record
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("simulator client gone client=%s error=%r", client_address[0], str(exc))
        else:
            log.exception("simulator error serving client=%s", client_address[0])

    def close_connections(self) -> None:
        """Keep-alive connections outlive shutdown(): cut them, as a dead API would."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/api"


class RunningSimulator:
    """A simulator serving in a background thread; `stop()` shuts it down."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0):
        self.world = world
        self.server = SimulatorServer((host, port), world)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="copyai-simulator", daemon=True
        )
        self.thread.start()
        self._stop = threading.Event()
        self._pause_lock = threading.Lock()
        self._paused = False
        self._session = requests.Session()
        self.ticker = threading.Thread(target=self._tick_loop, name="copyai-sim-tick", daemon=True)
        self.ticker.start()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def _tick_loop(self) -> None:
        scheduled: list[tuple[float, int, dict[str, Any], dict[str, Any]]] = []
        order = itertools.count()
        while not self._stop.wait(TICK_SECONDS):
            faults = self.world.faults
            now = time.monotonic()
            for hook, payload in self.world.tick():
                copies = 2 if faults.webhook_duplicate else 1
                for _ in range(copies):
                    due = now + faults.webhook_delay_seconds
                    heapq.heappush(scheduled, (due, next(order), hook, payload))
            while scheduled and scheduled[0][0] <= now:
                _due, _seq, hook, payload = heapq.heappop(scheduled)
                self._deliver(hook, payload)

    def _deliver(self, hook: dict[str, Any], payload: dict[str, Any]) -> None:
        try:
            answer = self._session.post(hook["url"], json=payload, timeout=5)
            outcome = "webhook_delivered" if answer.status_code < 300 else "webhook_refused"
        except requests.RequestException:
            outcome = "webhook_failed"
        with self.world.lock:
            self.world.stats[outcome] += 1

    def pause(self) -> None:
        """Refuse connections, as a dead API: close the listener and cut open connections.
        `resume()` listens again on the same host and port."""
        with self._pause_lock:
            if self._paused:
                return
            self._paused = True
            self.server.shutdown()
            self.server.server_close()
            self.server.close_connections()
            self.thread.join(timeout=10)

    def resume(self) -> None:
        """Listen again on the address pause() closed."""
        with self._pause_lock:
            if not self._paused:
                return
            server = self.server
            server.socket = socket.socket(server.address_family, server.socket_type)
            try:
                server.server_bind()  # SO_REUSEADDR: the old connections' TIME_WAIT is fine
                server.server_activate()
            except OSError:
                server.socket.close()
                raise
            self.thread = threading.Thread(
                target=server.serve_forever, name="copyai-simulator", daemon=True
            )
            self.thread.start()
            self._paused = False

    def stop(self) -> None:
        self.server.stopping.set()
        self._stop.set()
        self.ticker.join(timeout=10)
        self._session.close()
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self.thread.join(timeout=10)
