"""Cost attribution, opt-in and bounded: one workflow's finished runs and their credits
by the values of a few fields of each run (`attribution.keys`, such as
`metadata.customer`).

Per key, the first `max_values_per_key` distinct values are admitted, first come, first
kept; a later new value is counted as OTHER_VALUE, a missing or non-scalar one as
NONE_VALUE. So whatever the API returns, a workflow has at most keys x
(max_values_per_key + 2) values. Admission happens where history is written (the single
exporter, or the replicas' leader) and is persisted with the workflow, so a restart or
another replica keeps the very same values.

Output for one workflow::

    copyai_workflow_run_credits_by_attribute_total{workflow_id="WCFG-1",
        attribute="metadata.customer",value="acme"} 42.0
    copyai_workflow_runs_finished_by_attribute_total{workflow_id="WCFG-1",
        attribute="metadata.customer",value="acme",status="FAILED"} 1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.api.records import NONE_VALUE, RunStatus

OTHER_VALUE = "__other__"  # a value that came after max_values_per_key others
CREDITS, COMPLETE, FAILED = range(3)  # the columns of a value's row


@dataclass(frozen=True)
class AttributeRow:
    """What one value of one key has counted (a copy, for the collector)."""

    attribute: str
    value: str
    credits: float
    complete: int
    failed: int


class Attribution:
    """The admitted values of each key of one workflow and what each counted. Not
    thread-safe: used under its workflow history's lock."""

    __slots__ = ("_admitted", "keys", "max_values", "values")

    def __init__(self, keys: tuple[str, ...] = (), max_values: int = 20):
        self.keys = keys
        self.max_values = max_values
        # key -> value -> [credits, runs COMPLETE, runs FAILED], in the order admitted
        self.values: dict[str, dict[str, list[float]]] = {key: {} for key in keys}
        self._admitted: dict[str, int] = dict.fromkeys(keys, 0)  # values but NONE, OTHER

    def reconfigure(self, keys: tuple[str, ...], max_values: int) -> bool:
        """Follow a new config: keys no longer configured are dropped (their series go),
        new ones start empty, and a lowered maximum keeps the values admitted first.
        Returns whether anything changed."""
        if keys == self.keys and max_values == self.max_values:
            return False
        old = self.values
        self.keys, self.max_values = keys, max_values
        self.values = {key: {} for key in keys}
        self._admitted = dict.fromkeys(keys, 0)
        for key in keys:
            for value, row in old.get(key, {}).items():
                self._restore(key, value, row)
        return True

    def finished(self, attributes: Mapping[str, str] | None, status: RunStatus | None) -> None:
        """A run's end was counted: one more run COMPLETE or FAILED for each key."""
        column = FAILED if status is RunStatus.FAILED else COMPLETE
        for key in self.keys:
            self._row(key, attributes)[column] += 1

    def add_credits(self, attributes: Mapping[str, str] | None, credits: float) -> None:
        """A counted run's credits became known: added to its value of each key."""
        for key in self.keys:
            self._row(key, attributes)[CREDITS] += credits

    def _row(self, key: str, attributes: Mapping[str, str] | None) -> list[float]:
        value = attributes.get(key, NONE_VALUE) if attributes else NONE_VALUE
        rows = self.values[key]
        row = rows.get(value)
        if row is None:
            if value not in (NONE_VALUE, OTHER_VALUE):
                if self._admitted[key] >= self.max_values:
                    return self._row_of(key, OTHER_VALUE)
                self._admitted[key] += 1
            row = rows[value] = [0.0, 0, 0]
        return row

    def _row_of(self, key: str, value: str) -> list[float]:
        rows = self.values[key]
        row = rows.get(value)
        if row is None:
            row = rows[value] = [0.0, 0, 0]
        return row

    def _restore(self, key: str, value: str, row: list[float]) -> None:
        if value not in (NONE_VALUE, OTHER_VALUE):
            if self._admitted[key] >= self.max_values:
                return  # admitted after the (lowered) maximum: dropped
            self._admitted[key] += 1
        self.values[key][value] = [float(row[CREDITS]), int(row[COMPLETE]), int(row[FAILED])]

    # --- persistence and reading -----------------------------------------------------

    def record(self) -> dict[str, list[list[Any]]]:
        """key -> [[value, credits, complete, failed], ...] in the order admitted."""
        return {
            key: [[value, *row] for value, row in rows.items()] for key, rows in self.values.items()
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Take a persisted record (the leader's, or this process' before a restart):
        its values replace what is here, for the keys configured here."""
        self.values = {key: {} for key in self.keys}
        self._admitted = dict.fromkeys(self.keys, 0)
        for key in self.keys:
            for item in data.get(key, ()):
                value, *row = item
                self._restore(key, str(value), row)

    def rows(self) -> list[AttributeRow]:
        return [
            AttributeRow(key, value, row[CREDITS], int(row[COMPLETE]), int(row[FAILED]))
            for key, rows in self.values.items()
            for value, row in rows.items()
        ]
