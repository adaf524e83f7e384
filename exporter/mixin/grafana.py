"""Grafana dashboard JSON, the small part of it this mixin uses: a board that lays
panels out in rows on the 24-column grid, targets, stat options and thresholds."""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}


class Board:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(
        self,
        kind: str,
        title: str,
        targets: list[dict[str, Any]],
        *,
        w: int,
        h: int,
        description: str,
        unit: str = "short",
        options: dict[str, Any] | None = None,
        field: dict[str, Any] | None = None,
        transformations: list[dict[str, Any]] | None = None,
        overrides: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.x + w > 24:
            self._newline()
        defaults: dict[str, Any] = {"unit": unit}
        defaults.update(field or {})
        panel: dict[str, Any] = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [
                {"datasource": DS, "refId": chr(ord("A") + i), **target}
                for i, target in enumerate(targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def series(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "range": True, "instant": False}


def instant(expr: str, legend: str = "__auto", table: bool = False) -> dict[str, Any]:
    target = {"expr": expr, "legendFormat": legend, "range": False, "instant": True}
    if table:
        target["format"] = "table"
    return target


def table_columns(rename: dict[str, str], hide: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The transformations of a table of instant queries: their frames merged into one
    row per label set, the Time column and `hide` dropped, columns renamed."""
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, **dict.fromkeys(hide, True)},
                "renameByName": rename,
            },
        },
    ]


def stat_options(text_mode: str = "value") -> dict[str, Any]:
    return {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "none",
        "textMode": text_mode,
        "justifyMode": "center",
        "orientation": "auto",
    }


def thresholds(*steps: tuple[float | None, str], line: bool = False) -> dict[str, Any]:
    """Colour steps; with `line`, a time series also draws them (an alert's threshold)."""
    field: dict[str, Any] = {
        "thresholds": {
            "mode": "absolute",
            "steps": [{"value": value, "color": color} for value, color in steps],
        }
    }
    if line:
        field["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    return field


TIMESERIES = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}
