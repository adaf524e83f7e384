"""--web.config.file: TLS, client certificates and basic auth on both listeners, tested
with real TLS clients on loopback (certificates made with the openssl command)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys

import bcrypt
import pytest
import requests

from exporter.config import build_config
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer
from exporter.web.webconfig import WebState
from exporter.web.webhooks import WebhookApp
from tests.support.exporters import API_KEY, make_config
from tests.support.pki import tls_config, web_file

PASSWORD = "s3cret-scrape-password"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture
def serve(sim, world, tmp_path):
    started: list = []
    world.add_workflow("w", "WCFG-web")
    world.add_run("WCFG-web", [("COMPLETE", None)], credits=1)
    config = make_config(
        {
            "api": {"base_url": sim.base_url},
            "workflows": [{"id": "WCFG-web", "runs": list(world.runs["WCFG-web"])}],
        }
    )
    from exporter.runtime import Exporter

    exporter = Exporter(config, process_metrics=False)

    def start(web_text: str, app=None) -> HttpServer:
        web = WebState(web_file(tmp_path, web_text))
        app = app or ExporterApp(exporter, WebOptions(), lambda: (True, ""))
        server = HttpServer(app, "127.0.0.1:0", web).start()
        started.append(server)
        return server

    start.exporter = exporter  # type: ignore[attr-defined]
    yield start
    for server in started:
        server.stop()
    exporter.close()


def test_tls_serves_metrics_and_refuses_plain_http(pki, serve):
    server = serve(tls_config(pki))
    assert server.url.startswith("https://")
    answer = requests.get(f"{server.url}/metrics", verify=pki / "ca.crt", timeout=10)
    assert answer.status_code == 200
    assert "copyai_up" in answer.text
    plain = server.url.replace("https://", "http://")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{plain}/metrics", timeout=10)
    # and the listener is still fine afterwards
    assert requests.get(f"{server.url}/-/healthy", verify=pki / "ca.crt", timeout=10).ok


def test_client_certificates_are_required_and_verified(pki, serve):
    server = serve(
        tls_config(
            pki,
            (
                "  client_auth_type: RequireAndVerifyClientCert\n"
                f"  client_ca_file: {pki}/ca.crt\n"
                "  client_allowed_sans: [prometheus.internal]\n"
            ),
        )
    )
    url, ca = f"{server.url}/metrics", pki / "ca.crt"
    ok = requests.get(
        url, verify=ca, cert=(pki / "prometheus.crt", pki / "prometheus.key"), timeout=10
    )
    assert ok.status_code == 200
    for cert in (None, ("stranger.crt", "stranger.key"), ("intruder.crt", "intruder.key")):
        # no certificate; one from another CA; one from our CA but not an allowed SAN
        client_cert = (pki / cert[0], pki / cert[1]) if cert else None
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=ca, cert=client_cert, timeout=10)


def test_basic_auth_right_and_wrong_passwords(pki, serve):
    server = serve(tls_config(pki, f"basic_auth_users:\n  prometheus: {HASH}\n"))
    url, ca = f"{server.url}/metrics", pki / "ca.crt"
    assert (
        requests.get(url, verify=ca, auth=("prometheus", PASSWORD), timeout=10).status_code == 200
    )
    # twice: the second answer comes from the verified-password cache
    assert (
        requests.get(url, verify=ca, auth=("prometheus", PASSWORD), timeout=10).status_code == 200
    )
    for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), None):
        answer = requests.get(url, verify=ca, auth=auth, timeout=10)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="copyai-exporter"')
        assert "copyai_up" not in answer.text
    garbled = requests.get(url, verify=ca, headers={"Authorization": "Basic !!!"}, timeout=10)
    assert garbled.status_code == 401


def test_the_webhook_listener_is_protected_alike(pki, serve, tmp_path):
    config = build_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},
            "workflows": [{"id": "WCFG-web"}],
            "webhooks": {"listen_address": "127.0.0.1:0"},
        },
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": "t" * 20},
    )
    exporter = serve.exporter
    receiver = WebhookApp(lambda: config.webhooks, exporter)
    server = serve(tls_config(pki, f"basic_auth_users:\n  copyai: {HASH}\n"), app=receiver)
    body = {"type": "workflowCreditLimit.reached", "workflowId": "WCFG-web"}
    url, ca = f"{server.url}/webhook/{'t' * 20}", pki / "ca.crt"
    assert requests.post(url, json=body, verify=ca, timeout=10).status_code == 401
    assert (
        requests.post(url, json=body, verify=ca, auth=("copyai", PASSWORD), timeout=10).status_code
        == 202
    )


def test_security_headers_and_rate_limit(serve):
    server = serve(
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    X-Content-Type-Options: nosniff\n"
        "rate_limit:\n  interval: 1h\n  burst: 3\n"
    )
    codes = []
    for _ in range(5):
        answer = requests.get(f"{server.url}/-/healthy", timeout=10)
        codes.append(answer.status_code)
        assert answer.headers["X-Frame-Options"] == "deny"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert codes == [200, 200, 200, 429, 429]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "tls_server_config: cannot load the certificate and key",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n",
            "tls_server_config: give the certificate and the key",
        ),
        (
            "basic_auth_users:\n  alice: plaintext-password\n",
            "basic_auth_users.alice: is not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: x\n  key_file: y\n"
            "  client_auth_type: RequireAnyClientCert\n",
            "client_auth_type: RequireAnyClientCert is not supported",
        ),
        ("bogus: 1\n", "bogus: unknown key"),
        ("rate_limit:\n  interval: soon\n", "rate_limit.interval: must be a duration"),
        (  # refused as in the main config, not the last one silently kept
            "rate_limit:\n  burst: 1\nrate_limit:\n  burst: 5\n",
            "duplicate key 'rate_limit' (first at line 1)",
        ),
    ],
)
def test_invalid_web_config_exits_2_with_the_problem(tmp_path, text, expected):
    config = tmp_path / "config.yaml"
    config.write_text("workflows: [{id: WCFG-1}]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.config.file",
            web_file(tmp_path, text),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "COPYAI_API_KEY": API_KEY},
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "plaintext-password" not in result.stderr


def test_the_cli_serves_tls_with_basic_auth(pki, tmp_path, sim, world):
    world.add_workflow("w", "WCFG-cli")
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {{base_url: '{sim.base_url}'}}\nworkflows: [{{id: WCFG-cli}}]\n")
    web = web_file(tmp_path, tls_config(pki, f"basic_auth_users:\n  prometheus: {HASH}\n"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.config.file",
            web,
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COPYAI_API_KEY": API_KEY},
    )
    try:
        line = ""
        while "listening url=" not in line:
            line = process.stderr.readline()
            assert line, "exporter exited"
        assert re.search(r"url=https://127\.0\.0\.1:\d+/metrics", line)
        url = f"https://127.0.0.1:{port}/metrics"
        ca = pki / "ca.crt"
        assert requests.get(url, verify=ca, timeout=10).status_code == 401
        answer = requests.get(url, verify=ca, auth=("prometheus", PASSWORD), timeout=10)
        assert answer.status_code == 200
        assert "copyai_up" in answer.text
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


def test_plain_tcp_garbage_to_the_tls_port_does_not_hurt(pki, serve):
    server = serve(tls_config(pki))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            data = raw.recv(1024)
        except ConnectionResetError:  # what most TLS servers answer to plain HTTP
            data = b""
    assert b"copyai_up" not in data
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as secure,
    ):
        secure.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        assert b"200 OK" in secure.recv(1024)
