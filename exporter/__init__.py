"""copyai-exporter: a Prometheus exporter for Copy.ai workflow runs."""

__version__ = "0.1.0"
