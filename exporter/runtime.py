"""The running exporter: config → client → state → refresher, wired together, swapped
safely on reload, and asked by the HTTP server to refresh before each scrape."""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import requests
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from exporter.api.client import CopyaiClient
from exporter.api.deliveries import WebhookEvent
from exporter.api.records import Run
from exporter.config import Config, ConfigError, load_config_file
from exporter.logs import REDACTOR
from exporter.metrics.collector import CopyaiCollector, HealthView, View
from exporter.metrics.exposition import RunRenderer, registry_chunks
from exporter.metrics.telemetry import Telemetry, budget_ratio
from exporter.replication.backend import RedisBackend, SharedRateLimiter
from exporter.replication.coordinator import Coordinator, RedisStore
from exporter.replication.work import RedisReplication
from exporter.tracking.book import HistoryBook
from exporter.tracking.health import ApiHealth
from exporter.tracking.journal import Journal
from exporter.tracking.observations import Applier, Delivered
from exporter.tracking.persistence import MemoryStore, SqliteStore, StateStore
from exporter.tracking.refresh import Refresher, RefreshReport, Replication, Standalone
from exporter.tracking.runs import RunState, RunStore

log = logging.getLogger(__name__)


def protect_secrets(config: Config) -> None:
    """Every secret of a loaded config joins the log redaction (never logged, even in a
    traceback)."""
    REDACTOR.add(config.api.api_key.reveal())
    if config.webhooks is not None:
        REDACTOR.add(config.webhooks.token.reveal())


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
        self.telemetry = Telemetry(self.registry, clock)
        self.journal = Journal(wall_clock())  # recent errors, listings, deliveries, reloads
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.health = ApiHealth(wall_clock=wall_clock, clock=clock)
        self.store = run_store if run_store is not None else RunStore()
        self.store.sync(config.run_keys())
        # Lock order (CODING.md): the reload lock, then self._lock, then the writer
        # lock, then a workflow history's lock, then the book's and the store's own.
        self._reload_lock = threading.Lock()  # one reload at a time
        self._writer_lock = threading.RLock()  # one writer of workflow history at a time
        self.coordinator: Coordinator | None = None
        self._backend: RedisBackend | None = None
        if state_store is None and config.state.backend == "redis":
            state_store = self._redis_store(config)
        self.book = HistoryBook(
            state_store or open_state_store(config), wall_clock, writer_lock=self._writer_lock
        )
        self.book.configure(config)
        self._seed_configured_runs(config)
        self.config = config
        self.applier = Applier(
            self.book,
            self.store,
            clock=clock,
            accept_unknown_workflows=lambda: bool(
                self.config.webhooks and self.config.webhooks.accept_unknown_workflows
            ),
        )
        self.replication: Replication = Standalone(self.applier)
        if self.coordinator is not None and self._backend is not None:
            self.replication = RedisReplication(self._backend, self.coordinator)
            self.coordinator.start(self.book, self.store, self.applier)
        self._client = self._make_client(config)
        self._refresher = self._make_refresher(config, self._client)
        self._scrape_duration = 0.0
        self._renderer = RunRenderer()
        self.registry.register(CopyaiCollector(self.view))
        self.telemetry.config_loaded(True, wall_clock())

    def _redis_store(self, config: Config) -> StateStore:
        """Several replicas through Redis: the store the book reads is the coordinator's."""
        assert config.state.redis is not None
        self._backend = RedisBackend(config.state.redis)
        self.coordinator = Coordinator(
            self._backend,
            config.state.redis.lease_seconds,
            health=self.health,
            writer_lock=self._writer_lock,
        )
        log.info(
            "state is shared through Redis replica=%s prefix=%s",
            self._backend.replica,
            config.state.redis.key_prefix,
        )
        return RedisStore(self._backend, self.coordinator)

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
        return Refresher(
            config,
            client,
            self.store,
            self.health,
            self.book,
            applier=self.applier,
            replication=self.replication,
            clock=self._clock,
            wall_clock=self._wall_clock,
            journal=self.journal,
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
        """The whole exposition as one bytes object (tests, small outputs)."""
        return b"".join(self.render_chunks())

    def render_chunks(self) -> Iterator[bytes]:
        """The whole exposition in chunks: the registry (workflow, health and own
        metrics), then the per-run families from the renderer."""
        view = self.view()
        yield from registry_chunks(self.registry)
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
        """A consistent picture for one scrape."""
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
                now=self._wall_clock(),
                state_up=state_up,
                leader=leader,
                backlog=self._refresher.backlog,
                budget_used=budget_ratio(
                    self.telemetry.recent.summary().requests_last_minute,
                    self.config.api.max_requests_per_second,
                ),
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

    def reload(
        self,
        path: str | os.PathLike[str],
        also: Callable[[], None] = lambda: None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Read the config file at `path` again (and whatever `also` reloads: the web
        config) and switch to it. A config with problems changes nothing: they are
        logged, copyai_config_last_reload_successful goes to 0, and (False, the problems)
        is returned; SIGHUP and /-/reload both come here."""
        with self._reload_lock:
            try:
                new = load_config_file(path, env=env)
                also()  # certificates and users rotate without a restart
            except ConfigError as exc:
                log.error("configuration reload failed; keeping the running one\n%s", exc.render())
                self.journal.config_loaded(self._wall_clock(), exc.source, False, exc.problems)
                self.config_failed()
                return False, exc.render()
            except Exception:  # a bug must not take the running exporter down with it
                log.exception("configuration reload failed unexpectedly; keeping the running one")
                self._note_unexpected_reload_failure(path)
                self.config_failed()
                return False, "configuration reload failed; see the exporter's log"
            protect_secrets(new)
            old = self.config.webhooks
            if (new.webhooks is None) != (old is None) or (
                new.webhooks and old and new.webhooks.listen_address != old.listen_address
            ):
                log.warning("webhooks.listen_address changes take effect at the next restart")
            self.apply_config(new)
            self.journal.config_loaded(self._wall_clock(), str(path), True)
            return True, "configuration reloaded"

    def _note_unexpected_reload_failure(self, path: str | os.PathLike[str]) -> None:
        """For the status page: a reload that failed on a bug, not on the config."""
        problem = "the reload failed unexpectedly (a bug); see the exporter's log"
        self.journal.config_loaded(self._wall_clock(), str(path), False, (problem,))

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
        return self.book.adopt(workflow_id)

    def apply_webhook(self, event: WebhookEvent) -> None:
        """A delivery updates state at once; polling still reconciles it later. With
        shared state it goes to the leader (StateError if Redis cannot take it)."""
        self.replication.submit(Delivered(event, self._wall_clock()))
        if self.coordinator is None:
            self.book.flush()
        self.journal.delivered(event.workflow_id, self._wall_clock())

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
