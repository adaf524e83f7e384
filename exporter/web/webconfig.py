"""`--web.config.file`: TLS, client certificates and basic auth for both listeners, in
the file format of the Prometheus exporter-toolkit, so one file works across exporters.

Supported: tls_server_config (cert_file/key_file or inline cert/key, client_ca_file or
inline client_ca, client_auth_type NoClientCert, VerifyClientCertIfGiven or
RequireAndVerifyClientCert, client_allowed_sans, min_version, max_version),
http_server_config.headers, basic_auth_users (bcrypt hashes) and rate_limit. Go-specific
knobs (cipher_suites, curve_preferences, prefer_server_cipher_suites, http2) are
accepted and ignored with a warning: Python's TLS defaults are used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from exporter.config import ConfigError, Validator, load_yaml

log = logging.getLogger(__name__)

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
IGNORED_TLS_KEYS = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites")
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)
BCRYPT_PREFIX = re.compile(r"^\$2[abxy]?\$\d\d\$")
AUTH_CACHE_SIZE = 256
HANDSHAKE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class TlsSettings:
    context: ssl.SSLContext
    allowed_sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()
    rate_interval: float = 0.0  # seconds between requests; 0 = no limit
    rate_burst: int = 0


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and validate a web config file the way the main config is read (duplicate
    keys refused, every problem listed with its path); ConfigError otherwise."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["web config file does not exist"], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read web config file: {exc}"], source) from None
    document = load_yaml(text, source)
    v = Validator()
    web = _build(document or {}, Path(path).parent, v)
    if v.problems:
        raise ConfigError(v.problems, source)
    return web


def _build(document: object, base: Path, v: Validator) -> WebConfig:
    if not isinstance(document, Mapping):
        v.problem("(top level)", "must be a mapping")
        return WebConfig()
    v.mapping(
        document,
        "",
        {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"},
    )
    tls = None
    if document.get("tls_server_config") is not None:
        tls = _tls(document["tls_server_config"], base, v)
    users = _users(document.get("basic_auth_users"), v)
    headers = _headers(document.get("http_server_config"), v)
    interval, burst = _rate_limit(document.get("rate_limit"), v)
    return WebConfig(
        tls=tls, users=users, headers=headers, rate_interval=interval, rate_burst=burst
    )


def _tls(node: object, base: Path, v: Validator) -> TlsSettings | None:
    path = "tls_server_config"
    if not isinstance(node, Mapping):
        v.problem(path, "must be a mapping")
        return None
    v.mapping(
        node,
        path,
        {
            "cert",
            "key",
            "client_ca",
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "client_allowed_sans",
            "min_version",
            "max_version",
            *IGNORED_TLS_KEYS,
        },
    )
    for key in IGNORED_TLS_KEYS:
        if key in node:
            log.warning("web config %s.%s is ignored: Python's TLS defaults are used", path, key)
    before = len(v.problems)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(node.get("min_version", "TLS12"), f"{path}.min_version", v)
    context.maximum_version = _version(node.get("max_version", "TLS13"), f"{path}.max_version", v)
    cert, key = node.get("cert"), node.get("key")
    cert_file, key_file = node.get("cert_file"), node.get("key_file")
    if (cert is None) == (cert_file is None) or (key is None) == (key_file is None):
        v.problem(path, "give the certificate and the key, each as a file or inline")
    else:
        try:
            if cert_file is not None:
                context.load_cert_chain(_file(cert_file, base), _file(key_file, base))
            else:
                _load_inline_chain(context, str(cert), str(key))
        except (OSError, ssl.SSLError, TypeError) as exc:
            v.problem(path, f"cannot load the certificate and key: {_reason(exc)}")
    auth_type = node.get("client_auth_type", "NoClientCert")
    if auth_type in UNSUPPORTED_CLIENT_AUTH:
        v.problem(
            f"{path}.client_auth_type",
            f"{auth_type} is not supported (Python's TLS cannot accept a client "
            "certificate it does not verify); use RequireAndVerifyClientCert",
        )
    elif auth_type not in CLIENT_AUTH:
        v.problem(f"{path}.client_auth_type", f"must be one of {', '.join(CLIENT_AUTH)}")
    else:
        context.verify_mode = CLIENT_AUTH[auth_type]
        ca, ca_file = node.get("client_ca"), node.get("client_ca_file")
        if auth_type != "NoClientCert":
            if ca is None and ca_file is None:
                v.problem(path, f"{auth_type} needs client_ca_file or client_ca")
            try:
                if ca_file is not None:
                    context.load_verify_locations(cafile=_file(ca_file, base))
                elif ca is not None:
                    context.load_verify_locations(cadata=str(ca))
            except (OSError, ssl.SSLError, TypeError) as exc:
                v.problem(path, f"cannot load the client CA: {_reason(exc)}")
    sans = node.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        v.problem(f"{path}.client_allowed_sans", "must be a list of strings")
        sans = []
    if sans and auth_type != "RequireAndVerifyClientCert":
        v.problem(f"{path}.client_allowed_sans", "needs RequireAndVerifyClientCert")
    if len(v.problems) > before:
        return None
    return TlsSettings(context=context, allowed_sans=tuple(sans))


def _load_inline_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """ssl loads chains from files only: write inline PEM to private temporary files."""
    with tempfile.TemporaryDirectory(prefix="copyai-tls-") as directory:
        os.chmod(directory, 0o700)
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_text(cert)
        key_path.touch(mode=0o600)
        key_path.write_text(key)
        context.load_cert_chain(cert_path, key_path)


def _file(name: object, base: Path) -> str:
    if not isinstance(name, str):
        raise TypeError("file name must be a string")
    path = Path(name).expanduser()
    return str(path if path.is_absolute() else base / path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _version(value: object, path: str, v: Validator) -> ssl.TLSVersion:
    if value not in TLS_VERSIONS:
        v.problem(path, f"must be one of {', '.join(TLS_VERSIONS)}")
        return ssl.TLSVersion.TLSv1_2
    return TLS_VERSIONS[value]  # type: ignore[index]


def _users(node: object, v: Validator) -> dict[str, bytes]:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        v.problem("basic_auth_users", "must be a mapping of user name to bcrypt hash")
        return {}
    users: dict[str, bytes] = {}
    for name, hashed in node.items():
        if not isinstance(name, str) or not name or ":" in name:
            v.problem("basic_auth_users", "user names must be non-empty, without ':'")
            continue
        if not isinstance(hashed, str) or not BCRYPT_PREFIX.match(hashed):
            # the value is not repeated: it may be a password pasted by mistake
            v.problem(f"basic_auth_users.{name}", "is not a bcrypt hash ($2y$10$...)")
            continue
        users[name] = hashed.encode()
    return users


def _headers(node: object, v: Validator) -> tuple[tuple[str, str], ...]:
    if node is None:
        return ()
    if not isinstance(node, Mapping):
        v.problem("http_server_config", "must be a mapping")
        return ()
    v.mapping(node, "http_server_config", {"headers", "http2"})
    headers = node.get("headers") or {}
    if not isinstance(headers, Mapping):
        v.problem("http_server_config.headers", "must be a mapping")
        return ()
    result = []
    for name, value in headers.items():
        if name not in ALLOWED_HEADERS:
            v.problem(
                f"http_server_config.headers.{name}", f"not one of {', '.join(ALLOWED_HEADERS)}"
            )
        elif not isinstance(value, str) or any(c in value for c in "\r\n"):
            v.problem(f"http_server_config.headers.{name}", "must be a one-line string")
        elif value:
            result.append((str(name), value))
    return tuple(result)


def _rate_limit(node: object, v: Validator) -> tuple[float, int]:
    if node is None:
        return 0.0, 0
    if not isinstance(node, Mapping):
        v.problem("rate_limit", "must be a mapping")
        return 0.0, 0
    v.mapping(node, "rate_limit", {"interval", "burst"})
    text = str(node.get("interval", "0s"))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text)
    if not match:
        v.problem("rate_limit.interval", "must be a duration like 1s or 200ms")
        return 0.0, 0
    interval = (
        float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    )
    burst = node.get("burst", 1)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        v.problem("rate_limit.burst", "must be a positive integer")
        return 0.0, 0
    return interval, burst


# --- applying it ---------------------------------------------------------------------


class WebGuard:
    """WSGI middleware for basic auth, response headers and the request rate limit.

    Verifying a bcrypt hash costs tens of milliseconds; a success is cached (keyed by a
    SHA-256 of user and password, never the password itself), as exporter-toolkit does.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], web: Callable[[], WebConfig]):
        self._app = app
        self._web = web
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, bytes] = OrderedDict()
        self._tokens: float | None = None  # the bucket starts full
        self._last = time.monotonic()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        web = self._web()
        extra = list(web.headers)

        def respond(status: str, headers: list[tuple[str, str]], exc_info=None):
            return start_response(status, [*headers, *extra], exc_info)

        if web.rate_interval > 0 and not self._take_token(web):
            return _plain(respond, "429 Too Many Requests", "Too Many Requests\n")
        if web.users and not self._authorized(environ.get("HTTP_AUTHORIZATION", ""), web):
            return _plain(
                respond,
                "401 Unauthorized",
                "Unauthorized\n",
                [("WWW-Authenticate", 'Basic realm="copyai-exporter", charset="UTF-8"')],
            )
        return self._app(environ, respond)

    def _take_token(self, web: WebConfig) -> bool:
        with self._lock:
            now = time.monotonic()
            tokens = float(web.rate_burst) if self._tokens is None else self._tokens
            self._tokens = min(
                float(web.rate_burst), tokens + (now - self._last) / web.rate_interval
            )
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

    def _authorized(self, header: str, web: WebConfig) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        hashed = web.users.get(user)
        if not sep or hashed is None:
            _burn_time(password)  # unknown user: no faster answer than a wrong password
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        with self._lock:
            if self._verified.get(key) == hashed:
                self._verified.move_to_end(key)
                return True
        try:
            ok = bcrypt.checkpw(password.encode()[:72], hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._verified[key] = hashed
                while len(self._verified) > AUTH_CACHE_SIZE:
                    self._verified.popitem(last=False)
        return ok


_dummy_hash: list[bytes] = []


def _burn_time(password: str) -> None:
    if not _dummy_hash:
        _dummy_hash.append(bcrypt.hashpw(b"unused", bcrypt.gensalt(10)))
    bcrypt.checkpw(password.encode()[:72], _dummy_hash[0])


def _plain(respond, status: str, body: str, headers: list[tuple[str, str]] | None = None):
    payload = body.encode()
    respond(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(payload))),
            *(headers or []),
        ],
    )
    return [payload]


def peer_allowed(sock: ssl.SSLSocket, allowed: tuple[str, ...]) -> bool:
    """client_allowed_sans: the verified client certificate names one of them."""
    if not allowed:
        return True
    cert = sock.getpeercert() or {}
    names = {value for _, value in cert.get("subjectAltName", ())}
    return bool(names & set(allowed))


class WebState:
    """The web config in force; replaced on reload."""

    def __init__(self, path: str | None):
        self.path = path
        self.current = load_web_config(path) if path else WebConfig()

    def reload(self) -> None:
        if self.path:
            new = load_web_config(self.path)
            if (new.tls is None) != (self.current.tls is None):
                log.warning("turning TLS on or off takes effect at the next restart")
            self.current = new
