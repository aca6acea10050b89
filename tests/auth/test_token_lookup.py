"""How the resource server checks access tokens quickly without giving up any check: a
verified signature is kept by the token's exact text while expiry and not-before are checked
on every use; on PostgreSQL the grant and pairing are looked up over the event loop's own
connections, and a lost connection falls back to the blocking lookup, never to an answer
without one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from bridge.auth import tokens as as_tokens
from bridge.auth.settings import AuthSecrets, AuthSettings
from bridge.auth.tokens import JwtAccessResolver, TokenSigner
from bridge.hddt.access import AccessDenied
from tests.auth.data import seed_glucose
from tests.auth.harness import DIGA_A, bearer, running_sandbox
from tests.backend.postgres import PostgresServer

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def signer(tmp_path: Path) -> TokenSigner:
    settings = AuthSettings(issuer="https://ddr.example", audience="https://ddr.example/fhir",
                            state_dir=tmp_path / "auth")
    return TokenSigner(AuthSecrets.load(settings.state_dir).signing_key, settings)


def _token(signer: TokenSigner, lifetime_s: int = 60) -> str:
    return signer.access_token(pairing_id="pairing-1", client_id=DIGA_A,
                               scopes=["patient/Device.rs"], now=NOW,
                               lifetime_s=lifetime_s).token


def _refused(signer: TokenSigner, token: str, now: dt.datetime) -> str:
    with pytest.raises(AccessDenied) as refused:
        signer.access_claims(token, now)
    return refused.value.description


def test_a_kept_token_is_still_checked_for_expiry_and_not_before(signer: TokenSigner) -> None:
    token = _token(signer)
    assert signer.access_claims(token, NOW)["sub"] == "pairing-1"
    assert signer.access_claims(token, NOW + dt.timedelta(seconds=30))["sub"] == "pairing-1"
    assert _refused(signer, token, NOW + dt.timedelta(seconds=61)) == as_tokens.EXPIRED
    assert _refused(signer, token, NOW - dt.timedelta(seconds=5)) == as_tokens.NOT_YET_VALID


def test_a_tampered_copy_of_a_kept_token_is_refused(signer: TokenSigner) -> None:
    token = _token(signer)
    signer.access_claims(token, NOW)
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    assert _refused(signer, f"{head}.{payload}.{flipped}", NOW) == as_tokens.NOT_SIGNED_JWT
    claims = signer.access_claims(token, NOW)
    claims["sub"] = "someone-else"  # a caller's change does not reach the kept claims
    assert signer.access_claims(token, NOW)["sub"] == "pairing-1"


def test_the_kept_tokens_are_bounded(signer: TokenSigner, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    monkeypatch.setattr(as_tokens, "VERIFIED_TOKENS", 5)
    issued = [_token(signer) for _ in range(8)]
    for token in issued:
        signer.access_claims(token, NOW)
    assert list(signer._verified) == issued[-5:]  # least recently used out first
    for token in issued:  # the ones let go verify again
        assert signer.access_claims(token, NOW)["sub"] == "pairing-1"


def test_a_lost_lookup_connection_falls_back_and_revocation_still_holds(
        tmp_path: Path, pg: PostgresServer) -> None:
    url = pg.url(pg.create_database())
    with running_sandbox(tmp_path, url=url) as box:
        seed_glucose(box.store, "alice", value=111.0, now=dt.datetime.now(dt.UTC))
        app: Any = box.server.config.app
        resolver: JwtAccessResolver = app.state.access_resolver
        reads = resolver.loop_reads
        assert reads is not None  # PostgreSQL: looked up over the event loop's connections
        tokens = box.pair(DIGA_A, "alice")
        diga = box.diga(DIGA_A)

        def status(token: str) -> int:
            code: int = diga.get(f"{box.fhir_url}/Observation",
                                 headers=bearer(token)).status_code
            return code

        assert status(tokens["access_token"]) == 200
        assert reads._connections and reads.failures == 0
        # The database ends every lookup connection (a restart, a failover).
        with box.store.begin() as conn:
            for c in reads._connections:
                conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)",
                                     {"pid": c.info.backend_pid})
        for _ in range(2 * reads.size):  # over every lookup connection in turn
            assert status(tokens["access_token"]) == 200  # the blocking lookup answers
        assert reads.failures >= 1
        assert box.revoke(DIGA_A, tokens["refresh_token"]).status_code == 200
        for _ in range(2 * reads.size):  # over every new lookup connection in turn
            assert status(tokens["access_token"]) == 401
        assert reads._connections  # connected again
