"""One client connection of an HTTP listener and what bounds it: the cap on connections
(slots), the deadlines for a request to arrive, the rules that tell a broken client
from a bug, and the rate-limited summary of broken clients."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING

from exporter.api.transport import Watchdog

if TYPE_CHECKING:  # the server itself never needs the runtime
    pass


log = logging.getLogger(__name__)


LISTENERS = ("metrics", "webhook")


DEFAULT_MAX_CONNECTIONS = 512  # per listener (--web.max-connections)


# Deadlines for the whole of each phase, not for each read: a client that trickles a
# byte a second never trips a per-read timeout. The request line and headers must have
# arrived this long after the connection was accepted (or after its TLS handshake,
# which has HANDSHAKE_TIMEOUT_SECONDS of its own)...
HEADER_DEADLINE_SECONDS = 5.0


# ...and a request body (webhook deliveries) this long after its headers.
BODY_DEADLINE_SECONDS = 10.0


# While every connection slot is taken and another client waits to be accepted, a
# connection whose request has not all arrived this long after it was accepted is
# closed to make room: a cap full of slow clients frees itself in this time, not in
# HEADER_DEADLINE_SECONDS. A scraper's request is complete as soon as it is accepted
# (it was sent while the connection waited), so only slow clients are cut. A client
# waits for the queue ahead of it: even a full accept queue (4096) at the default cap
# drains in 8 x 0.5 s, well within Prometheus' default scrape timeout of 10 s.
BUSY_DEADLINE_SECONDS = 0.5


# A write to a client that has stopped reading fails after this long.
WRITE_TIMEOUT_SECONDS = 30.0


# Each slow or broken client is one debug line; a warning sums them up at most this often.
CLIENT_ERROR_SUMMARY_SECONDS = 60.0


MAX_REQUEST_LINE = 65536  # longer is refused with 414, as the standard library does


_GONE = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNABORTED}


_DEADLINES = Watchdog("copyai-http-deadline")  # one thread for every listener's clients


class ConnectionObserver:
    """Where a listener reports its connections; this one ignores them. The exporter's
    telemetry (exporter.telemetry.Telemetry) turns them into copyai_http_* metrics."""

    def http_listener_started(self, listener: str, max_connections: int) -> None: ...

    def http_connection_opened(self, listener: str) -> None: ...

    def http_connection_closed(self, listener: str) -> None: ...

    def http_connection_limit_waited(self, listener: str) -> None: ...

    def http_client_failed(self, listener: str, reason: str) -> None: ...


def client_error_reason(exc: BaseException, expired: bool = False) -> str | None:
    """timeout, reset or bad_request when `exc` is a client's doing; None for a bug."""
    if expired or isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "reset"
    if isinstance(exc, ssl.SSLError):  # not TLS at all, or a certificate refused
        return "bad_request"
    if isinstance(exc, ConnectionError) or (isinstance(exc, OSError) and exc.errno in _GONE):
        return "reset"
    return None


class Slots:
    """The connection cap of one listener, as Prometheus' netutil.LimitListener: the
    acceptor takes a slot before it accepts, so clients past the cap wait in the
    kernel's accept queue, not in a thread each."""

    def __init__(self, limit: int):
        self._cond = threading.Condition()
        self._free = limit
        self._closed = False

    def take_now(self) -> bool:
        with self._cond:
            if self._free and not self._closed:
                self._free -= 1
                return True
            return False

    def take(self) -> bool:
        """Wait for a free slot; False once closed (the server is shutting down)."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Connection:
    """One accepted connection while its request arrives: the deadline it must arrive
    by, and the socket the watchdog shuts down when that passes, so that the read
    blocked in the connection's thread returns at once."""

    def __init__(self, sock: socket.socket, client: str):
        self.client = client
        self.accepted = time.monotonic()
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = sock
        self._receiving = True
        self._hurried = False
        self._when = math.inf
        self._handle: int | None = None

    def deadline(self, seconds: float) -> None:
        """What is still to come of the request must arrive within `seconds`."""
        with self._lock:
            if self._receiving:
                when = time.monotonic() + seconds
                if self._hurried:
                    when = min(when, self.accepted + BUSY_DEADLINE_SECONDS)
                self._arm(when)

    def hurry(self) -> None:
        """Another client waits for this one's slot: BUSY_DEADLINE_SECONDS from accept."""
        with self._lock:
            if self._receiving and not self._hurried:
                self._hurried = True
                when = self.accepted + BUSY_DEADLINE_SECONDS
                if when < self._when:
                    self._arm(when)

    def received(self) -> None:
        """The request is in, or being answered: no deadline any more."""
        with self._lock:
            self._receiving = False
            self._disarm()

    def bind(self, sock: socket.socket) -> None:
        """The TLS socket that now wraps the accepted one."""
        with self._lock:
            self._sock = sock

    def close(self) -> None:
        """Before the socket is closed, so the watchdog never touches a reused fd."""
        with self._lock:
            self._sock = None
            self._receiving = False
            self._disarm()

    def expire(self) -> None:
        with self._lock:
            # (a later deadline may have been set since the watchdog took this one)
            if not self._receiving or self._sock is None or time.monotonic() < self._when:
                return
            self.expired = True
            # socket.socket's shutdown, not SSLSocket's, which would drop the TLS
            # state under the thread that is reading
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def cut(self) -> None:
        """Now, if the request is still arriving."""
        with self._lock:
            self._when = time.monotonic()
        self.expire()

    def _arm(self, when: float) -> None:
        self._disarm()
        self._when = when
        self._handle = _DEADLINES.arm(when, self)

    def _disarm(self) -> None:
        if self._handle is not None:
            _DEADLINES.disarm(self._handle)
            self._handle = None
        self._when = math.inf


class FailureSummary:
    """Slow or broken clients of one listener, summed up in one warning at most once per
    CLIENT_ERROR_SUMMARY_SECONDS: each is logged at debug level only."""

    def __init__(self, listener: str):
        self._listener = listener
        self._lock = threading.Lock()
        self._count = 0
        self._handle: int | None = None

    def add(self) -> None:
        with self._lock:
            self._count += 1
            if self._handle is None:
                when = time.monotonic() + CLIENT_ERROR_SUMMARY_SECONDS
                self._handle = _DEADLINES.arm(when, self)

    def expire(self) -> None:
        with self._lock:
            count, self._count, self._handle = self._count, 0, None
        if count:
            log.warning(
                "slow or broken client connections in the last minute listener=%s count=%d",
                self._listener,
                count,
            )

    def flush(self) -> None:
        """At shutdown: what has not been summed up yet."""
        with self._lock:
            if self._handle is not None:
                _DEADLINES.disarm(self._handle)
        self.expire()
