"""The one HTTPS server of the Device Data Recorder: FHIR resource server, authorization
server, patient portal and dashboard, assembled (DESIGN.md "Web layout")::

    /fhir/...                                   HDDT FHIR resource server (bridge.hddt.app)
    /.well-known/oauth-authorization-server, /par, /authorize, /token, /revoke, /jwks
                                                authorization server (bridge.auth)
    /portal/...                                 patient portal (bridge.auth.portal)
    /dashboard/...                              maker/developer dashboard (bridge.dashboard)

:func:`create_app` builds the ASGI application; :func:`serve` runs it with TLS (client
certificates requested, ``CERT_OPTIONAL``, and handed to the application by
:class:`bridge.auth.tls.ClientCertH11Protocol`); :class:`HttpsServer` runs it in a background
thread (tests, the demo). The helpers at the end are the small API the demo uses: register
the demo DiGA, create a patient's portal login, issue the sandbox PKI.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from bridge.auth.accounts import add_account
from bridge.auth.directory import DigaClient, get_client, list_clients, register_client
from bridge.auth.directory import update_client as _update_client
from bridge.auth.errors import AuthError
from bridge.auth.pki import HddtPki, issue_hddt_pki
from bridge.auth.portal import portal_routes
from bridge.auth.routes import auth_routes
from bridge.auth.server import HddtAuthorizationServer
from bridge.auth.settings import AuthSecrets, AuthSettings
from bridge.auth.tls import ClientCertH11Protocol, TrustedProxyMiddleware
from bridge.auth.tokens import JwtAccessResolver
from bridge.backend.store import Store

log = logging.getLogger(__name__)


def _optional(module: str, name: str) -> Any | None:
    """``module.name`` when that module exists (the FHIR app and dashboard are optional)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return None


