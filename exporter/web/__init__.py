"""The HTTP surface: the exporter's WSGI app (app.py), the threading server with its
connection cap and deadlines (http.py, connections.py), TLS and basic auth from the
web config (webconfig.py), and the webhook receiver (webhooks.py)."""
