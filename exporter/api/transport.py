"""A requests session whose requests have a deadline for the whole exchange.

requests' timeouts bound each socket read, so a server that sends its status line,
headers or body a byte at a time can hold a worker forever. Here every request made
inside `deadline(seconds)` is watched by one shared thread, which shuts the request's
socket down when its time is up; the blocked read returns and the request fails.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import requests
import requests.adapters
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Attempt:
    """One guarded exchange: the connection it uses, and whether its time ran out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self.expired = False

    def bind(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = getattr(self._conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to interrupt
                sock.shutdown(socket.SHUT_RDWR)


class Expiring(Protocol):
    def expire(self) -> None: ...


class Watchdog:
    """One thread and a heap of deadlines, however many are pending: at its time (on
    time.monotonic) each armed target's `expire()` is called in that thread. The HTTP
    server uses one too, for its clients' request deadlines."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Expiring]] = []
        self._armed: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, target: Expiring) -> int:
        with self._cond:
            handle = next(self._ids)
            heapq.heappush(self._heap, (when, handle, target))
            self._armed.add(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
            return handle

    def disarm(self, handle: int) -> None:
        with self._cond:
            self._armed.discard(handle)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._cond.wait()
                    continue
                when, handle, target = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._armed.discard(handle)
            target.expire()


_WATCHDOG = Watchdog("copyai-request-deadline")


@contextmanager
def deadline(seconds: float) -> Iterator[Attempt]:
    """Requests made by this thread inside the block are cut off after `seconds`."""
    attempt = Attempt()
    previous = getattr(_current, "attempt", None)
    _current.attempt = attempt
    handle = _WATCHDOG.arm(time.monotonic() + seconds, attempt)
    try:
        yield attempt
    finally:
        _WATCHDOG.disarm(handle)
        _current.attempt = previous


class _BindingMixin:
    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.bind(conn)
        return conn


class _HTTPPool(_BindingMixin, HTTPConnectionPool):
    pass


class _HTTPSPool(_BindingMixin, HTTPSConnectionPool):
    pass


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def make_session(pool_size: int, base_url: str) -> requests.Session:
    """A session with one connection pool of `pool_size` and no retries of its own.

    HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE are honoured as everywhere in requests,
    but read once here: every request goes to base_url's origin, and looking them up on
    each request cost more CPU than the rest of the request (benchmarks/).
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    adapter = _DeadlineAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