def create_app(store: Store, settings: AuthSettings, *, hddt_settings: Any | None = None,
               dashboard: bool = True, dashboard_auth: Any | None = None,
               secrets: AuthSecrets | None = None) -> FastAPI:
    """The whole web application over ``store``.

    ``settings.issuer`` is the server's public base URL and ``settings.audience`` the FHIR
    base URL (``<issuer>/fhir``). ``hddt_settings`` (a :class:`bridge.hddt.settings.
    HddtSettings`, default values when None) configures the resource server;
    ``dashboard_auth`` (a :class:`bridge.dashboard.auth.BasicAuth`) protects the dashboard.
    """
    secrets = secrets or AuthSecrets.load(settings.state_dir)
    server = HddtAuthorizationServer(store, settings, secrets)
    resolver = JwtAccessResolver(store, server.signer)
    closers: list[Any] = [resolver.close]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Mounted applications get no lifespan events: close what they hold here.
        for close in closers:
            close()

    app = FastAPI(title="hddt-bridge", openapi_url=None, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.router.routes.extend(auth_routes(server))
    app.router.routes.extend(portal_routes(server))
    create_fhir_app = _optional("bridge.hddt.app", "create_fhir_app")
    if create_fhir_app is not None:
        if hddt_settings is None:
            hddt_settings = importlib.import_module("bridge.hddt.settings").HddtSettings()
        fhir = create_fhir_app(store, hddt_settings, resolver, base_url=settings.audience)
        fhir_state = getattr(fhir.state, "hddt", None)
        if fhir_state is not None:  # the audit queue and the read connections
            closers.append(fhir_state.close)
        app.mount("/fhir", fhir)
    create_dashboard_app = _optional("bridge.dashboard.app", "create_dashboard_app")
    if dashboard and create_dashboard_app is not None:
        app.mount("/dashboard", create_dashboard_app(
            store, portal_url=f"{settings.issuer}/portal/pairings",
            fhir_base_url=settings.audience, basic_auth=dashboard_auth))
    if settings.trusted_proxies:
        app.add_middleware(TrustedProxyMiddleware, proxies=settings.trusted_proxies,
                           header=settings.proxy_cert_header)
    app.state.auth_server = server
    app.state.access_resolver = resolver
    return app


# --- TLS ------------------------------------------------------------------------------------

def client_trust_bundle(store: Store, ca_files: Iterable[Path], out: Path) -> Path:
    """Write the client-certificate trust store: the given CA files plus every registered
    DiGA certificate (a self-signed one is its own anchor; security-and-privacy.md (c)
    suggests such a DiGA trust space for the TLS library). The application still checks each
    certificate against the directory entry of the ``client_id``."""
    parts = []
    for path in ca_files:
        try:
            parts.append(path.read_text(encoding="ascii").strip())
        except OSError as exc:
            raise AuthError(f"cannot read CA file {path}: {exc.strerror or exc}") from None
    with store.begin() as conn:
        parts += [c.certificate_pem.strip() for c in list_clients(conn) if c.active]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(p for p in parts if p) + "\n", encoding="ascii")
    return out


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Server certificate and key, and the file of trusted client certificate issuers."""

    cert: Path
    key: Path
    client_ca: Path


def uvicorn_config(app: Any, *, host: str, port: int, tls: TlsFiles,
                   log_level: str = "warning", **extra: Any) -> uvicorn.Config:
    """uvicorn settings for the HDDT server: TLS 1.2+ (BSI TR-02102-2), client certificates
    requested but optional, the certificate-publishing h11 protocol."""
    config = uvicorn.Config(
        app, host=host, port=port, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key),
        ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL,
        http=ClientCertH11Protocol, log_level=log_level, lifespan="on",
        proxy_headers=False, server_header=False, **extra)
    return config


#: TLS 1.2 cipher suites kept (BSI TR-02102-2: ECDHE key exchange, AEAD ciphers); the TLS 1.3
#: suites are fixed by OpenSSL and all acceptable.
TLS12_CIPHERS = "ECDHE+AESGCM"


def _harden(config: uvicorn.Config) -> None:
    # BSI TR-02102-2 (security-and-privacy.md "Secure Communication via mTLS"): TLS 1.2 or
    # 1.3 only, forward secrecy and authenticated encryption.
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        config.ssl.set_ciphers(TLS12_CIPHERS)


class ClientTrustRefresher:
    """Adds DiGA certificates registered while the server runs to its live TLS trust store.

    The client trust store starts as the CA files plus every registered certificate
    (:func:`client_trust_bundle`), so a self-signed DiGA certificate passes the handshake.
    The directory may change while the server runs (``hddt-bridge auth diga add`` from another
    process): every ``interval_s`` the active entries are read and certificates not yet known
    are loaded into the server's ``SSLContext``, which new handshakes use at once. Anchors are
    only ever added (OpenSSL cannot take one out of a live context); a deactivated or changed
    entry is refused anyway, because the application compares every presented certificate
    with the active directory entry of its ``client_id`` (``authenticate_tls_client``,
    ``JwtAccessResolver``).
    """

    def __init__(self, store: Store, context: ssl.SSLContext, *,
                 interval_s: float = 30.0) -> None:
        if interval_s <= 0:
            raise AuthError(f"the trust refresh interval must be > 0 s, got {interval_s}")
        self.store = store
        self.context = context
        self.interval_s = interval_s
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> int:
        """Load the certificates of active entries not loaded yet; how many were added."""
        with self.store.begin() as conn:
            clients = [c for c in list_clients(conn) if c.active]
        added = 0
        for client in clients:
            pem = client.certificate_pem.strip()
            if not pem or pem in self._known:
                continue
            try:
                self.context.load_verify_locations(cadata=pem)
            except ssl.SSLError as exc:  # refused at registration already; never fatal here
                log.warning("certificate of %s not added to the trust store: %s",
                            client.client_id, exc)
                continue
            self._known.add(pem)
            added += 1
        return added

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                added = self.refresh()
            except Exception:  # a store hiccup must not end the refresher
                log.exception("refreshing the client trust store failed")
                continue
            if added:
                log.info("%d DiGA certificate(s) added to the client trust store", added)

    def start(self) -> ClientTrustRefresher:
        self._thread = threading.Thread(target=self._run, name="hddt-trust", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def serve(app: Any, *, host: str, port: int, tls: TlsFiles, log_level: str = "info",
          store: Store | None = None, trust_refresh_s: float = 30.0) -> None:
    """Run ``app`` over HTTPS until interrupted (Ctrl-C, SIGTERM); with ``store``, DiGA
    certificates registered meanwhile join the trust store (:class:`ClientTrustRefresher`)."""
    config = uvicorn_config(app, host=host, port=port, tls=tls, log_level=log_level)
    _harden(config)
    refresher = None
    if store is not None and config.ssl is not None:
        refresher = ClientTrustRefresher(store, config.ssl, interval_s=trust_refresh_s).start()
    try:
        uvicorn.Server(config).run()
    finally:
        if refresher is not None:
            refresher.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class HttpsServer:
    """``app`` served over HTTPS by uvicorn in a background thread; with ``store``, DiGA
    certificates registered while it runs join its trust store (:class:`ClientTrustRefresher`,
    every ``trust_refresh_s``)."""

    def __init__(self, app: Any, *, tls: TlsFiles, host: str = "127.0.0.1",
                 port: int | None = None, store: Store | None = None,
                 trust_refresh_s: float = 30.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.config = uvicorn_config(app, host=host, port=self.port, tls=tls)
        _harden(self.config)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="hddt-https",
                                       daemon=True)
        self.refresher = (ClientTrustRefresher(store, self.config.ssl,
                                               interval_s=trust_refresh_s)
                          if store is not None and self.config.ssl is not None else None)

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> HttpsServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AuthError(f"the HTTPS server did not start on {self.base_url}")
            time.sleep(0.02)
        if self.refresher is not None:
            self.refresher.start()
        return self

    def stop(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> HttpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the small API the demo uses ------------------------------------------------------------

def issue_pki(directory: Path, digas: Sequence[str] = (), *,
              server_names: Sequence[str] = ()) -> HddtPki:
    """The sandbox PKI in ``directory``: CA, server certificate, DiGA client certificates."""
    return issue_hddt_pki(directory, digas, server_names=server_names)


def register_diga(store: Store, client_id: str, *, name: str, redirect_uris: Sequence[str],
                  scopes: Iterable[str], certificate_pem: str,
                  actor: str = "demo") -> DigaClient:
    """Register a DiGA in the directory, or bring an existing entry up to date."""
    with store.begin() as conn:
        if get_client(conn, client_id) is None:
            return register_client(conn, client_id, name=name, redirect_uris=redirect_uris,
                                   scopes=scopes, certificate_pem=certificate_pem,
                                   actor=actor)
        return _update_client(conn, client_id, actor=actor, name=name,
                              redirect_uris=redirect_uris, scopes=scopes,
                              certificate_pem=certificate_pem, active=True)


def create_portal_account(store: Store, username: str, password: str, *, patient_id: str,
                          actor: str = "demo") -> None:
    """A portal login for an already provisioned patient."""
    with store.begin() as conn:
        add_account(conn, username, password, patient_id=patient_id, actor=actor)
