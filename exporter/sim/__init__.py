"""A fake Copy.ai API for the demo, the tests and the benchmarks; the exporter itself
imports it only for `--demo` and `copyai-exporter simulate`.

world.py holds the simulated workspace (runs move through statuses by the clock, so
answers are deterministic), faults.py what can go wrong and every documented answer
shape, http.py serves it (with control endpoints under /_sim/), scenarios.py builds
ready-made workspaces, command.py is the `simulate` command.
"""

from exporter.sim.faults import FAULT_MODES, Faults
from exporter.sim.http import RunningSimulator, SimulatorServer
from exporter.sim.scenarios import bulk_world, demo_world
from exporter.sim.world import DEFAULT_API_KEY, Arrival, SimRun, World

__all__ = [
    "DEFAULT_API_KEY",
    "FAULT_MODES",
    "Arrival",
    "Faults",
    "RunningSimulator",
    "SimRun",
    "SimulatorServer",
    "World",
    "bulk_world",
    "demo_world",
]
