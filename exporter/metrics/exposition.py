"""Renders the per-run families straight to exposition text, reusing each run's lines
while the run does not change.

Per-run series are most of the output (seven status series per run) and almost all of
them describe finished runs that can never change again. Building metric families and
re-formatting every label and value on each scrape made rendering the bottleneck
(benchmarks/); here a run's lines are formatted once per change, and only its age, which
moves with the clock, is formatted on every scrape. IDs are plain tokens
([A-Za-z0-9_-], checked by config and model), so label values need no escaping.

Output for one run::

    copyai_workflow_run_status{workflow_id="WCFG-1",run_id="WRUN-1",status="PROCESSING"} 1
    copyai_workflow_run_credits{workflow_id="WCFG-1",run_id="WRUN-1"} 9001.0
    copyai_workflow_run_created_timestamp_seconds{workflow_id="WCFG-1",run_id="WRUN-1"} 1695839087.0
    copyai_workflow_run_age_seconds{workflow_id="WCFG-1",run_id="WRUN-1"} 42.0
    copyai_workflow_run_fetch_success{workflow_id="WCFG-1",run_id="WRUN-1"} 1
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.api.records import ALL_STATUSES
from exporter.tracking.runs import RunState

CHUNK_BYTES = 256 * 1024
CACHE_NOTE = "Active runs are cached for up to collector.refresh_interval_seconds."
STATUS, CREDITS, CREATED, AGE, FETCH = range(5)
FAMILIES: tuple[tuple[str, str], ...] = (
    (
        "copyai_workflow_run_status",
        "Current status of a run: 1 for the status the API last reported, 0 for the others "
        "(UNKNOWN = missing or undocumented). Absent until the run has been fetched once. "
        + CACHE_NOTE,
    ),
    (
        "copyai_workflow_run_credits",
        "Credits used by the run, as the API's `credits` field reports them; absent while "
        "the API reports none. " + CACHE_NOTE,
    ),
    (
        "copyai_workflow_run_created_timestamp_seconds",
        "When the run was created (the API's `createdAt`), as Unix time.",
    ),
    ("copyai_workflow_run_age_seconds", "Seconds from the run's `createdAt` to this scrape."),
    (
        "copyai_workflow_run_fetch_success",
        "1 if the last fetch of the run from the API succeeded, 0 if it failed (the run's "
        "other series then keep their last known values).",
    ),
)
HEADERS = tuple(f"# HELP {name} {text}\n# TYPE {name} gauge\n".encode() for name, text in FAMILIES)


_PLAIN = (GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _render(family: Metric) -> bytes:
    """One family built by a collector (gauges, counters, histograms of valid names,
    without timestamps or exemplars) in the text format, the very bytes generate_latest
    writes, at a third of its CPU: 1,000 workflows are some 60,000 lines a scrape."""
    name = family.name + "_total" if family.type == "counter" else family.name
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {doc}\n# TYPE {name} {_TYPES[family.type]}\n"]
    append = lines.append
    for sample in family.samples:
        labels = sample.labels
        if labels:
            text = ",".join([f'{key}="{_escape(value)}"' for key, value in sorted(labels.items())])
            append(f"{sample.name}{{{text}}} {floatToGoString(sample.value)}\n")
        else:
            append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(lines).encode()


class _OneFamily(Collector):
    def __init__(self, family: object):
        self._family = family

    def collect(self):  # type: ignore[no-untyped-def]
        return [self._family]


def registry_chunks(registry: Collector) -> Iterator[bytes]:
    """The registry's text format (prometheus_client's, unchanged) rendered one family at
    a time, in chunks of about CHUNK_BYTES: the collector fills each family only when
    its turn comes, so with 1,000 workflows a scrape holds one family's samples and its
    text, not every family's at once (a third of the peak memory of generate_latest)."""
    # the client library's own metrics (_created samples and the like) go through its
    # generate_latest
    return _chunks(
        _render(family) if type(family) in _PLAIN else generate_latest(_OneFamily(family))
        for family in registry.collect()
    )


