"""The running exporter: config → client → state → refresher, wired together, swapped
safely on reload, and asked by the HTTP server to refresh before each scrape."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from exporter.api.client import CopyaiClient
from exporter.api.deliveries import CREDIT_LIMIT, WebhookEvent
from exporter.api.records import Run, RunStatus
from exporter.config import Config
from exporter.metrics.collector import CopyaiCollector, HealthView, View
from exporter.metrics.exposition import RunRenderer
from exporter.metrics.telemetry import Telemetry
from exporter.replication.backend import RedisBackend, SharedRateLimiter
from exporter.replication.coordinator import Coordinator, RedisStore
from exporter.replication.work import SharedRefresher
from exporter.tracking.book import HistoryBook
from exporter.tracking.health import ApiHealth
from exporter.tracking.persistence import Loaded, MemoryStore, SqliteStore, StateStore
from exporter.tracking.refresh import Refresher, RefreshReport
from exporter.tracking.runs import RunState, RunStore

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
        run_store: RunStore | None = None,
    ):
        """`state_store` and `run_store` replace the ones the config implies (tests)."""
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
        self.store = run_store if run_store is not None else RunStore()
        self.store.sync(config.run_keys())
        self._writer_lock = threading.RLock()  # one writer of history at a time
        self.coordinator: Coordinator | None = None
        self._backend: RedisBackend | None = None
        if state_store is None and config.state.backend == "redis":
            state_store = self._start_shared(config)
        self.book = HistoryBook(state_store or open_state_store(config), wall_clock)
        self.book.writer_lock = self._writer_lock
        self.book.configure(config)
        self._seed_configured_runs(config)
        self.config = config
        self._client = self._make_client(config)
        self._refresher = self._make_refresher(config, self._client)
        self._scrape_duration = 0.0
        self._renderer = RunRenderer()
        self.registry.register(CopyaiCollector(self.view, wall_clock=wall_clock))
        self.telemetry.config_loaded(True, wall_clock())
        if self.coordinator is not None:
            self.coordinator.start()

    # --- several replicas through Redis ----------------------------------------------

    def _start_shared(self, config: Config) -> StateStore:
        assert config.state.redis is not None
        self._backend = RedisBackend(config.state.redis)
        self.coordinator = Coordinator(
            self._backend,
            config.state.redis.lease_seconds,
            apply=self._apply_observation,
            mirror=self._mirror,
            reload=self._reload_shared,
            flush=lambda: self.book.flush(),  # noqa: PLW0108 - the book comes later
            mark_all_dirty=lambda: [h.mark_dirty() for h in self.book.all()],
            writer_lock=self._writer_lock,
            health=lambda: (
                self.health.up,
                self.health.changed_at,
                self.health.last_successful_refresh,
            ),
        )
        log.info(
            "state is shared through Redis replica=%s prefix=%s",
            self._backend.replica,
            config.state.redis.key_prefix,
        )
        return RedisStore(self._backend, self.coordinator)

    def _apply_observation(self, observation: dict[str, Any]) -> None:
        """On the leader: what a replica learnt, applied to the history it writes."""
        kind = observation.get("t")
        workflow_id = observation.get("wf")
        when = float(observation.get("when") or self._wall_clock())
        if kind == "webhook":
            fields = dict(observation["event"])
            if fields.get("status") is not None:
                fields["status"] = RunStatus.parse(fields["status"])
            self._apply_webhook_locally(WebhookEvent(**fields), when)
            return
        history = self.book.get(workflow_id) if isinstance(workflow_id, str) else None
        run_id = observation.get("run_id")
        if history is None or not isinstance(run_id, str):
            return
        if kind == "run":
            status = observation.get("status")
            pinned = bool(observation.get("pinned"))
            history.observe(
                run_id,
                when=when,
                status=RunStatus.parse(status) if status is not None else None,
                # observations from replicas of an older version lack these two
                reported=bool(observation.get("reported", True)),
                fetched=bool(observation.get("fetched", False)),
                created_at=observation.get("created_at"),
                credits=observation.get("credits"),
                pinned=pinned,
            )
            if pinned:
                history.note_fetch(run_id, True, None, when)
        elif kind == "fetch_failed":
            history.note_fetch(run_id, False, observation.get("error"), when)
        elif kind == "touch":
            history.touch(run_id, when)
        elif kind == "drop":
            history.drop(run_id)

    def _mirror(
        self,
        workflow_id: str,
        meta: dict[str, Any] | None,
        runs: list[dict[str, Any]],
        removed: list[str],
    ) -> None:
        """A change the leader committed: into this replica's history (the leader's own
        history is already current) and into the listed runs' per-run series."""
        if self.coordinator is None or not self.coordinator.is_leader:
            self.book.apply_remote(workflow_id, meta, runs, removed)
        for record in runs:
            if record.get("pinned"):
                self._mirror_listed(workflow_id, record)

    def _mirror_listed(self, workflow_id: str, record: dict[str, Any]) -> None:
        status = record.get("status")
        run = None
        if status is not None:
            run = Run(
                run_id=record["run_id"],
                status=RunStatus.parse(status),
                created_at=record.get("created_at"),
                credits=record.get("credits"),
                raw_status=status,
            )
        self.store.mirror(
            (workflow_id, record["run_id"]), run, record.get("fetch_ok"), record.get("fetch_error")
        )

    def _reload_shared(self, loaded: Loaded) -> None:
        self.book.reset_from(loaded)
        for workflow_id, (_meta, runs) in loaded.items():
            for record in runs:
                if record.get("pinned"):
                    self._mirror_listed(workflow_id, record)

    def _make_client(self, config: Config) -> CopyaiClient:
        return CopyaiClient(
            config.api,
            session=self._session_factory() if self._session_factory else None,
            observer=self.telemetry,
            clock=self._clock,
            wall_clock=self._wall_clock,
            sleep=self._sleep,
            rng=self._rng,
            limiter=SharedRateLimiter(
                self._backend, config.api.max_requests_per_second, self._sleep
            )
            if self._backend is not None
            else None,
        )

    def _make_refresher(self, config: Config, client: CopyaiClient) -> Refresher:
        args = (config, client, self.store, self.health, self.book)
        clocks = {"clock": self._clock, "wall_clock": self._wall_clock}
        if self.coordinator is not None:
            return SharedRefresher(*args, **clocks, coordinator=self.coordinator)
        return Refresher(*args, **clocks)

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
        """The whole exposition as one bytes object (tests, small outputs)."""
        return b"".join(self.render_chunks())

    def render_chunks(self) -> Iterator[bytes]:
        """The whole exposition in chunks: the registry (workflow, health and own
        metrics), then the per-run families from the renderer."""
        view = self.view()
        yield generate_latest(self.registry)
        runs = itertools.chain(view.store.snapshot(), self._discovered_series(view))
        sparse = view.config.collector.sparse_status
        yield from self._renderer.render_chunks(runs, self._wall_clock(), sparse)

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
        coordinator = self.coordinator
        if coordinator is None:
            health = HealthView(self.health.up, self.health.last_successful_refresh)
            state_up, leader = self.book.backend_up, 1
        else:  # every replica shows the same, most recent verdict
            up = coordinator.shared_up if coordinator.shared_up is not None else self.health.up
            refresh = max(
                (t for t in (coordinator.shared_refresh, self.health.last_successful_refresh) if t),
                default=None,
            )
            health = HealthView(up, refresh)
            state_up = self._backend.up if self._backend is not None else 0
            leader = int(coordinator.is_leader)
        with self._lock:
            return View(
                self.config,
                self.store,
                health,
                self._scrape_duration,
                self.book,
                state_up=state_up,
                leader=leader,
            )

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
        """A delivery updates state at once; polling still reconciles it later. With
        shared state it goes to the leader (StateError if Redis cannot take it)."""
        when = self._wall_clock()
        if self.coordinator is not None:
            self.coordinator.submit(
                [{"t": "webhook", "event": dataclasses.asdict(event), "when": when}]
            )
            return
        self._apply_webhook_locally(event, when)

    def _apply_webhook_locally(self, event: WebhookEvent, when: float) -> None:
        if event.workflow_id and self.book.get(event.workflow_id) is None:
            webhooks = self.config.webhooks
            if webhooks is not None and webhooks.accept_unknown_workflows:
                self.adopt_workflow(event.workflow_id)
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
