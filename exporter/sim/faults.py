"""What goes wrong in the simulated API, settable while it runs: latency, 5xx, 429s,
refused keys, dropped connections, one `mode` of misbehaving answers (`FAULT_MODES`),
and the switches for every documented answer shape and delivery habit."""

from __future__ import annotations

import itertools
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

HTML_ERROR = (
    "<html><head><title>502 Bad Gateway</title></head><body><center>"
    "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


# Faults.mode: how API requests are answered (control endpoints never change)
FAULT_MODES = (
    "",  # normally
    "hang",  # read the request, never answer (until the client hangs up or stop())
    "slow_body",  # status line and headers at once, then the body a byte every 0.5 s
    "truncated_json",  # the normal answer with its body cut in half
    "wrong_shape",  # 200, valid JSON of the wrong shape
    "wrong_types",  # 200, a run record whose every field has the wrong type
    "huge_body",  # 200, a 50 MB body streamed without Content-Length
    "gzip_bomb",  # 200, ~50 KB of gzip inflating to ~50 MB
    "redirect",  # 302 to Faults.redirect_to
    "flap",  # per request, in turn: the next of Faults.flap_statuses, the normal answer
)


SLOW_BODY_BYTE_SECONDS = 0.5


HUGE_BODY_BYTES = 50 * 1024 * 1024


HUGE_BODY_CHUNK = 64 * 1024


GZIP_BOMB_BYTES = 50 * 1024 * 1024


WRONG_SHAPE = {"status": "success", "data": [1, 2]}


def wrong_types_record() -> dict[str, Any]:
    """A run record with every field of the wrong type."""
    return {
        "id": 12345,
        "status": ["PROCESSING"],
        "createdAt": 1700000000,
        "credits": {"used": 3},
        "metadata": "not an object",
    }


_gzip_bomb: bytes | None = None


_gzip_bomb_lock = threading.Lock()


def gzip_bomb() -> bytes:
    """A gzip body inflating to a ~50 MB JSON document (a string of '0's); built once,
    a MiB at a time, so building it costs no more memory than the result (~50 KB)."""
    global _gzip_bomb  # noqa: PLW0603 - a cache of an immutable value
    with _gzip_bomb_lock:
        if _gzip_bomb is None:
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 16 + 15: gzip wrapper
            parts = [compressor.compress(b'{"status": "success", "data": "')]
            block = b"0" * (1024 * 1024)
            for _ in range(GZIP_BOMB_BYTES // len(block)):
                parts.append(compressor.compress(block))
            parts.append(compressor.compress(b'"}'))
            parts.append(compressor.flush())
            _gzip_bomb = b"".join(parts)
        return _gzip_bomb


WEBHOOK_SHAPES = ("mixed", "documented", "record")


@dataclass
class Faults:
    """What goes wrong, settable while the simulator runs."""

    latency_seconds: float = 0.0
    error_rate: float = 0.0  # share of API requests answered with error_status
    error_status: int = 502
    error_html: bool = True  # proxies answer 5xx with HTML
    rate_limit_per_second: float = 0.0  # 0 = unlimited; above it: 429
    retry_after: str = "1"  # seconds, or an HTTP date
    refuse_key: bool = False  # answer 401 to every API request
    drop_connections: bool = False  # close the connection without answering
    not_found: list[str] = field(default_factory=list)  # run ids answered 404
    # behaviour, not faults, but settable the same way
    spawn_per_minute: float = 0.0  # new runs per workflow and minute (0 = none)
    spawn_fail_rate: float = 0.1  # share of spawned runs that end FAILED
    list_omit_status_every: int = 0  # every Nth item of a list page has no status
    list_order: str = "newest_first"  # or oldest_first, or shuffled (no order at all)
    mode: str = ""  # one of FAULT_MODES
    redirect_to: str = ""  # mode "redirect": the Location answered; "{path}" = the request's
    flap_statuses: list[int] = field(default_factory=lambda: [500, 502, 503])  # mode "flap"
    # documented shapes and delivery habits of the real API (scenario switches)
    api_lag_seconds: float = 0.0  # GET and list show runs as they were this long ago
    omit_status: bool = False  # GET and list records carry no status at all
    record_extras: bool = False  # records carry workflowRunId, workflowId, toolKey, error
    list_total_extra: int = 0  # list `total` above the runs it really has
    webhook_empty_workflow_id: bool = False  # workspace-wide: workflowId "" (not null)
    webhook_delete_empty: bool = False  # DELETE /webhook/{id}: 202 with no body ({} else)
    webhook_delay_seconds: float = 0.0  # deliveries leave this late
    webhook_duplicate: bool = False  # every delivery is made twice
    webhook_reorder: bool = False  # a run's `started` is delivered after its end
    # a run started through the API announces `started` when it first runs (PROCESSING or
    # RETRYING), not at once when it is created
    webhook_started_when_running: bool = False
    # run deliveries: "mixed" (by run), "documented" (no createdAt, no status) or "record"
    webhook_shape: str = "mixed"

    def __post_init__(self) -> None:
        self._flap_turns = itertools.count()  # not a field: not settable, not listed

    def update(self, changes: Mapping[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown fault {name!r}")
        mode = changes.get("mode", self.mode)
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(map(repr, FAULT_MODES))}")
        statuses = changes.get("flap_statuses", self.flap_statuses)
        if not statuses or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ValueError("flap_statuses must be a non-empty list of HTTP status codes")
        if changes.get("webhook_shape", self.webhook_shape) not in WEBHOOK_SHAPES:
            raise ValueError(f"webhook_shape must be one of {', '.join(WEBHOOK_SHAPES)}")
        if mode == "gzip_bomb":
            gzip_bomb()  # built now, so the first answer is not late by the building
        for name, value in changes.items():
            setattr(self, name, value)
        if "mode" in changes or "flap_statuses" in changes:
            self._flap_turns = itertools.count()  # each flap starts with an error

    def next_flap_status(self) -> int | None:
        """Mode "flap": the status to answer this request with; None = answer normally."""
        turn = next(self._flap_turns)  # atomic under the GIL
        if turn % 2:
            return None
        statuses = self.flap_statuses
        return statuses[(turn // 2) % len(statuses)]
