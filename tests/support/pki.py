"""A throwaway certificate authority for TLS tests, made with the openssl command: a
server certificate for 127.0.0.1, client certificates (one allowed, one not, one from
another CA), and web config files that use them."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Path:
    """ca and other-ca; server (127.0.0.1, localhost) and, as clients, prometheus and
    intruder from ca, stranger (prometheus.internal) from other-ca."""
    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            cwd=directory,
        )

    def issue(name: str, ca: str, san: str, usage: str) -> None:
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=directory,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.crt",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
            cwd=directory,
        )

    issue("server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    issue("prometheus", "ca", "DNS:prometheus.internal", "clientAuth")
    issue("intruder", "ca", "DNS:intruder.internal", "clientAuth")
    issue("stranger", "other-ca", "DNS:prometheus.internal", "clientAuth")
    return directory


def web_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def tls_config(pki: Path, extra: str = "") -> str:
    return (
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n{extra}"
    )
