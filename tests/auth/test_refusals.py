"""Every refusal the HDDT pairing and token use must give, over real TLS: client
certificates, PAR, PKCE, codes, redirect URIs, refresh replay, consent, scopes, tokens of
another DiGA, signed-JWT checks, CSRF and open redirects."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bridge.auth import server as as_server
from bridge.auth import tokens as as_tokens
from bridge.auth.settings import AuthSecrets, AuthSettings
from bridge.auth.tables import pairings
from bridge.auth.tokens import TokenSigner
from bridge.web import register_diga
from tests.auth.data import seed_glucose
from tests.auth.harness import (
    BG,
    CGM,
    DIGA_A,
    DIGA_B,
    PASSWORD,
    Sandbox,
    bearer,
    form_value,
    redirect_uri,
    running_sandbox,
)

DIGA_BG_ONLY = "urn:diga:bfarm:10003"
DIGA_UNREGISTERED = "urn:diga:bfarm:10004"
DIGA_RETIRED = "urn:diga:bfarm:10005"
DIGA_SELF_SIGNED = "urn:diga:bfarm:10006"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    from tests.auth.harness import ALL_GLUCOSE

    digas = {DIGA_A: ALL_GLUCOSE, DIGA_B: ALL_GLUCOSE, DIGA_BG_ONLY: (BG,),
             DIGA_RETIRED: ALL_GLUCOSE}
    with running_sandbox(tmp_path_factory.mktemp("refusals"), digas=digas,
                         unregistered=[DIGA_UNREGISTERED], self_signed=[DIGA_SELF_SIGNED],
                         patients=("alice", "bob")) as box:
        seed_glucose(box.store, "alice", value=111.0, now=dt.datetime.now(dt.UTC))
        yield box


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body: dict[str, Any] = response.json()
    return response.status_code, body["error"], body.get("error_description", "")


def fhir(box: Sandbox, client: httpx.Client, token: str) -> httpx.Response:
    return client.get(f"{box.fhir_url}/Observation", headers=bearer(token))


# --- client certificates ---------------------------------------------------------------------

def test_unregistered_certificate_is_refused(box: Sandbox) -> None:
    # Issued by the trusted CA, so TLS accepts it; the directory does not know the DiGA.
    client = box.diga(DIGA_UNREGISTERED)
    response = box.par(DIGA_UNREGISTERED, client=client)
    assert error_of(response) == (401, "invalid_client", as_server.NOT_REGISTERED)


def test_certificate_of_another_diga_is_refused(box: Sandbox) -> None:
    response = box.par(DIGA_A, client=box.diga(DIGA_B))
    assert error_of(response) == (401, "invalid_client", as_server.NOT_REGISTERED)
    pending = box.push(DIGA_A)
    callback = box.consent(pending, "alice")
    exchanged = box.exchange(pending, callback["code"], client=box.diga(DIGA_B))
    assert error_of(exchanged) == (401, "invalid_client", as_server.NOT_REGISTERED)


def test_no_certificate_is_refused(box: Sandbox) -> None:
    response = box.par(DIGA_A, client=box.anonymous())
    assert error_of(response) == (401, "invalid_client", as_server.NO_CERTIFICATE)
    tokens = box.pair(DIGA_A, "alice")
    assert fhir(box, box.anonymous(), tokens["access_token"]).status_code == 401
    assert box.refresh(DIGA_A, tokens["refresh_token"],
                       client=box.anonymous()).status_code == 401


def test_self_signed_registered_certificate_is_accepted(box: Sandbox) -> None:
    # security-and-privacy.md: a DiGA may use a self-signed certificate; the directory entry
    # holds exactly that certificate.
    tokens = box.pair(DIGA_SELF_SIGNED, "alice")
    assert fhir(box, box.diga(DIGA_SELF_SIGNED), tokens["access_token"]).status_code == 200
    assert fhir(box, box.diga(DIGA_A), tokens["access_token"]).status_code == 401


def test_untrusted_certificate_fails_the_handshake(box: Sandbox) -> None:
    cert, key = box.foreign_certificate(DIGA_A)
    # TLS 1.3 reports the refused certificate after the handshake: the server closes the
    # connection without an HTTP answer.
    with pytest.raises((httpx.TransportError, ssl.SSLError)):
        box.with_cert(cert, key).get(f"{box.base_url}/.well-known/oauth-authorization-server")


def test_a_self_signed_diga_registered_while_running_is_trusted_after_the_refresh(
        box: Sandbox) -> None:
    from tests.auth.harness import ALL_GLUCOSE, redirect_uri, self_signed_certificate

    late = "urn:diga:bfarm:10009"
    cert, key = self_signed_certificate(box.tmp / "self-signed", late)
    register_diga(box.store, late, name="DiGA 10009", redirect_uris=[redirect_uri(late)],
                  scopes=ALL_GLUCOSE, certificate_pem=cert.read_text(), actor="test")
    # Not yet in the live trust store: the handshake refuses the self-signed certificate.
    with pytest.raises((httpx.TransportError, ssl.SSLError)):
        httpx.Client(verify=box.tls_context((cert, key))).post(
            f"{box.base_url}/par", data={"client_id": late})
    assert box.server.refresher is not None
    assert box.server.refresher.refresh() == 1
    assert box.server.refresher.refresh() == 0           # each certificate is loaded once
    tokens = box.pair(late, "alice")
    assert fhir(box, box.diga(late), tokens["access_token"]).status_code == 200


def test_inactive_diga_is_refused_and_loses_its_pairings(box: Sandbox) -> None:
    tokens = box.pair(DIGA_RETIRED, "alice")
    assert fhir(box, box.diga(DIGA_RETIRED), tokens["access_token"]).status_code == 200
    with box.store.begin() as conn:
        from bridge.auth.directory import deactivate_client

        deactivate_client(conn, DIGA_RETIRED, actor="test")
    assert error_of(box.par(DIGA_RETIRED)) == (401, "invalid_client", as_server.NOT_REGISTERED)
    assert error_of(box.refresh(DIGA_RETIRED, tokens["refresh_token"]))[:2] == (
        401, "invalid_client")
    response = fhir(box, box.diga(DIGA_RETIRED), tokens["access_token"])
    assert response.status_code == 401
    assert response.json()["error_description"] == as_tokens.CONSENT_ENDED
    with box.store.begin() as conn:
        row = conn.execute(sa.select(pairings).where(pairings.c.id == tokens["sub"])).one()
    assert row.revoked_by == "directory"


# --- PAR and the authorization endpoint ------------------------------------------------------

def test_authorization_without_par_is_refused(box: Sandbox) -> None:
    ua = box.browser()
    response = ua.get("/authorize", params={
        "client_id": DIGA_A, "response_type": "code", "redirect_uri": redirect_uri(DIGA_A),
        "scope": BG, "state": "s", "code_challenge": "x" * 43,
        "code_challenge_method": "S256"})
    assert response.status_code == 400
    assert "invalid_request" in response.text and "Pushed authorization request required" in (
        response.text)
    assert "location" not in response.headers


def test_unknown_or_used_request_uri_is_refused(box: Sandbox) -> None:
    ua = box.browser()
    unknown = ua.get("/authorize", params={"client_id": DIGA_A,
                                           "request_uri": "urn:ietf:params:oauth:request_uri:x"})
    assert unknown.status_code == 400 and as_server.PAR_UNKNOWN in unknown.text
    pending = box.push(DIGA_A)
    other = ua.get("/authorize", params={"client_id": DIGA_B,
                                         "request_uri": pending.request_uri})
    assert other.status_code == 400
    no_client = ua.get("/authorize", params={"request_uri": pending.request_uri})
    assert no_client.status_code == 400
    box.consent(pending, "alice")
    used = ua.get("/authorize", params={"client_id": DIGA_A,
                                        "request_uri": pending.request_uri})
    assert used.status_code == 400


def test_par_refuses_request_objects_and_bad_parameters(box: Sandbox) -> None:
    assert error_of(box.par(DIGA_A, request="eyJhbGciOiJub25lIn0.e30."))[:2] == (
        400, "invalid_request")
    assert error_of(box.par(DIGA_A, response_type="token"))[:2] == (
        400, "unsupported_response_type")
    assert error_of(box.par(DIGA_A, code_challenge_method="plain")) == (
        400, "invalid_request", as_server.PKCE_REQUIRED)
    assert error_of(box.par(DIGA_A, code_challenge="")) == (
        400, "invalid_request", as_server.PKCE_REQUIRED)
    assert error_of(box.par(DIGA_A, state=""))[:2] == (400, "invalid_request")
    assert error_of(box.par(DIGA_A, prescription_end="2020-01-01"))[:2] == (
        400, "invalid_request")


def test_redirect_uri_not_registered_is_refused(box: Sandbox) -> None:
    for uri in ("https://evil.example/callback", redirect_uri(DIGA_A) + "/",
                redirect_uri(DIGA_A) + "?x=1", redirect_uri(DIGA_B)):
        response = box.par(DIGA_A, redirect_uri=uri)
        assert error_of(response) == (400, "invalid_request",
                                      as_server.REDIRECT_NOT_REGISTERED), uri


def test_scope_beyond_registration_is_refused(box: Sandbox) -> None:
    assert error_of(box.par(DIGA_BG_ONLY, scopes=[BG, CGM])) == (
        400, "invalid_scope", as_server.SCOPE_EXCEEDED)
    assert box.par(DIGA_BG_ONLY, scopes=[BG]).status_code == 201
    for malformed in ("patient/Observation.rs", "patient/Observation.rs?code:in=https://x",
                      "patient/*.rs", "user/Device.rs", "patient/Device.cruds"):
        assert error_of(box.par(DIGA_A, scopes=[malformed])) == (
            400, "invalid_scope", as_server.SCOPE_MALFORMED), malformed


# --- code exchange ---------------------------------------------------------------------------

def test_missing_or_wrong_pkce_verifier_is_refused(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    code = box.consent(pending, "alice")["code"]
    assert error_of(box.exchange(pending, code, verifier=""))[:2] == (400, "invalid_request")
    wrong = box.exchange(pending, code, verifier="A" * 60)
    assert error_of(wrong)[:2] == (400, "invalid_grant")


def test_reused_code_is_refused_and_its_tokens_revoked(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    code = box.consent(pending, "alice")["code"]
    first = box.exchange(pending, code)
    assert first.status_code == 200
    second = box.exchange(pending, code)
    assert error_of(second)[:2] == (400, "invalid_grant")
    # RFC 6749 section 4.1.2: what the code issued is revoked.
    assert fhir(box, box.diga(DIGA_A), first.json()["access_token"]).status_code == 401


def test_code_with_another_redirect_uri_is_refused(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    code = box.consent(pending, "alice")["code"]
    pending.redirect_uri = "https://evil.example/callback"
    assert error_of(box.exchange(pending, code))[:2] == (400, "invalid_grant")


def test_code_of_another_diga_is_refused(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    code = box.consent(pending, "alice")["code"]
    pending.client_id = DIGA_B
    assert error_of(box.exchange(pending, code))[:2] == (400, "invalid_grant")


# --- refresh ---------------------------------------------------------------------------------

def test_replayed_refresh_token_revokes_the_grant(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    rotated = box.refresh(DIGA_A, tokens["refresh_token"]).json()
    replay = box.refresh(DIGA_A, tokens["refresh_token"])
    assert error_of(replay)[:2] == (400, "invalid_grant")
    # The whole grant is gone: the legitimate newest tokens too.
    assert error_of(box.refresh(DIGA_A, rotated["refresh_token"]))[:2] == (400, "invalid_grant")
    assert fhir(box, box.diga(DIGA_A), rotated["access_token"]).status_code == 401


def test_refresh_token_of_another_diga_is_refused(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    assert error_of(box.refresh(DIGA_B, tokens["refresh_token"]))[:2] == (400, "invalid_grant")
    assert box.refresh(DIGA_A, tokens["refresh_token"]).status_code == 200


def test_access_token_is_no_refresh_token(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    assert error_of(box.refresh(DIGA_A, tokens["access_token"]))[:2] == (400, "invalid_grant")
    response = fhir(box, box.diga(DIGA_A), tokens["refresh_token"])
    assert response.json()["error_description"] == as_tokens.NOT_AN_ACCESS_TOKEN


# --- consent ---------------------------------------------------------------------------------

def test_expired_consent_is_refused(box: Sandbox) -> None:
    tokens = box.pair(DIGA_B, "alice")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with box.store.begin() as conn:
        conn.execute(pairings.update().where(pairings.c.id == tokens["sub"])
                     .values(expires_at=past))
    response = fhir(box, box.diga(DIGA_B), tokens["access_token"])
    assert response.status_code == 401
    assert response.json()["error_description"] == as_tokens.CONSENT_ENDED
    assert error_of(box.refresh(DIGA_B, tokens["refresh_token"]))[:2] == (400, "invalid_grant")


def test_revoked_consent_refuses_the_pending_code(box: Sandbox) -> None:
    pending = box.push(DIGA_B)
    code = box.consent(pending, "bob")["code"]
    with box.store.begin() as conn:
        conn.execute(pairings.update().where(pairings.c.client_id == DIGA_B,
                                             pairings.c.patient_id == "bob")
                     .values(revoked_at=dt.datetime.now(dt.UTC), revoked_by="patient"))
    assert error_of(box.exchange(pending, code))[:2] == (400, "invalid_grant")


# --- tokens at the resource server -----------------------------------------------------------

def test_token_of_another_diga_with_its_certificate_is_refused(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    response = fhir(box, box.diga(DIGA_B), tokens["access_token"])
    assert response.status_code == 401
    assert response.json()["error_description"] == as_tokens.FOREIGN_CERTIFICATE
    assert fhir(box, box.diga(DIGA_A), tokens["access_token"]).status_code == 200


@pytest.mark.parametrize(("case", "description"), [
    ("garbage", as_tokens.NOT_SIGNED_JWT),
    ("unsigned", as_tokens.NOT_SIGNED_JWT),
    ("other-key", as_tokens.NOT_SIGNED_JWT),
    ("issuer", as_tokens.INVALID_ISSUER),
    ("expired", as_tokens.EXPIRED),
    ("not-yet", as_tokens.NOT_YET_VALID),
    ("audience", as_tokens.WRONG_AUDIENCE),
])
def test_invalid_jwts_get_the_hddt_texts(box: Sandbox, case: str, description: str,
                                         tmp_path: Any) -> None:
    tokens = box.pair(DIGA_A, "alice")
    sub = tokens["sub"]
    secrets = AuthSecrets.load(box.settings.state_dir)
    own = TokenSigner(secrets.signing_key, box.settings)
    now = dt.datetime.now(dt.UTC)

    def signed(signer: TokenSigner, **kw: Any) -> str:
        return signer.access_token(pairing_id=sub, client_id=DIGA_A, scopes=[BG],
                                   now=kw.pop("now", now), **kw).token

    if case == "garbage":
        token = "not-a-jwt"
    elif case == "unsigned":
        header, payload, _ = tokens["access_token"].split(".")
        token = f"{header}.{payload}."
    elif case == "other-key":
        token = signed(TokenSigner(AuthSecrets.load(tmp_path / "other").signing_key,
                                   box.settings))
    elif case == "issuer":
        other = AuthSettings(issuer="https://evil.example", audience=box.settings.audience,
                             state_dir=box.settings.state_dir)
        token = signed(TokenSigner(secrets.signing_key, other))
    elif case == "expired":
        token = signed(own, now=now - dt.timedelta(hours=2), lifetime_s=60)
    elif case == "not-yet":
        token = signed(own, not_before=now + dt.timedelta(hours=1))
    else:
        other = AuthSettings(issuer=box.settings.issuer, audience="https://other.example/fhir",
                             state_dir=box.settings.state_dir)
        token = signed(TokenSigner(secrets.signing_key, other))
    response = fhir(box, box.diga(DIGA_A), token)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "error_description": description}
    assert response.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{description}"')


def test_unrecorded_token_of_this_server_is_refused(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    own = TokenSigner(AuthSecrets.load(box.settings.state_dir).signing_key, box.settings)
    forged = own.access_token(pairing_id=tokens["sub"], client_id=DIGA_A, scopes=[BG],
                              now=dt.datetime.now(dt.UTC)).token
    assert fhir(box, box.diga(DIGA_A), forged).status_code == 401


# --- portal: CSRF and open redirects ---------------------------------------------------------

def test_forms_without_the_sessions_csrf_token_are_refused(box: Sandbox) -> None:
    ua = box.browser()
    page = ua.get("/portal/login")
    assert ua.post("/portal/login", data={"username": "alice",
                                          "password": PASSWORD}).status_code == 403
    assert ua.post("/portal/login", data={"csrf": "forged", "username": "alice",
                                          "password": PASSWORD}).status_code == 403
    # The token of another browser's session does not fit this one.
    other = box.browser()
    other_page = other.get("/portal/login")
    stolen = form_value(other_page.text, "csrf")
    assert ua.post("/portal/login", data={"csrf": stolen, "username": "alice",
                                          "password": PASSWORD}).status_code == 403
    ok = ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"),
                                        "username": "alice", "password": PASSWORD})
    assert ok.status_code == 303
    # Logged in: the consent decision needs the new session's token too.
    pending = box.push(DIGA_A)
    consent = ua.get("/authorize", params={"client_id": DIGA_A,
                                           "request_uri": pending.request_uri})
    assert consent.status_code == 200 and "DiGA 10001" in consent.text
    forged = ua.post("/authorize", data={"csrf": form_value(page.text, "csrf"),
                                         "client_id": DIGA_A,
                                         "request_uri": pending.request_uri,
                                         "decision": "allow", "scope": BG})
    assert forged.status_code == 403 and "location" not in forged.headers


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/portal/", "/\\evil.example", "javascript:x",
    "https:/evil.example", "/logout-elsewhere"])
def test_login_never_redirects_off_the_portal(box: Sandbox, target: str) -> None:
    ua = box.browser()
    page = ua.get("/portal/login", params={"next": target})
    assert form_value(page.text, "next") == "/portal/pairings"
    response = ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"),
                                              "next": target, "username": "alice",
                                              "password": PASSWORD})
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/pairings"


def test_portal_revokes_only_the_patients_own_pairing(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    ua = box.browser()
    page = ua.get("/portal/login")
    ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"), "username": "bob",
                                   "password": PASSWORD, "next": "/portal/pairings"})
    listing = ua.get("/portal/pairings")
    response = ua.post("/portal/pairings/revoke", data={
        "csrf": form_value(listing.text, "csrf"), "pairing_id": tokens["sub"]})
    assert response.status_code == 404
    assert fhir(box, box.diga(DIGA_A), tokens["access_token"]).status_code == 200


def test_directory_refuses_a_certificate_registered_for_another_diga(box: Sandbox) -> None:
    from bridge.auth.errors import DirectoryError

    with pytest.raises(DirectoryError, match="already registered"):
        register_diga(box.store, "urn:diga:bfarm:10009", name="Copycat",
                      redirect_uris=["https://copy.example/cb"], scopes=[BG],
                      certificate_pem=box.pki.diga(DIGA_A).cert.read_text())


def test_consent_is_refused_when_the_directory_narrowed_the_diga(box: Sandbox) -> None:
    from bridge.auth.directory import update_client
    from bridge.hddt.access import SCOPE_DEVICE

    pending = box.push(DIGA_BG_ONLY, scopes=[BG])
    ua = box.browser()
    page = ua.get("/portal/login")
    ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"), "username": "alice",
                                   "password": PASSWORD, "next": "/portal/pairings"})
    consent = ua.get("/authorize", params={"client_id": DIGA_BG_ONLY,
                                           "request_uri": pending.request_uri})
    with box.store.begin() as conn:
        update_client(conn, DIGA_BG_ONLY, actor="test", scopes=[SCOPE_DEVICE])
    try:
        decided = ua.post("/authorize", data={
            "csrf": form_value(consent.text, "csrf"), "client_id": DIGA_BG_ONLY,
            "request_uri": pending.request_uri, "decision": "allow", "scope": BG})
        assert decided.status_code == 400 and "invalid_scope" in decided.text
        assert "location" not in decided.headers
    finally:
        with box.store.begin() as conn:
            update_client(conn, DIGA_BG_ONLY, actor="test", scopes=[BG])
