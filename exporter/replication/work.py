"""How a replica takes its share of the work: per-run fetches go to whoever takes the
run's lease first, discovery and the API check to the leader, and what is learnt to
the leader as observations."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from exporter.api.errors import ApiError, ErrorKind
from exporter.api.records import Run
from exporter.replication.coordinator import Coordinator
from exporter.tracking.health import Batch
from exporter.tracking.persistence import StateError
from exporter.tracking.refresh import _TRACKED, Refresher, Task, _is_run_key
from exporter.tracking.runs import RunKey

log = logging.getLogger(__name__)


class SharedRefresher(Refresher):
    """The refresher of a replica: per-run fetches go to whoever takes the lease first,
    discovery and the API check to the leader, and what is learnt to the leader."""

    def __init__(self, *args: Any, coordinator: Coordinator, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._shared = coordinator

    def _before_refresh(self) -> None:
        with contextlib.suppress(StateError):  # no Redis: serve the mirror as it is
            self._shared.sync()

    def _plan(self, now: float, wall: float):
        interval = self._due_age
        candidates: list[tuple[Any, str, Task]] = []
        waiting: list[Any] = []
        for state in self._store.snapshot():
            if state.key in self._in_flight:
                waiting.append(self._in_flight[state.key])
            elif state.run is None or not state.run.terminal:
                candidates.append(
                    (
                        state.key,
                        f"run:{state.workflow_id}:{state.run_id}",
                        self._fetch_configured_task(state.key),
                    )
                )
        for history in self._book.all():
            workflow = self._config.workflow(history.workflow_id)
            listed = set(workflow.runs) if workflow is not None else set()
            for run_id in history.due_for_fetch(wall, interval, listed):
                key = (_TRACKED, history.workflow_id, run_id)
                if key not in self._in_flight:
                    candidates.append(
                        (
                            key,
                            f"run:{history.workflow_id}:{run_id}",
                            self._fetch_tracked_task(history.workflow_id, run_id),
                        )
                    )
        try:
            taken = self._shared.backend.take_leases(
                [name for _, name, _ in candidates], int(max(0.1, interval) * 1000)
            )
        except StateError:
            taken = [False] * len(candidates)  # no Redis, no coordination: no API calls
        work = [(key, task) for (key, _, task), got in zip(candidates, taken, strict=True) if got]
        if self._shared.is_leader:
            work.extend(self._discovery_work(wall, waiting))
        return work, waiting

    def _probe_due(self, now: float) -> bool:
        return self._shared.is_leader and super()._probe_due(now)

    def _submit(self, observation: dict[str, Any]) -> None:
        try:
            self._shared.submit([observation])
        except StateError:
            log.debug("observation dropped: Redis unavailable")

    def _fetch_configured_task(self, key: RunKey) -> Task:
        def task(batch: Batch) -> ApiError | None:
            when = self._wall_clock()
            try:
                run = self._client.get_run(*key)
            except ApiError as exc:
                error = exc.with_traceback(None)
                self._report_failure(key, error)
                return error
            self._store.record_success(key, run, self._clock())
            self._submit(run_observation(key[0], run, when, pinned=True))
            return None

        return task

    def _report_failure(self, key: Any, error: ApiError) -> None:
        super()._report_failure(key, error)  # logs once per change for a configured run
        if _is_run_key(key):
            observation = {
                "t": "fetch_failed",
                "wf": key[0],
                "run_id": key[1],
                "error": error.signature,
                "when": self._wall_clock(),
            }
        elif isinstance(key, tuple) and key[:1] == (_TRACKED,):
            observation = {"t": "touch", "wf": key[1], "run_id": key[2]}
            observation["when"] = self._wall_clock()
        else:
            return
        self._submit(observation)

    def _fetch_tracked(self, workflow_id: str, run_id: str) -> ApiError | None:
        when = self._wall_clock()
        try:
            run = self._client.get_run(workflow_id, run_id)
        except ApiError as exc:
            error = exc.with_traceback(None)
            kind = "drop" if error.kind == ErrorKind.NOT_FOUND else "touch"
            self._submit({"t": kind, "wf": workflow_id, "run_id": run_id, "when": when})
            return error
        self._submit(run_observation(workflow_id, run, when, pinned=False))
        return None


def run_observation(workflow_id: str, run: Run, when: float, *, pinned: bool) -> dict[str, Any]:
    """A run as one get_run showed it (`reported` false: the record had no status); for
    a listed run it also says that its fetch succeeded."""
    return {
        "t": "run",
        "wf": workflow_id,
        "run_id": run.run_id,
        "status": run.status.value,
        "reported": run.reported,
        "fetched": True,
        "raw_status": run.raw_status,
        "created_at": run.created_at,
        "credits": run.credits,
        "when": when,
        "pinned": pinned,
    }
