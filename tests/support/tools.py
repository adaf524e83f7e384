"""External tools the tests drive for real. Under CI=true (where .ci/run installs them)
a missing one fails the test; locally it is skipped with the package to install."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEBIAN_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "redis-server": "redis-server",
    "openssl": "openssl",
    "chromium": "chromium",
    "kubectl": "kubectl",
}


def require_tool(name: str) -> str:
    """Path of an external tool; under CI its absence fails the test instead of skipping."""
    path = shutil.which(name)
    if path:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    if IN_CI:
        pytest.fail(f"{name} is required under CI=true (.ci/run installs it)")
    pytest.skip(f"{name} not installed (apt-get install {package}); CI runs this test")
    raise AssertionError  # unreachable
