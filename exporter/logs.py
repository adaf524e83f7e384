"""Logging set-up: logfmt or JSON lines on stderr, with every known secret redacted from
the final text (messages, arguments and tracebacks alike). Everything the process writes
to stderr goes through it: warnings and uncaught exceptions too, one record each."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType

LEVELS = ("debug", "info", "warn", "error")
FORMATS = ("logfmt", "json")
REDACTED = "<redacted>"


class Redactor:
    """The set of strings that must never reach a log line (the API key)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secret: str) -> None:
        if len(secret) < 4:  # redacting tiny strings would garble every line
            return
        with self._lock:
            if secret not in self._secrets:
                self._secrets = (*self._secrets, secret)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


REDACTOR = Redactor()


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


class LogfmtFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        # redacted before escaping, so a secret with '"' or '\\' is still found
        message = self._redactor.redact(message)
        fields = [
            ("ts", _timestamp(record)),
            ("level", _level(record)),
            ("logger", record.name),
            ("msg", message),
        ]
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields)
        return self._redactor.redact(line)


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\t\\'):
        return value
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": _timestamp(record),
            "level": _level(record),
            "logger": record.name,
            "msg": self._redactor.redact(record.getMessage()),
        }
        if record.exc_info:
            payload["exc"] = self._redactor.redact(self.formatException(record.exc_info))
        return self._redactor.redact(json.dumps(payload, ensure_ascii=False))


def setup_logging(level: str = "info", fmt: str = "logfmt", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter_class = JsonFormatter if fmt == "json" else LogfmtFormatter
    handler.setFormatter(formatter_class(REDACTOR))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    # urllib3 logs full URLs and retries at debug; keep its noise at warning and above.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # what Python would print to stderr itself becomes one record (newlines escaped)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    sys.excepthook = _log_uncaught


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "unknown"
    logging.getLogger("exporter").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_uncaught(
    exc_type: type[BaseException], exc_value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("exporter").error(
        "uncaught exception", exc_info=(exc_type, exc_value, traceback)
    )
