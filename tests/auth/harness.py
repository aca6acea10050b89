"""A real HDDT server over TLS for tests: store, sandbox PKI, registered DiGAs, portal
accounts, uvicorn on a free port, and the DiGA and browser sides of the pairing flow.

    with running_sandbox(tmp_path) as box:
        tokens = box.pair(DIGA_A, "alice")          # PAR -> portal login + consent -> /token
        r = box.diga(DIGA_A).get(box.fhir_url + "/Observation",
                                 headers=bearer(tokens["access_token"]))
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization

from bridge.auth.pki import HddtPki, new_client_certificate
from bridge.auth.scopes import SUPPORTED_SCOPES
from bridge.auth.settings import AuthSecrets, AuthSettings
from bridge.backend import registry
from bridge.backend.store import Store
from bridge.hddt.access import (
    MIV_BLOOD_GLUCOSE,
    MIV_CONTINUOUS_GLUCOSE,
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
    observation_scope,
)
from bridge.web import (
    HttpsServer,
    TlsFiles,
    client_trust_bundle,
    create_app,
    create_portal_account,
    free_port,
    issue_pki,
    register_diga,
)

DIGA_A = "urn:diga:bfarm:10001"
DIGA_B = "urn:diga:bfarm:10002"
BG = observation_scope(MIV_BLOOD_GLUCOSE)
CGM = observation_scope(MIV_CONTINUOUS_GLUCOSE)
ALL_GLUCOSE = (BG, CGM, SCOPE_DEVICE, SCOPE_DEVICE_METRIC)
PASSWORD = "correct horse battery"


def redirect_uri(client_id: str) -> str:
    return f"https://diga-{client_id[-5:]}.example/callback"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def form_value(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match is not None, f"no {name} field in the page"
    return match.group(1).replace("&amp;", "&").replace("&#34;", '"')


@dataclass
class Pending:
    """A pushed authorization request on its way through the browser."""

    client_id: str
    request_uri: str
    verifier: str
    state: str
    redirect_uri: str


@dataclass
class Sandbox:
    store: Store
    settings: AuthSettings
    pki: HddtPki
    server: HttpsServer
    tmp: Path
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def fhir_url(self) -> str:
        return self.settings.audience

    def tls_context(self, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx

    def _client(self, key: str, cert: tuple[Path, Path] | None) -> httpx.Client:
        if key not in self.clients:
            self.clients[key] = httpx.Client(verify=self.tls_context(cert), timeout=30.0,
                                             follow_redirects=False)
        return self.clients[key]

    def diga(self, client_id: str) -> httpx.Client:
        """The DiGA backend's mTLS client (its sandbox or self-signed certificate)."""
        own = self.tmp / "self-signed" / f"{client_id[-5:]}.pem"
        if own.exists():
            return self._client(client_id, (own, own.with_suffix(".key")))
        pair = self.pki.diga(client_id)
        return self._client(client_id, (pair.cert, pair.key))

    def with_cert(self, cert: Path, key: Path) -> httpx.Client:
        return self._client(str(cert), (cert, key))

    def anonymous(self) -> httpx.Client:
        """A client without certificate."""
        return self._client("anonymous", None)

    def browser(self, base_url: str | None = None) -> httpx.Client:
        """A fresh user agent (own cookies, no client certificate), for this server or the
        one at ``base_url``."""
        ua = httpx.Client(verify=self.tls_context(None), timeout=30.0,
                          follow_redirects=False, base_url=base_url or self.base_url)
        self.clients[f"browser-{len(self.clients)}"] = ua
        return ua

    # -- the DiGA side ---------------------------------------------------------------------

    def par(self, client_id: str, scopes: Sequence[str] = ALL_GLUCOSE, *,
            client: httpx.Client | None = None, **extra: str) -> httpx.Response:
        verifier, challenge = pkce_pair()
        data = {"client_id": client_id, "scope": " ".join(scopes),
                "code_challenge": challenge, "code_challenge_method": "S256",
                "redirect_uri": redirect_uri(client_id), "state": secrets.token_urlsafe(8),
                "response_type": "code", **extra}
        response = (client or self.diga(client_id)).post(f"{self.base_url}/par", data=data)
        response.extensions["pkce_verifier"] = verifier
        response.extensions["sent"] = data
        return response

    def push(self, client_id: str, scopes: Sequence[str] = ALL_GLUCOSE,
             **extra: str) -> Pending:
        response = self.par(client_id, scopes, client=None, **extra)
        assert response.status_code == 201, response.text
        sent = response.extensions["sent"]
        return Pending(client_id, response.json()["request_uri"],
                       response.extensions["pkce_verifier"], sent["state"],
                       sent["redirect_uri"])

    # -- the patient's browser -------------------------------------------------------------

    def consent(self, pending: Pending, username: str,
                grant: Sequence[str] | None = None, *, deny: bool = False,
                browser: httpx.Client | None = None) -> dict[str, str]:
        """Log in and decide in the portal; returns the DiGA callback's query parameters."""
        ua = browser or self.browser()
        path = f"/authorize?client_id={pending.client_id}&request_uri={pending.request_uri}"
        page = ua.get(path)
        assert page.status_code == 200, page.text
        if 'action="/portal/login"' in page.text:
            login = ua.post("/portal/login", data={
                "csrf": form_value(page.text, "csrf"), "next": form_value(page.text, "next"),
                "username": username, "password": PASSWORD})
            assert login.status_code == 303, login.text
            page = ua.get(login.headers["location"])
            assert page.status_code == 200, page.text
        offered = re.findall(r'name="scope" value="([^"]*)"', page.text)
        chosen = offered if grant is None else list(grant)
        data: dict[str, str | list[str]] = {
            "csrf": form_value(page.text, "csrf"), "client_id": pending.client_id,
            "request_uri": pending.request_uri, "decision": "deny" if deny else "allow",
            "scope": chosen}
        decided = ua.post("/authorize", data=data)
        assert decided.status_code == 303, decided.text
        location = decided.headers["location"]
        assert location.startswith(pending.redirect_uri + "?"), location
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def exchange(self, pending: Pending, code: str, *, verifier: str | None = None,
                 client: httpx.Client | None = None) -> httpx.Response:
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": pending.redirect_uri, "client_id": pending.client_id,
                "code_verifier": pending.verifier if verifier is None else verifier}
        if verifier == "":
            del data["code_verifier"]
        return (client or self.diga(pending.client_id)).post(f"{self.base_url}/token",
                                                            data=data)

    def refresh(self, client_id: str, refresh_token: str, *,
                client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.diga(client_id)).post(f"{self.base_url}/token", data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": client_id})

    def revoke(self, client_id: str, token: str, *,
               client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.diga(client_id)).post(f"{self.base_url}/revoke", data={
            "client_id": client_id, "token": token, "token_type_hint": "refresh_token"})

    def pair(self, client_id: str, username: str, scopes: Sequence[str] = ALL_GLUCOSE,
             grant: Sequence[str] | None = None, **extra: str) -> dict[str, Any]:
        """The whole pairing: PAR, portal consent, code exchange; the token response."""
        pending = self.push(client_id, scopes, **extra)
        callback = self.consent(pending, username, grant)
        assert callback["state"] == pending.state
        response = self.exchange(pending, callback["code"])
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def foreign_certificate(self, client_id: str) -> tuple[Path, Path]:
        """A self-signed certificate for ``client_id`` that no trust store knows."""
        return self_signed_certificate(self.tmp / "foreign", client_id)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def self_signed_certificate(folder: Path, client_id: str) -> tuple[Path, Path]:
    """A self-signed DiGA client certificate and key in ``folder``."""
    key, cert = new_client_certificate(None, None, client_id)
    folder.mkdir(exist_ok=True)
    cert_path, key_path = folder / f"{client_id[-5:]}.pem", folder / f"{client_id[-5:]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def running_sandbox(tmp: Path, *, digas: Mapping[str, Sequence[str]] | None = None,
                    unregistered: Sequence[str] = (), self_signed: Sequence[str] = (),
                    patients: Sequence[str] = ("alice",),
                    access_token_lifetime_s: int = 600, url: str | None = None,
                    hddt_settings: Any | None = None,
                    auth: Mapping[str, Any] | None = None) -> Iterator[Sandbox]:
    """A store (SQLite in ``tmp`` unless ``url``), PKI, the DiGAs ``digas`` (client id ->
    allowed scopes; default A and B with every glucose scope) registered and
    ``unregistered`` ones with certificates only, those of ``self_signed`` registered with a
    self-signed certificate of their own (all scopes), a provisioned patient with a portal login
    (user name = patient id) per name in ``patients``, and the server running; ``auth``
    sets further :class:`AuthSettings` fields."""
    digas = {DIGA_A: ALL_GLUCOSE, DIGA_B: ALL_GLUCOSE} if digas is None else digas
    pki = issue_pki(tmp / "pki", [*digas, *unregistered])
    store = Store.open(url or f"sqlite:///{tmp / 'backend.sqlite'}")
    with store.begin() as conn:
        for patient in patients:
            registry.provision_patient(conn, patient, actor="test")
    for patient in patients:
        create_portal_account(store, patient, PASSWORD, patient_id=patient, actor="test")
    for client_id, scopes in digas.items():
        register_diga(store, client_id, name=f"DiGA {client_id[-5:]}",
                      redirect_uris=[redirect_uri(client_id)], scopes=scopes,
                      certificate_pem=pki.diga(client_id).cert.read_text(), actor="test")
    for client_id in self_signed:
        cert, _ = self_signed_certificate(tmp / "self-signed", client_id)
        register_diga(store, client_id, name=f"DiGA {client_id[-5:]}",
                      redirect_uris=[redirect_uri(client_id)], scopes=ALL_GLUCOSE,
                      certificate_pem=cert.read_text(), actor="test")
    port = free_port()  # the issuer URL names the port, so it is chosen before the app
    base = f"https://127.0.0.1:{port}"
    settings = AuthSettings(issuer=base, audience=f"{base}/fhir", state_dir=tmp / "auth",
                            access_token_lifetime_s=access_token_lifetime_s, **(auth or {}))
    app = create_app(store, settings, hddt_settings=hddt_settings, dashboard=False,
                     secrets=AuthSecrets.load(settings.state_dir))
    trust = client_trust_bundle(store, [pki.ca.cert], tmp / "client-trust.pem")
    server = HttpsServer(app, tls=TlsFiles(pki.server.cert, pki.server.key, trust),
                         port=port, store=store, trust_refresh_s=3600).start()
    box = Sandbox(store, settings, pki, server, tmp)
    try:
        yield box
    finally:
        box.close()
        server.stop()
        store.close()


__all__ = ["ALL_GLUCOSE", "BG", "CGM", "DIGA_A", "DIGA_B", "PASSWORD", "SUPPORTED_SCOPES",
           "Sandbox", "bearer", "redirect_uri", "running_sandbox"]
