"""Decides what to fetch on a scrape and fetches it concurrently: configured runs that
are due, a discovery cycle for each `discover: true` workflow that is due, and single
tracked runs that only a fetch of their own can refresh. Each piece of work runs once
however many scrapes ask for it; a scrape waits for it until its deadline.

Work started for a scrape that ran out of time is not cancelled: it finishes in the
background and the next scrape sees the result.

The same refresher serves one exporter and each of several replicas; a `Replication`
says which part of the work is this one's (per-run leases, discovery on the leader)
and where what it learns goes (`Standalone`: applied here at once).

Longer than 500 lines because planning, single-flight bookkeeping, fault isolation
and the tasks share one lock and one in-flight map; split, the invariant "nothing stays
in flight after its future finished" would span modules.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.api.client import CopyaiClient
from exporter.api.errors import ApiError, ErrorKind
from exporter.api.records import RunPage
from exporter.config import Config, WorkflowConfig
from exporter.tracking.book import HistoryBook
from exporter.tracking.discovery import DiscoveryCycle
from exporter.tracking.health import ApiHealth, Batch
from exporter.tracking.journal import Journal
from exporter.tracking.observations import (
    Applier,
    FetchFailed,
    FetchTried,
    Observation,
    RunGone,
    RunSeen,
)
from exporter.tracking.runs import RunKey, RunStore, due_age, silent_backoff

log = logging.getLogger(__name__)

# Discovery coordinators mostly wait for page fetches, which run in the fetch pool.
MAX_COORDINATORS = 4
GROUP_LENGTH = 16  # runs one queued fetch task handles, at most, per wave
# in-flight keys: configured runs are (workflow_id, run_id); these objects cannot be ids
_DISCOVER, _TRACKED = object(), object()
# what a task returns: the error of its request (None: answered), or RELEASE for a task
# that made no request of its own (a discovery coordinator; its page fetches record theirs)
RELEASE = object()
Task = Callable[[Batch], object]
MAX_FAULTS_LOGGED = 10_000  # (piece of work, message) pairs remembered for log-once
# How long a scrape waits when what is due cannot be fetched before its deadline anyway
# (more than the rate limit allows): it answers with what is known, the work goes on.
FAST_ANSWER_SECONDS = 1.0


@dataclass(slots=True)
class _Candidate:
    """A piece of work that is due: what it refreshes and how stale that is."""

    key: Hashable
    lease: str  # the per-run lease name replicas claim ("" for a discovery cycle)
    ttl: float  # how long the lease holds
    task: Task
    staleness: float  # seconds since its data was last looked at (inf: never)
    order: int  # among equally stale: configured runs, discovery, then tracked runs


@dataclass(frozen=True)
class RefreshReport:
    started: int  # pieces of work this call started
    waited: int  # pieces of work this call waited for (its own and other scrapes')
    completed: bool  # False if the deadline came first


class Replication(Protocol):
    """Which work is this exporter's, and where what it learns goes."""

    @property
    def leads(self) -> bool:
        """True where the history is written: discovery and the API check run here."""
        ...

    def sync(self) -> None:
        """Before planning a refresh: catch up with what others have done."""

    def claim(self, names: list[str], ttls: list[float]) -> list[bool]:
        """Which of these pieces of work this exporter takes (each for `ttl` seconds)."""
        ...

    def submit(self, message: Observation) -> None:
        """What a fetch taught: to the history, wherever it is written."""


class Standalone:
    """One exporter: every piece of work is its own, observations are applied at once."""

    leads = True

    def __init__(self, applier: Applier):
        self._applier = applier

    def sync(self) -> None:
        pass

    def claim(self, names: list[str], ttls: list[float]) -> list[bool]:
        return [True] * len(names)

    def submit(self, message: Observation) -> None:
        self._applier.apply(message)


