"""How a call to the Copy.ai API failed: `ApiError` with a `kind` the rest of the
exporter maps onto metrics and log lines."""

from __future__ import annotations


class ErrorKind:
    UNREACHABLE = "unreachable"  # no answer: refused, reset, DNS, timeout
    UNAUTHORIZED = "unauthorized"  # 401/403: the key was refused
    RATE_LIMITED = "rate_limited"  # 429, or held back by our own limiter after one
    NOT_FOUND = "not_found"  # 404 for this run
    CLIENT_ERROR = "client_error"  # other 4xx for this request
    SERVER_ERROR = "server_error"  # 5xx after retries
    BAD_RESPONSE = "bad_response"  # an answer we cannot use: bad JSON, wrong shape, redirect
    TOO_LARGE = "too_large"  # body over the configured cap

    ALL = (
        UNREACHABLE,
        UNAUTHORIZED,
        RATE_LIMITED,
        NOT_FOUND,
        CLIENT_ERROR,
        SERVER_ERROR,
        BAD_RESPONSE,
        TOO_LARGE,
    )


class ApiError(Exception):
    """A request to the API failed; `kind` is one of `ErrorKind`."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        self.kind = kind
        self.status = status
        super().__init__(message)

    @property
    def api_answered(self) -> bool:
        """True if the API itself answered: reachable, and the key was not refused."""
        return self.status is not None and self.status < 500 and self.status not in (401, 403)

    @property
    def signature(self) -> str:
        """Stable text for "has this error changed?" (log once per change)."""
        return f"{self.kind}:{self.status}" if self.status else self.kind
