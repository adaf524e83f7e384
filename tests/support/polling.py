"""Waiting for something to happen: poll with a deadline, never sleep a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Poll until predicate() is truthy; return its value or fail at the deadline."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        event.wait(interval)