def _chunks(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Pieces of text joined into chunks of about CHUNK_BYTES, made as they are read."""
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


class _Lines:
    """One run's formatted lines, valid while its Run object and fetch outcome hold."""

    __slots__ = ("age_prefix", "created_at", "fetch_ok", "parts", "run", "sparse")

    def __init__(
        self,
        state: RunState,
        sparse: bool,
        parts: list[bytes],
        age_prefix: bytes | None,
    ):
        self.run = state.run
        self.fetch_ok = state.fetch_ok
        self.sparse = sparse
        self.parts = parts
        self.age_prefix = age_prefix
        self.created_at = state.run.created_at if state.run is not None else None

    def valid_for(self, state: RunState, sparse: bool) -> bool:
        # identity first: a finished run keeps the very same Run object forever
        return (
            (self.run is state.run or self.run == state.run)
            and self.fetch_ok == state.fetch_ok
            and self.sparse == sparse
        )


class RunRenderer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], _Lines] = {}

    def render_chunks(self, runs: Iterable[RunState], now: float, sparse: bool) -> Iterator[bytes]:
        """The same as chunks of about CHUNK_BYTES: a scrape of 10,000 runs (17 MB of
        text) never holds a second copy of the whole answer."""
        columns = self._columns(runs, now, sparse)
        yield from _chunks(
            piece
            for header, column in zip(HEADERS, columns, strict=True)
            for piece in (header, *column)
        )

    def _columns(self, runs: Iterable[RunState], now: float, sparse: bool) -> list[list[bytes]]:
        columns: list[list[bytes]] = [[] for _ in FAMILIES]
        status_col, credits_col, created_col, age_col, fetch_col = columns
        with self._lock:
            cache = self._cache
            fresh: dict[tuple[str, str], _Lines] = {}
            for state in runs:
                key = (state.workflow_id, state.run_id)
                lines = cache.get(key)
                if lines is None or not lines.valid_for(state, sparse):
                    lines = _format(state, sparse)
                fresh[key] = lines
                parts = lines.parts
                if parts[STATUS]:
                    status_col.append(parts[STATUS])
                if parts[CREDITS]:
                    credits_col.append(parts[CREDITS])
                if parts[CREATED]:
                    created_col.append(parts[CREATED])
                if parts[FETCH]:
                    fetch_col.append(parts[FETCH])
                if lines.age_prefix is not None:
                    age = now - lines.created_at  # type: ignore[operator]
                    age_col.append(b"%s%r\n" % (lines.age_prefix, age if age > 0 else 0.0))
            self._cache = fresh  # runs no longer listed leave the cache with their series
        return columns


def _format(state: RunState, sparse: bool) -> _Lines:
    labels = f'workflow_id="{state.workflow_id}",run_id="{state.run_id}"'
    parts = [b""] * len(FAMILIES)
    run = state.run
    if run is not None:
        name = FAMILIES[STATUS][0]
        if sparse:
            parts[STATUS] = f'{name}{{{labels},status="{run.status.value}"}} 1\n'.encode()
        else:
            parts[STATUS] = "".join(
                f'{name}{{{labels},status="{s.value}"}} {1 if s is run.status else 0}\n'
                for s in ALL_STATUSES
            ).encode()
        if run.credits is not None:
            parts[CREDITS] = f"{FAMILIES[CREDITS][0]}{{{labels}}} {float(run.credits)!r}\n".encode()
        if run.created_at is not None:
            parts[CREATED] = (
                f"{FAMILIES[CREATED][0]}{{{labels}}} {float(run.created_at)!r}\n".encode()
            )
    if state.fetch_ok is not None:
        parts[FETCH] = f"{FAMILIES[FETCH][0]}{{{labels}}} {1 if state.fetch_ok else 0}\n".encode()
    age_prefix = None
    if run is not None and run.created_at is not None:
        age_prefix = f"{FAMILIES[AGE][0]}{{{labels}}} ".encode()
    return _Lines(state, sparse, parts, age_prefix)
