"""The pairing flow over real TLS with real certificates: metadata, PAR, portal login and
consent, code exchange, FHIR search with the token, refresh with rotation, revocation."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.auth.pairing import derive_pairing_id
from bridge.auth.scopes import SUPPORTED_SCOPES
from bridge.auth.settings import AuthSecrets
from bridge.auth.tables import pairings
from bridge.backend.store import list_audit
from tests.auth.data import seed_glucose
from tests.auth.harness import (
    ALL_GLUCOSE,
    BG,
    CGM,
    DIGA_A,
    DIGA_B,
    Sandbox,
    bearer,
    running_sandbox,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("flow"), patients=("alice", "bob")) as box:
        seed_glucose(box.store, "alice", value=111.0, now=NOW)
        seed_glucose(box.store, "bob", value=222.0, now=NOW)
        yield box


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "==="))
    return decoded


def observations(box: Sandbox, client_id: str, token: str, **params: str) -> list[Any]:
    response = box.diga(client_id).get(f"{box.fhir_url}/Observation", params=params,
                                       headers=bearer(token))
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])
            if e["resource"]["resourceType"] == "Observation"]


def test_metadata_is_what_hddt_requires(box: Sandbox) -> None:
    response = box.anonymous().get(f"{box.base_url}/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == box.base_url
    assert meta["require_pushed_authorization_requests"] is True
    assert meta["tls_client_certificate_bound_access_tokens"] is False
    assert meta["token_endpoint_auth_methods_supported"] == ["tls_client_auth"]
    assert meta["revocation_endpoint_auth_methods_supported"] == ["tls_client_auth"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in meta["grant_types_supported"]
    assert "implicit" not in meta["grant_types_supported"]
    assert meta["response_types_supported"] == ["code"]
    assert meta["request_parameter_supported"] is False
    assert meta["scopes_supported"] == list(SUPPORTED_SCOPES)
    for name in ("pushed_authorization_request_endpoint", "token_endpoint",
                 "revocation_endpoint", "authorization_endpoint", "service_documentation"):
        assert meta[name].startswith(box.base_url + "/")
    docs = box.anonymous().get(meta["service_documentation"])
    assert docs.status_code == 200 and "tls_client_auth" in docs.text
    keys = box.anonymous().get(meta["jwks_uri"]).json()["keys"]
    assert [k["alg"] for k in keys] == ["ES256"] and "d" not in keys[0]


def test_pairing_search_refresh_revoke(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice")
    # pairing.md "Token Response": every claim, the Pairing ID in sub.
    assert set(tokens) >= {"access_token", "refresh_token", "token_type", "expires_in",
                           "scope", "sub"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 600
    assert set(tokens["scope"].split()) == set(ALL_GLUCOSE)
    secrets = AuthSecrets.load(box.settings.state_dir)
    assert tokens["sub"] == derive_pairing_id(secrets.pairing_salt, DIGA_A, "alice")
    access = claims(tokens["access_token"])
    assert access["sub"] == tokens["sub"] and access["client_id"] == DIGA_A
    assert access["iss"] == box.base_url and access["aud"] == box.fhir_url
    assert access["exp"] - access["iat"] == 600 and access["nbf"] == access["iat"]
    assert "alice" not in json.dumps(access) and "cnf" not in access

    found = observations(box, DIGA_A, tokens["access_token"])
    values = {o["valueQuantity"]["value"] for o in found if "valueQuantity" in o}
    assert values == {111}
    assert {o["code"]["coding"][0]["code"] for o in found} == {"41653-7", "99504-3"}

    refreshed = box.refresh(DIGA_A, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["sub"] == tokens["sub"] and new["scope"] == tokens["scope"]
    assert observations(box, DIGA_A, new["access_token"])

    revoked = box.revoke(DIGA_A, new["refresh_token"])
    assert revoked.status_code == 200 and revoked.content == b""
    # Every token of the grant is invalid now, the consent is withdrawn.
    for token in (tokens["access_token"], new["access_token"]):
        response = box.diga(DIGA_A).get(f"{box.fhir_url}/Observation", headers=bearer(token))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    again = box.refresh(DIGA_A, new["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    with box.store.begin() as conn:
        row = conn.execute(sa.select(pairings).where(pairings.c.id == tokens["sub"])).one()
        entries = list_audit(conn, limit=50)
    assert row.revoked_by == "diga" and row.revoked_at is not None
    actions = [e.action for e in entries if e.subject_id == tokens["sub"]]
    assert "pairing-consented" in actions and "pairing-revoked" in actions
    # RFC 7009: an already invalid token is still answered 200.
    assert box.revoke(DIGA_A, new["refresh_token"]).status_code == 200


def test_pairing_id_is_per_patient_and_diga_and_stable(box: Sandbox) -> None:
    first = box.pair(DIGA_A, "bob")["sub"]
    assert box.pair(DIGA_A, "bob", scopes=(BG,))["sub"] == first
    assert box.pair(DIGA_B, "bob")["sub"] != first
    assert box.pair(DIGA_A, "alice")["sub"] != first
    assert len(first) == 64 and int(first, 16) >= 0


def test_patient_grants_a_subset(box: Sandbox) -> None:
    tokens = box.pair(DIGA_A, "alice", grant=[BG])
    assert tokens["scope"] == BG
    found = observations(box, DIGA_A, tokens["access_token"])
    assert found and {o["code"]["coding"][0]["code"] for o in found} == {"41653-7"}
    assert observations(box, DIGA_A, tokens["access_token"], code="99504-3") == []
    # A refresh cannot widen the consent.
    wider = box.diga(DIGA_A).post(f"{box.base_url}/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": DIGA_A, "scope": f"{BG} {CGM}"})
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_patient_denies(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    callback = box.consent(pending, "alice", deny=True)
    assert callback["error"] == "access_denied" and callback["state"] == pending.state
    assert "code" not in callback


def test_nothing_ticked_is_a_denial(box: Sandbox) -> None:
    pending = box.push(DIGA_A)
    callback = box.consent(pending, "alice", grant=[])
    assert callback["error"] == "access_denied"


def test_prescription_end_caps_the_consent(box: Sandbox) -> None:
    end = (NOW + dt.timedelta(days=40)).date()
    tokens = box.pair(DIGA_B, "alice", prescription_end=end.isoformat())
    with box.store.begin() as conn:
        row = conn.execute(sa.select(pairings).where(pairings.c.id == tokens["sub"])).one()
    assert row.expires_at == dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    long = box.pair(DIGA_B, "alice", prescription_end=(NOW + dt.timedelta(days=900))
                    .date().isoformat())
    with box.store.begin() as conn:
        row = conn.execute(sa.select(pairings).where(pairings.c.id == long["sub"])).one()
    # At most one year (security-and-privacy.md "Consent").
    assert dt.timedelta(days=364) < row.expires_at - row.granted_at <= dt.timedelta(days=365)


def test_patient_revokes_in_the_portal(box: Sandbox) -> None:
    tokens = box.pair(DIGA_B, "bob")
    assert observations(box, DIGA_B, tokens["access_token"]) is not None
    ua = box.browser()
    page = ua.get("/portal/login?next=/portal/pairings")
    from tests.auth.harness import PASSWORD, form_value

    login = ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"),
                                           "next": "/portal/pairings", "username": "bob",
                                           "password": PASSWORD})
    assert login.headers["location"] == "/portal/pairings"
    listing = ua.get("/portal/pairings")
    assert "DiGA 10002" in listing.text and tokens["sub"] in listing.text
    done = ua.post("/portal/pairings/revoke", data={"csrf": form_value(listing.text, "csrf"),
                                                    "pairing_id": tokens["sub"]})
    assert done.status_code == 303
    after = box.diga(DIGA_B).get(f"{box.fhir_url}/Observation",
                                 headers=bearer(tokens["access_token"]))
    assert after.status_code == 401
    refresh = box.refresh(DIGA_B, tokens["refresh_token"])
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    assert "withdrawn on" in ua.get("/portal/pairings").text
    # The patient can inspect the audit trail (security-and-privacy.md "Transparency").
    deadline = time.monotonic() + 10
    while True:
        trail = ua.get("/portal/audit")
        if "Data request" in trail.text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert trail.status_code == 200
    for text in ("You agreed to share data", "Sharing stopped", "Data request", "DiGA 10002"):
        assert text in trail.text
    assert "alice" not in trail.text


def test_audit_page_needs_a_login(box: Sandbox) -> None:
    response = box.browser().get("/portal/audit")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/login?next=/portal/audit"


def test_wrong_password_is_refused(box: Sandbox, tmp_path: Path) -> None:
    from tests.auth.harness import form_value

    ua = box.browser()
    page = ua.get("/portal/login")
    response = ua.post("/portal/login", data={"csrf": form_value(page.text, "csrf"),
                                              "next": "", "username": "alice",
                                              "password": "wrong password"})
    assert response.status_code == 401 and "wrong" in response.text


def test_purge_keeps_what_is_still_needed(box: Sandbox) -> None:
    from bridge.auth.pairing import purge_expired
    from bridge.auth.tables import access_tokens, refresh_tokens

    tokens = box.pair(DIGA_A, "alice")
    with box.store.begin() as conn:
        assert purge_expired(conn)["refresh_tokens"] == 0
        live = conn.execute(sa.select(sa.func.count()).select_from(refresh_tokens)).scalar()
        later = purge_expired(conn, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=32))
        assert later["refresh_tokens"] == live and later["access_tokens"] > 0
        assert conn.execute(sa.select(sa.func.count()).select_from(access_tokens)).scalar() == 0
        conn.rollback()
    assert observations(box, DIGA_A, tokens["access_token"])
