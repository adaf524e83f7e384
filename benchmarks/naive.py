"""The naive baseline: a straightforward exporter that, on every scrape, fetches every
configured run one after the other (and pages through every run of a `discover: true`
workflow), then renders. No cache, no concurrency, no single-flight. It takes the same
config file and is served by the same HTTP server as the real exporter, so the rows
compare the exporters, not the plumbing.

    python -m benchmarks.naive --config.file sim.yaml --web.listen-address 127.0.0.1:9999
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from collections import Counter

import requests

from exporter.api.records import ALL_STATUSES, parse_run
from exporter.config import Config, load_config_file
from exporter.web.http import HttpServer


class NaiveExporter:
    def __init__(self, config: Config):
        self.config, self.session = config, requests.Session()
        self.session.headers["x-copy-ai-api-key"] = config.api.api_key.reveal()

    def get(self, path: str, **params: object) -> dict:
        url = self.config.api.base_url + path
        answer = self.session.get(url, params=params, timeout=self.config.api.timeout_seconds)
        answer.raise_for_status()
        return answer.json()["data"]

    def collect(self) -> str:
        out, now = [], time.time()
        for wf in self.config.workflows:
            for run_id in wf.runs:
                labels = f'workflow_id="{wf.id}",run_id="{run_id}"'
                try:
                    run = parse_run(self.get(f"/workflow/{wf.id}/run/{run_id}"))
                except (requests.RequestException, ValueError):
                    out.append(f"copyai_workflow_run_fetch_success{{{labels}}} 0")
                    continue
                for s in ALL_STATUSES:
                    value = int(s is run.status)
                    out.append(f'copyai_workflow_run_status{{{labels},status="{s}"}} {value}')
                if run.credits is not None:
                    out.append(f"copyai_workflow_run_credits{{{labels}}} {run.credits}")
                if run.created_at is not None:
                    created, age = run.created_at, now - run.created_at
                    out.append(
                        f"copyai_workflow_run_created_timestamp_seconds{{{labels}}} {created}"
                    )
                    out.append(f"copyai_workflow_run_age_seconds{{{labels}}} {age}")
                out.append(f"copyai_workflow_run_fetch_success{{{labels}}} 1")
            counts: Counter[str] = Counter()
            page, size = 1, wf.discovery.page_size
            while wf.discover:
                data = self.get(f"/workflow/{wf.id}/run", page=page, size=size)
                counts.update(parse_run(item).status.value for item in data["data"])
                if page * size >= int(data["total"]):
                    break
                page += 1
            for s in ALL_STATUSES:
                out.append(
                    f'copyai_workflow_runs{{workflow_id="{wf.id}",status="{s}"}} {counts[s]}'
                )
        return "\n".join(out) + "\n"

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":  # health checks: no scrape
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        body, headers = self.collect().encode(), [("Content-Type", "text/plain; version=0.0.4")]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=3)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config.file", dest="config_file", required=True)
    parser.add_argument("--web.listen-address", dest="listen", required=True)
    args = parser.parse_args()
    server = HttpServer(NaiveExporter(load_config_file(args.config_file)), args.listen).start()
    print(f"naive exporter listening url={server.url}/metrics", flush=True)
    threading.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    main()