class Refresher:
    def __init__(
        self,
        config: Config,
        client: CopyaiClient,
        store: RunStore,
        health: ApiHealth,
        book: HistoryBook,
        *,
        applier: Applier,
        replication: Replication | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ):
        """`journal` keeps the recent API errors and listings for the status page."""
        self._journal = journal if journal is not None else Journal(wall_clock())
        self._config = config
        self._attributes = config.attribution.keys  # the values each look extracts
        self._client = client
        self._store = store
        self._health = health
        self._book = book
        self._applier = applier
        self._replication = replication or Standalone(applier)
        self._clock = clock
        self._wall_clock = wall_clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.api.max_concurrency, thread_name_prefix="copyai-fetch"
        )
        self._coordinators = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_COORDINATORS, thread_name_prefix="copyai-discover"
        )
        self._lock = threading.Lock()
        self._in_flight: dict[Hashable, concurrent.futures.Future[None]] = {}
        self._probe: concurrent.futures.Future[None] | None = None
        self._probe_started_at = -math.inf
        self._cycle_attempted: dict[str, float] = {}  # so a failing listing is not hammered
        self._discovery_errors: dict[str, str | None] = {}
        self._faults_logged: set[tuple[Hashable, str, str]] = set()
        self._queued = 0  # per-run fetches submitted and not started
        self._running = 0  # per-run fetches running
        self._deferred = 0  # due at the last plan, left for a later one (over budget)
        self._cycle_cost: dict[str, float] = {}  # list pages the last cycle of a workflow took
        self._closed = False

    # --- the scrape's entry point ----------------------------------------------------

    def refresh(self, deadline: float) -> RefreshReport:
        """Start what is due, within the API budget; wait until it is all in or
        `deadline` (monotonic) passes, or only briefly when it cannot be in by then."""
        self._replication.sync()
        now, wall = self._clock(), self._wall_clock()
        with self._lock:
            if self._closed:
                return RefreshReport(0, 0, True)
            work, waiting = self._plan(now, wall)
            if work:
                batch = self._health.batch(len(work))
                fetches = []
                for key, task in work:
                    if isinstance(key, tuple) and key[:1] == (_DISCOVER,):
                        future = self._coordinators.submit(self._run, key, task, batch)
                        self._in_flight[key] = future
                        waiting.append(future)
                    else:
                        fetches.append((key, task))
                for group in _groups(fetches, self._config.api.max_concurrency):
                    future = self._pool.submit(self._run_group, group, batch)
                    for key, _task in group:
                        self._in_flight[key] = future
                    waiting.append(future)
                self._queued += len(fetches)
            elif not waiting and self._probe_due(now):
                self._probe_started_at = now
                self._probe = self._pool.submit(self._run_probe, self._health.batch(1))
            if self._probe is not None and not self._probe.done():
                waiting.append(self._probe)
            outstanding = self._outstanding()
        if not waiting:
            return RefreshReport(0, 0, True)
        until = deadline
        rate = self._config.api.max_requests_per_second
        if rate > 0 and now + outstanding / rate > deadline:
            # more is due than the rate limit lets finish before the deadline: waiting
            # cannot help this scrape, so answer soon with what is known
            until = min(deadline, now + FAST_ANSWER_SECONDS)
        _, not_done = concurrent.futures.wait(waiting, timeout=max(0.0, until - self._clock()))
        return RefreshReport(len(work), len(waiting), completed=not not_done)

    @property
    def backlog(self) -> int:
        """Work due but not started: planned and queued, or left for a later refresh."""
        with self._lock:
            return self._queued + self._deferred

    def _outstanding(self) -> float:
        """Requests started or queued and not finished yet (discovery cycles estimated)."""
        cycles = sum(
            self._cycle_cost.get(key[1], 1.0)
            for key in self._in_flight
            if isinstance(key, tuple) and key[:1] == (_DISCOVER,)
        )
        return self._queued + self._running + cycles

    @property
    def _due_age(self) -> float:
        """How long ago a fetch or cycle must have been to be due again."""
        return due_age(self._config.collector.refresh_interval_seconds)

    def _intervals(self, wall: float) -> dict[str, float]:
        """Each workflow's due age: the refresh interval's, or while webhook deliveries
        about it arrive (or about any workflow, for a workspace-wide registration), the
        slower reconciliation interval's. Not while a delivered run cannot be judged
        baseline or watched (a documented end delivery without createdAt, for a run whose
        start was not delivered): counting it waits for a look, and one listing brings
        createdAt for every such run of the workflow."""
        normal = self._due_age
        webhooks = self._config.webhooks
        histories = self._book.all()
        if webhooks is None:
            return {h.workflow_id: normal for h in histories}
        refresh = self._config.collector.refresh_interval_seconds
        reconcile = webhooks.reconcile_interval(refresh)
        slow = due_age(max(reconcile, refresh))
        delivered = {h.workflow_id: h.values.get("last_webhook") for h in histories}
        workspace_wide = webhooks.register is not None and not webhooks.register.per_workflow
        latest = max((t for t in delivered.values() if t is not None), default=None)
        intervals = {}
        for history in histories:
            last = delivered[history.workflow_id]
            seen = latest if workspace_wide and latest is not None else last
            fed = seen is not None and wall - seen < reconcile
            if fed and history.awaiting_origin():
                fed = False
            intervals[history.workflow_id] = slow if fed else normal
        return intervals

    def _plan(
        self, now: float, wall: float
    ) -> tuple[list[tuple[Hashable, Task]], list[concurrent.futures.Future[None]]]:
        """What to start (with the lock held), and what already runs that is wanted:
        configured runs that are due, runs tracked from webhooks (and, on a replica that
        does not lead, from discovery) that only a fetch can refresh, and, where the
        history is written, discovery cycles. Stalest first, as much as the API budget
        of one interval allows; the rest stays due for the next refresh, so nothing
        starves: the stalest data is about (due work / budget) intervals old at most."""
        intervals = self._intervals(wall)
        normal = self._due_age
        candidates: list[_Candidate] = []
        waiting: list[concurrent.futures.Future[None]] = []
        for state in self._store.snapshot():
            interval = intervals.get(state.workflow_id, normal)
            if state.key in self._in_flight:
                waiting.append(self._in_flight[state.key])
            elif state.refresh_due(now, interval):
                silent = self._silent_fetches(state.workflow_id, state.run_id, state.silent_fetches)
                looked = state.attempted_at
                candidates.append(
                    _Candidate(
                        state.key,
                        f"run:{state.workflow_id}:{state.run_id}",
                        interval * silent_backoff(silent),
                        self._fetch_configured_task(state.key),
                        math.inf if looked is None else now - looked,
                        0,
                    )
                )
        leads = self._replication.leads
        for history in self._book.all():
            workflow = self._config.workflow(history.workflow_id)
            if workflow is not None and workflow.discover and leads:
                continue  # its discovery task fetches them, after listing
            interval = intervals.get(history.workflow_id, normal)
            configured = set(workflow.runs) if workflow is not None else set()
            for run_id, looked in history.due_runs(wall, interval, configured):
                key = (_TRACKED, history.workflow_id, run_id)
                if key not in self._in_flight:
                    candidates.append(
                        _Candidate(
                            key,
                            f"run:{history.workflow_id}:{run_id}",
                            interval * silent_backoff(history.silent_fetches(run_id)),
                            self._fetch_tracked_task(history.workflow_id, run_id),
                            wall - looked if looked else math.inf,
                            2,
                        )
                    )
        if leads:
            candidates.extend(self._discovery_work(wall, waiting, intervals))
        chosen = self._within_budget(candidates)
        self._deferred = len(candidates) - len(chosen)
        for candidate in chosen:
            if not candidate.lease:  # a discovery cycle: not again before its interval
                self._cycle_attempted[candidate.key[1]] = wall  # type: ignore[index]
        runs = [c for c in chosen if c.lease]
        work = [(key, task) for key, task in self._claimed(runs)]
        work.extend((c.key, c.task) for c in chosen if not c.lease)
        return work, waiting

    def _within_budget(self, candidates: list[_Candidate]) -> list[_Candidate]:
        """The stalest candidates that one interval of the API budget can serve, counting
        what is still outstanding; at least one when nothing is."""
        rate = self._config.api.max_requests_per_second
        if rate <= 0 or not candidates:
            return candidates
        window = max(self._config.collector.refresh_interval_seconds, 1.0)
        room = rate * window - self._outstanding()
        candidates.sort(key=lambda c: (-c.staleness, c.order))
        chosen: list[_Candidate] = []
        spent = 0.0
        for candidate in candidates:
            cost = self._cycle_cost.get(candidate.key[1], 1.0) if not candidate.lease else 1.0
            if spent + cost > room and (chosen or self._outstanding() > 0):
                break
            chosen.append(candidate)
            spent += cost
        return chosen

    def _claimed(self, candidates: list[_Candidate]) -> list[Any]:
        if not candidates:
            return []
        taken = self._replication.claim([c.lease for c in candidates], [c.ttl for c in candidates])
        return [(c.key, c.task) for c, got in zip(candidates, taken, strict=True) if got]

    def _silent_fetches(self, workflow_id: str, run_id: str, own: int) -> int:
        """Answers in a row without a usable status: as the (shared) history counts them."""
        history = self._book.get(workflow_id)
        return max(own, history.silent_fetches(run_id)) if history is not None else own

    def _discovery_work(
        self,
        wall: float,
        waiting: list[concurrent.futures.Future[None]],
        intervals: dict[str, float],
    ) -> list[_Candidate]:
        work: list[_Candidate] = []
        for workflow in self._config.workflows:
            history = self._book.get(workflow.id)
            if history is None or not workflow.discover:
                continue
            key = (_DISCOVER, workflow.id)
            last = history.discovery.last_cycle
            if key in self._in_flight:
                waiting.append(self._in_flight[key])
            elif _cycle_due(
                last,
                self._cycle_attempted.get(workflow.id),
                wall,
                intervals.get(workflow.id, self._due_age),
            ):
                staleness = math.inf if last is None else wall - last
                work.append(_Candidate(key, "", 0.0, self._discovery_task(workflow), staleness, 1))
        return work

    def _run(self, key: Hashable, task: Task, batch: Batch) -> None:
        try:
            self._guarded(key, task, batch)
        finally:
            with self._lock:
                self._in_flight.pop(key, None)
            self._flush()

    def _run_group(self, group: list[tuple[Hashable, Task]], batch: Batch) -> None:
        started = 0
        try:
            for key, task in group:
                with self._lock:
                    if self._closed:  # shut down, or replaced by a reload: stop here
                        break
                    self._queued -= 1
                    self._running += 1
                started += 1
                try:
                    self._guarded(key, task, batch)
                finally:
                    with self._lock:
                        self._running -= 1
                        self._in_flight.pop(key, None)
        finally:
            with self._lock:  # after a close or a BaseException: nothing stays in flight
                for key, _task in group[started:]:
                    self._in_flight.pop(key, None)
                    self._queued -= 1
            self._flush()

    def _guarded(self, key: Hashable, task: Task, batch: Batch) -> None:
        """Run one piece of work and record its outcome in the batch. An exception
        anywhere in it (a bug, or an answer the parsers let through that breaks a later
        step) costs this piece of work only: it is logged once per run and message,
        recorded for the run as bad_response, and the rest of the group runs on."""
        try:
            outcome = task(batch)
        except Exception as exc:
            outcome = self._task_failed(key, exc)
        if outcome is RELEASE:
            batch.release()
        else:
            batch.record(outcome)  # type: ignore[arg-type]

    def _task_failed(self, key: Hashable, exc: Exception) -> ApiError:
        error = ApiError(ErrorKind.BAD_RESPONSE, f"internal error: {type(exc).__name__}")
        signature = (key, type(exc).__name__, str(exc)[:200])
        with self._lock:
            first = signature not in self._faults_logged
            if first:
                if len(self._faults_logged) >= MAX_FAULTS_LOGGED:
                    self._faults_logged.clear()
                self._faults_logged.add(signature)
        if first:
            log.error(
                "internal error while refreshing %s; recorded as bad_response for it, the "
                "rest of the refresh goes on (logged once per run and message)",
                _describe(key),
                exc_info=exc,
            )
        try:
            self._report_failure(key, error)
        except Exception:
            log.exception("cannot record the failure of %s", _describe(key))
        return error

    def _report_failure(self, key: Hashable, error: ApiError) -> None:
        """What a failed piece of work leaves behind: a configured run shows the failure
        in its fetch_success; a tracked run waits an interval before the next try (or is
        forgotten, if the API does not know it)."""
        when = self._wall_clock()
        if _is_run_key(key):
            workflow_id, run_id = key  # type: ignore[misc]
            self._journal.api_error(when, "get_run", error, workflow_id, run_id)
            self._store.record_failure(key, error, self._clock())  # type: ignore[arg-type]
            self._replication.submit(FetchFailed(workflow_id, run_id, when, error.signature))
        elif isinstance(key, tuple) and key[:1] == (_TRACKED,):
            _, workflow_id, run_id = key
            self._journal.api_error(when, "get_run", error, workflow_id, run_id)
            gone = error.kind == ErrorKind.NOT_FOUND
            self._replication.submit((RunGone if gone else FetchTried)(workflow_id, run_id, when))

    def _flush(self) -> None:
        try:
            self._book.flush()
        except Exception:  # a bug in writing state must not end the fetch thread's work
            log.exception("unexpected error writing state")

    # --- tasks -----------------------------------------------------------------------

    def _fetch_configured_task(self, key: RunKey) -> Task:
        def task(batch: Batch) -> ApiError | None:
            when = self._wall_clock()
            try:
                run = self._client.get_run(*key, attributes=self._attributes)
            except ApiError as exc:
                error = exc.with_traceback(None)  # kept past the block: drop its frames
                self._report_failure(key, error)
                return error
            self._store.record_success(key, run, self._clock())
            self._replication.submit(RunSeen.of(key[0], run, when, pinned=True, fetched=True))
            return None

        return task

    def _fetch_tracked_task(self, workflow_id: str, run_id: str) -> Task:
        def task(batch: Batch) -> ApiError | None:
            when = self._wall_clock()
            try:
                run = self._client.get_run(workflow_id, run_id, attributes=self._attributes)
            except ApiError as exc:
                error = exc.with_traceback(None)  # returned past the block: drop its frames
                self._report_failure((_TRACKED, workflow_id, run_id), error)
                return error
            self._replication.submit(RunSeen.of(workflow_id, run, when, pinned=False, fetched=True))
            return None

        return task

    def _discovery_task(self, workflow: WorkflowConfig) -> Task:
        def task(batch: Batch) -> object:
            history = self._book.get(workflow.id)
            if history is None:
                return RELEASE
            interval = self._intervals(self._wall_clock()).get(workflow.id, self._due_age)

            def fetch_pages(pages: list[int]) -> dict[int, RunPage | ApiError]:
                return self._fetch_pages(workflow, pages, batch)

            def observe(run: Any) -> bool:
                pinned = self._store.get((workflow.id, run.run_id)) is not None
                seen = RunSeen.of(
                    workflow.id, run, self._wall_clock(), pinned=pinned, fetched=False
                )
                return self._applier.apply(seen)  # discovery runs where history is written

            cycle = DiscoveryCycle(
                workflow,
                history,
                fetch_pages=fetch_pages,
                observe=observe,
                now=self._wall_clock(),
                parallel=self._config.api.max_concurrency,
            )
            result = cycle.run()
            self._cycle_cost[workflow.id] = float(max(1, result.pages))
            self._note_discovery(workflow.id, result.error)
            history.forget(self._wall_clock())
            # what listing did not refresh: active runs deep in history, runs without
            # createdAt or status; configured runs have their own fetches
            exclude = result.seen | set(workflow.runs)
            due = [
                _Candidate(
                    (_TRACKED, workflow.id, run_id),
                    f"run:{workflow.id}:{run_id}",
                    interval * silent_backoff(history.silent_fetches(run_id)),
                    self._fetch_tracked_task(workflow.id, run_id),
                    0.0,
                    2,
                )
                for run_id in history.due_for_fetch(self._wall_clock(), interval, exclude)
            ]
            claimed = [key for key, _ in self._claimed(due)]
            if claimed:
                batch.add(len(claimed))
                futures = [
                    self._pool.submit(
                        self._guarded, key, self._fetch_tracked_task(key[1], key[2]), batch
                    )
                    for key in claimed
                ]
                concurrent.futures.wait(futures)
            return RELEASE  # the coordinator's own slot; its requests recorded theirs

        return task

    def _note_discovery(self, workflow_id: str, error: ApiError | None) -> None:
        """Log a failing listing once per change of error, and its recovery once."""
        self._journal.listing(workflow_id, self._wall_clock(), error)
        signature = error.signature if error is not None else None
        previous = self._discovery_errors.get(workflow_id)
        if signature == previous:
            return
        self._discovery_errors[workflow_id] = signature
        if error is not None:
            log.warning(
                "run discovery failed workflow_id=%s kind=%s error=%r (logged again only "
                "if the error changes)",
                workflow_id,
                error.kind,
                str(error),
            )
        elif previous is not None:
            log.info("run discovery recovered workflow_id=%s", workflow_id)

    def _fetch_pages(
        self, workflow: WorkflowConfig, pages: list[int], batch: Batch
    ) -> dict[int, RunPage | ApiError]:
        size = workflow.discovery.page_size
        batch.add(len(pages))

        def fetch(page: int) -> RunPage | ApiError:
            try:
                answer: RunPage | ApiError = self._client.list_runs(
                    workflow.id, page, size, attributes=self._attributes
                )
            except ApiError as exc:
                answer = exc.with_traceback(None)  # kept past the block: drop its frames
            except Exception as exc:
                log.exception("unexpected error listing workflow_id=%s", workflow.id)
                answer = ApiError(ErrorKind.BAD_RESPONSE, f"internal error: {type(exc).__name__}")
            batch.record(answer if isinstance(answer, ApiError) else None)
            if isinstance(answer, RunPage) and answer.invalid_items:
                log.warning(
                    "run list page had unusable items workflow_id=%s page=%d items=%d",
                    workflow.id,
                    page,
                    answer.invalid_items,
                )
            return answer

        if len(pages) == 1:
            return {pages[0]: fetch(pages[0])}
        futures = {page: self._pool.submit(fetch, page) for page in pages}
        return {page: future.result() for page, future in futures.items()}

    # --- keeping copyai_up honest when nothing is due --------------------------------

    def _probe_due(self, now: float) -> bool:
        """With nothing else to fetch, check now and then that the API still takes the key,
        so `copyai_up` stays true to its meaning when every run is finished and cached."""
        every = self._config.collector.up_check_interval_seconds
        if every <= 0 or not self._config.workflows or not self._replication.leads:
            return False
        if self._probe is not None and not self._probe.done():
            return False
        return now - max(self._health.last_answer_at, self._probe_started_at) >= every

    def _run_probe(self, batch: Batch) -> None:
        workflow_id = self._config.workflows[0].id
        try:
            self._client.list_runs(workflow_id, page=1, size=1)
        except ApiError as exc:
            batch.record(exc)
            self._journal.api_error(self._wall_clock(), "list_runs", exc, workflow_id)
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
        # coordinators first: a running discovery cycle still needs the fetch pool
        self._coordinators.shutdown(wait=wait, cancel_futures=True)
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _is_run_key(key: Hashable) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)


def _describe(key: Hashable) -> str:
    if _is_run_key(key):
        return "workflow_id={} run_id={}".format(*key)  # type: ignore[misc]
    if isinstance(key, tuple) and key[:1] == (_TRACKED,):
        return f"workflow_id={key[1]} run_id={key[2]}"
    if isinstance(key, tuple) and key[:1] == (_DISCOVER,):
        return f"discovery of workflow_id={key[1]}"
    return "a piece of work"


def _groups(items: list[Any], workers: int) -> list[list[Any]]:
    """Fetches in a whole number of waves of `workers` groups, dealt round-robin so every
    group is as long as the others: one future per group instead of one per run (10,000
    queued futures cost ~19 MB), with the pool kept as busy as one per run would."""
    if not items:
        return []
    waves = max(1, math.ceil(len(items) / (workers * GROUP_LENGTH)))
    count = min(len(items), workers * waves)
    groups: list[list[Any]] = [[] for _ in range(count)]
    for i, item in enumerate(items):
        groups[i % count].append(item)
    return groups


def _cycle_due(
    last_cycle: float | None, last_attempt: float | None, now: float, interval: float
) -> bool:
    latest = max(t for t in (last_cycle, last_attempt, -math.inf) if t is not None)
    return now - latest >= interval
