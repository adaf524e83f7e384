"""copyai-exporter (or any script) in a subprocess, its output collected line by line as
it comes, so a test can wait for a line with a deadline and read the whole log after."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from typing import IO

import pytest

from tests.support.polling import wait_for

LISTENING = re.compile(r"listening url=(http://\S+?)/metrics")


class Process:
    """`python -m exporter ARGS`. `env` is added to this process' environment, or, with
    `clean_env`, is the whole environment."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, *, clean_env: bool = False
    ):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=(env or {}) if clean_env else {**os.environ, **(env or {})},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._new: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._unmatched: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.stderr, self._new), daemon=True
            ),
        ]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: IO[str], into: list[str], new: queue.SimpleQueue | None = None) -> None:
        for line in stream:
            into.append(line)
            if new is not None:
                new.put(line)

    def wait_for_line(
        self, pattern: re.Pattern[str], timeout: float = 15, *, consume: bool = False
    ) -> re.Match[str]:
        """The first stderr line matching `pattern`; with `consume`, a line once matched
        is not matched again (so the next wait looks for a new one)."""

        def found() -> re.Match[str] | None:
            while not self._new.empty():
                self._unmatched.append(self._new.get())
            for line in self._unmatched:
                match = pattern.search(line)
                if match:
                    if consume:
                        self._unmatched.remove(line)
                    return match
            if self.proc.poll() is not None and self._new.empty():
                pytest.fail(f"exited {self.proc.returncode}: {''.join(self.stderr)}")
            return None

        return wait_for(found, timeout=timeout)

    def log_text(self) -> str:
        return "".join(self.stderr)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for pump in self._pumps:
            pump.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )
