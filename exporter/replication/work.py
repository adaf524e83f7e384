"""How a replica takes its share of the work (the refresher's `Replication` for
state.backend: redis): a per-run fetch goes to whoever first takes the run's lease in
Redis, discovery and the API check to the leader, and what a replica learns to the
leader as observations. Without Redis a replica takes no work at all: it can neither
take leases nor share the API budget, so it serves its last known data."""

from __future__ import annotations

import contextlib
import logging

from exporter.replication.backend import RedisBackend
from exporter.replication.coordinator import Coordinator
from exporter.tracking.observations import Observation
from exporter.tracking.persistence import StateError

log = logging.getLogger(__name__)


class RedisReplication:
    def __init__(self, backend: RedisBackend, coordinator: Coordinator):
        self._backend = backend
        self._coordinator = coordinator

    @property
    def leads(self) -> bool:
        return self._coordinator.is_leader

    def sync(self) -> None:
        with contextlib.suppress(StateError):  # no Redis: serve the mirror as it is
            self._coordinator.sync()

    def claim(self, names: list[str], ttls: list[float]) -> list[bool]:
        try:
            return self._backend.take_leases(names, [int(max(0.1, t) * 1000) for t in ttls])
        except StateError:
            return [False] * len(names)  # no Redis, no coordination: no API calls

    def submit(self, message: Observation) -> None:
        try:
            self._coordinator.submit([message])
        except StateError:
            log.debug("observation dropped: Redis unavailable")
