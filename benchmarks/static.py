"""The floor of a warm scrape: the exporter's own HTTP server answering with bytes it
already has (a /metrics body captured from the exporter, and that body gzipped), so
rendering and compressing cost nothing and only the server and the transfer remain.

    python -m benchmarks.static --body metrics.txt --web.listen-address 127.0.0.1:9998
"""

from __future__ import annotations

import argparse
import gzip
import threading
from pathlib import Path

from exporter.web.app import TEXT_FORMAT
from exporter.web.http import HttpServer


class StaticApp:
    def __init__(self, body: bytes):
        self.plain = body
        self.gzipped = gzip.compress(body, compresslevel=3)

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        headers = [("Content-Type", TEXT_FORMAT)]
        body = self.plain
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = self.gzipped
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", required=True, help="file holding the uncompressed body")
    parser.add_argument("--web.listen-address", dest="listen", required=True)
    args = parser.parse_args()
    HttpServer(StaticApp(Path(args.body).read_bytes()), args.listen).start()
    threading.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    main()
