"""The running exporter: config → client → state → refresher, wired together, swapped
safely on reload, and asked by the HTTP server to refresh before each scrape."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from exporter.client import CopyaiClient
from exporter.collector import CopyaiCollector, View
from exporter.config import Config
from exporter.exposition import RunRenderer
from exporter.history import HistoryBook
from exporter.model import Run
from exporter.persistence import MemoryStore, SqliteStore, StateStore
from exporter.refresh import Refresher, RefreshReport
from exporter.state import ApiHealth, RunState, RunStore
from exporter.telemetry import Telemetry
from exporter.webhooks import CREDIT_LIMIT, WebhookEvent

log = logging.getLogger(__name__)


def open_state_store(config: Config) -> StateStore:
    """The configured store; raises persistence.StateError if it cannot be used."""
    if config.state.path:
        store = SqliteStore(config.state.path)
        log.info("workflow history is kept in %s", config.state.path)
        return store
    log.warning(
        "no state.path configured: workflow history (counters, durations, last success, "
        "discovered runs) is kept in memory and starts afresh after a restart"
    )
    return MemoryStore()


class Exporter:
    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        session_factory: Callable[[], requests.Session] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        process_metrics: bool = True,
        state_store: StateStore | None = None,
    ):
        self._session_factory = session_factory
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng
        self._lock = threading.Lock()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.telemetry = Telemetry(self.registry)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.health = ApiHealth(wall_clock=wall_clock, clock=clock)
        self.store = RunStore(config.run_keys())
        self.book = HistoryBook(state_store or open_state_store(config), wall_clock)
        self.book.configure(config)
        self._seed_configured_runs(config)
        self.config = config
        self._client = self._make_client(config)
        self._refresher = self._make_refresher(config, self._client)
        self._scrape_duration = 0.0
        self._renderer = RunRenderer()
        self.registry.register(CopyaiCollector(self.view, wall_clock=wall_clock))
        self.telemetry.config_loaded(True, wall_clock())

    def _make_client(self, config: Config) -> CopyaiClient:
        return CopyaiClient(
            config.api,
            session=self._session_factory() if self._session_factory else None,
            observer=self.telemetry,
            clock=self._clock,
            wall_clock=self._wall_clock,
            sleep=self._sleep,
            rng=self._rng,
        )

    def _make_refresher(self, config: Config, client: CopyaiClient) -> Refresher:
        return Refresher(
            config,
            client,
            self.store,
            self.health,
            self.book,
            clock=self._clock,
            wall_clock=self._wall_clock,
        )

    def _seed_configured_runs(self, config: Config) -> None:
        """Configured runs known from persisted history (finished ones above all) need
        no fetch after a restart."""
        for workflow in config.workflows:
            history = self.book.get(workflow.id)
            if history is None:
                continue
            with history.lock:
                known = [history.runs.get(run_id) for run_id in workflow.runs]
            for tracked in known:
                if tracked is not None and tracked.status is not None:
                    run = Run(
                        run_id=tracked.run_id,
                        status=tracked.status,
                        created_at=tracked.created_at,
                        credits=tracked.credits,
                        raw_status=tracked.status.value,
                    )
                    self.store.seed((workflow.id, tracked.run_id), run)

    @property
    def client(self) -> CopyaiClient:
        with self._lock:
            return self._client

    def render(self) -> bytes:
        """The whole exposition: the registry (workflow, health and own metrics), then
        the per-run families from the renderer."""
        view = self.view()
        head = generate_latest(self.registry)
        runs = itertools.chain(view.store.snapshot(), self._discovered_series(view))
        sparse = view.config.collector.sparse_status
        return head + self._renderer.render(runs, self._wall_clock(), sparse)

    def _discovered_series(self, view: View) -> Iterator[RunState]:
        """Per-run series for discovered runs where asked (run_series): active, capped."""
        for workflow in view.config.workflows:
            if not (workflow.discover and workflow.discovery.run_series):
                continue
            history = view.book.get(workflow.id)
            if history is None:
                continue
            snap = history.snapshot(run_series_limit=workflow.discovery.max_run_series)
            for tracked in snap.active_runs:
                run = Run(tracked.run_id, tracked.status, tracked.created_at, tracked.credits)
                yield RunState(workflow.id, tracked.run_id, run=run)

    def view(self) -> View:
        with self._lock:
            return View(self.config, self.store, self.health, self._scrape_duration, self.book)

    def refresh(self, deadline: float) -> RefreshReport:
        """Bring state up to date as far as `deadline` (monotonic) allows."""
        with self._lock:
            refresher = self._refresher
        started = self._clock()
        report = refresher.refresh(deadline)
        with self._lock:
            self._scrape_duration = self._clock() - started
        if not report.completed:
            log.info(
                "scrape deadline reached; answering with what is known "
                "started=%d waiting=%d (they finish in the background)",
                report.started,
                report.waited,
            )
        return report

    def apply_config(self, config: Config) -> None:
        """Switch to a new, already validated config. Runs still configured keep what is
        known of them; removed runs disappear from the output at the next scrape."""
        with self._lock:
            old_client, old_refresher = self._client, self._refresher
            if config.api != self.config.api or config.api.api_key != self.config.api.api_key:
                if config.api.base_url != self.config.api.base_url:
                    self.store.sync(())  # another API: nothing we know applies
                self._client = self._make_client(config)
            self.store.sync(config.run_keys())
            if config.state != self.config.state:
                log.warning("state.path changes take effect at the next restart")
            self.book.configure(config)
            self._seed_configured_runs(config)
            self.config = config
            self._refresher = self._make_refresher(config, self._client)
        client_replaced = old_client is not self._client

        def retire() -> None:
            # fetches already running finish with the old session before it is freed
            old_refresher.close(wait=True)
            if client_replaced:
                old_client.close()

        threading.Thread(target=retire, name="copyai-retire", daemon=True).start()
        self.telemetry.config_loaded(True, self._wall_clock())
        log.info(
            "configuration applied workflows=%d runs=%d",
            len(config.workflows),
            len(self.store),
        )

    # --- webhooks (the receiver's WebhookSink) ----------------------------------------

    def known_workflow(self, workflow_id: str) -> bool:
        return self.book.get(workflow_id) is not None

    def workflow_of_run(self, run_id: str) -> str | None:
        for workflow in self.config.workflows:  # configured, even if never fetched yet
            if run_id in workflow.runs:
                return workflow.id
        return self.book.workflow_of_run(run_id)

    def adopt_workflow(self, workflow_id: str) -> bool:
        return self.book.adopt(workflow_id, self.config.collector.duration_buckets_seconds)

    def apply_webhook(self, event: WebhookEvent) -> None:
        """A delivery updates state at once; polling still reconciles it later."""
        when = self._wall_clock()
        history = self.book.get(event.workflow_id) if event.workflow_id else None
        if event.event_type == CREDIT_LIMIT:
            if history is not None:
                history.credit_limit_reached(when)
            else:
                self.book.workspace_credit_limit_reached(when)
        elif history is not None and event.run_id is not None:
            key = (history.workflow_id, event.run_id)
            configured = self.store.get(key) is not None
            history.observe(
                event.run_id,
                when=when,
                status=event.status,
                created_at=event.created_at,
                credits=event.credits,
                pinned=configured,
            )
            if configured and event.status is not None:
                run = Run(
                    run_id=event.run_id,
                    status=event.status,
                    created_at=event.created_at,
                    credits=event.credits,
                    raw_status=event.status.value,
                )
                self.store.record_observation(key, run, self._clock())
        self.book.flush()

    def webhook_rejected(self, reason: str) -> None:
        self.telemetry.webhook_rejected.labels(reason).inc()

    def webhook_accepted(self, event_type: str) -> None:
        self.telemetry.webhook_events.labels(event_type).inc()

    def config_failed(self) -> None:
        self.telemetry.config_loaded(False)

    def close(self) -> None:
        with self._lock:
            self._refresher.close(wait=False)
            self._client.close()
        self.book.close()
