"""Decides what to fetch on a scrape and fetches it concurrently, at most once per run
however many scrapes ask, and returns when done or when the scrape's deadline comes.

Work started for a scrape that ran out of time is not cancelled: it finishes in the
background and the next scrape sees the result.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.client import ApiError, CopyaiClient, ErrorKind
from exporter.config import Config
from exporter.state import ApiHealth, Batch, RunKey, RunStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshReport:
    started: int  # fetches this call started
    waited: int  # fetches this call waited for (its own and other scrapes')
    completed: bool  # False if the deadline came first


class Refresher:
    def __init__(
        self,
        config: Config,
        client: CopyaiClient,
        store: RunStore,
        health: ApiHealth,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._config = config
        self._client = client
        self._store = store
        self._health = health
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.api.max_concurrency, thread_name_prefix="copyai-fetch"
        )
        self._lock = threading.Lock()
        self._in_flight: dict[RunKey, concurrent.futures.Future[None]] = {}
        self._probe: concurrent.futures.Future[None] | None = None
        self._probe_started_at = -math.inf
        self._closed = False

    def refresh(self, deadline: float) -> RefreshReport:
        """Fetch what is due; wait until it is all in or `deadline` (monotonic) passes."""
        interval = self._config.collector.refresh_interval_seconds
        now = self._clock()
        started: list[RunKey] = []
        waiting: list[concurrent.futures.Future[None]] = []
        with self._lock:
            if self._closed:
                return RefreshReport(0, 0, True)
            for state in self._store.snapshot():
                future = self._in_flight.get(state.key)
                if future is not None:
                    waiting.append(future)
                elif state.refresh_due(now, interval):
                    started.append(state.key)
            if started:
                batch = self._health.batch(len(started))
                for key in started:
                    future = self._executor.submit(self._fetch_run, key, batch)
                    self._in_flight[key] = future
                    waiting.append(future)
            elif self._probe_due(now):
                self._probe_started_at = now
                self._probe = self._executor.submit(self._run_probe, self._health.batch(1))
            if self._probe is not None and not self._probe.done():
                waiting.append(self._probe)
        if not waiting:
            return RefreshReport(0, 0, True)
        _, not_done = concurrent.futures.wait(waiting, timeout=max(0.0, deadline - self._clock()))
        return RefreshReport(len(started), len(waiting), completed=not not_done)

    def _probe_due(self, now: float) -> bool:
        """With nothing else to fetch, check now and then that the API still takes the key,
        so `copyai_up` stays true to its meaning when every run is finished and cached."""
        every = self._config.collector.up_check_interval_seconds
        if every <= 0 or not self._config.workflows:
            return False
        if self._probe is not None and not self._probe.done():
            return False
        return now - max(self._health.last_answer_at, self._probe_started_at) >= every

    def _fetch_run(self, key: RunKey, batch: Batch) -> None:
        error: ApiError | None = None
        try:
            run = self._client.get_run(*key)
        except ApiError as exc:
            error = exc
            self._store.record_failure(key, exc, self._clock())
        except Exception as exc:  # a bug must cost one run's freshness, not the exporter
            log.exception("unexpected error fetching workflow_id=%s run_id=%s", *key)
            error = ApiError(ErrorKind.BAD_RESPONSE, f"internal error: {type(exc).__name__}")
            self._store.record_failure(key, error, self._clock())
        else:
            self._store.record_success(key, run, self._clock())
        finally:
            with self._lock:
                self._in_flight.pop(key, None)
        batch.record(error)

    def _run_probe(self, batch: Batch) -> None:
        workflow_id = self._config.workflows[0].id
        try:
            self._client.list_runs(workflow_id, page=1, size=1)
        except ApiError as exc:
            batch.record(exc)
            log.debug("API check failed kind=%s error=%r", exc.kind, str(exc))
        except Exception:
            log.exception("unexpected error checking the API")
            batch.record(ApiError(ErrorKind.BAD_RESPONSE, "internal error"))
        else:
            batch.record(None)

    def close(self, wait: bool = False) -> None:
        """Stop starting work and drop queued fetches; with wait, return once the
        fetches already running have finished."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)
