"""What the exporter knows → Prometheus: the per-workflow and health families
(collector.py), the per-run families written straight to text (exposition.py), and
the exporter's own request, listener and reload metrics (telemetry.py)."""
