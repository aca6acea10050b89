"""Signed tokens: JWT access tokens, signed refresh tokens, the JWKS, and the resource
server's :class:`JwtAccessResolver`.

HDDT pairing.md "Tokens and the Token Response": access and refresh tokens are signed by the
authorization server and verified at every endpoint; a JWT's ``sub`` is the Pairing ID and
nothing identifying the patient; the lifetime of access tokens is the provider's choice,
refresh tokens live 30 days; no certificate-bound tokens (no ``cnf`` claim), mTLS binds the
client instead.

Access token (RFC 9068 layout, ``typ: at+jwt``, ES256): ``iss``, ``sub`` (Pairing ID),
``aud`` (the FHIR base URL), ``exp``, ``nbf``, ``iat``, ``jti``, ``scope``, ``client_id``.
Each ``jti`` is recorded with its grant, so revoking the grant ends the token at once.
Refresh token (``typ: rt+jwt``): ``iss``, ``jti``, ``exp``, ``iat``; what it stands for
(its grant, whether it was already rotated) lives in ``refresh_tokens``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from bridge.auth.pairing import (
    ACCESS_STATE_SQL_POSTGRESQL,
    AccessState,
    access_state,
    access_state_from_row,
)
from bridge.auth.scopes import scope_text
from bridge.auth.settings import REFRESH_TOKEN_LIFETIME_S, AuthSettings
from bridge.backend.store import Store
from bridge.hddt.access import (
    AccessDenied,
    AccessGrant,
    bearer_token,
    client_certificate_chain,
)
from bridge.hddt.loop_reads import LoopReads

ALGORITHM = "ES256"
ACCESS_TYPE = "at+jwt"
REFRESH_TYPE = "rt+jwt"

# HDDT error-codes.md, resource server rows (401, WWW-Authenticate Bearer invalid_token).
NOT_SIGNED_JWT = "Token is not a signed JWT"
INVALID_ISSUER = "Invalid token issuer"
EXPIRED = "The access token expired"
NOT_YET_VALID = "Token cannot be used yet"
# The project's own texts for the other invalid_token cases.
NOT_AN_ACCESS_TOKEN = "The token is not an access token"
WRONG_AUDIENCE = "The access token is not meant for this resource server"
MISSING_CLAIMS = "The access token lacks a required claim"
CONSENT_ENDED = "The pairing or consent behind this access token was revoked or has expired"
NO_CLIENT_CERTIFICATE = "No client certificate on this connection (mutual TLS is required)"
FOREIGN_CERTIFICATE = "The client certificate does not belong to the token's client"


@functools.lru_cache(maxsize=256)
def leaf_sha256(pem: str) -> str | None:
    """SHA-256 of a PEM certificate's DER bytes (hex), or None when it is not a certificate.
    Kept for the few certificates a server sees (each DiGA presents its own on every
    request)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _epoch(instant: dt.datetime) -> int:
    return int(instant.timestamp())


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: dt.datetime
    expires_at: dt.datetime


#: Access tokens whose signature was verified, kept by their exact text (a DiGA presents the
#: same token on every request until it expires).
VERIFIED_TOKENS = 4096


class TokenSigner:
    """Signs and checks this server's tokens with one EC P-256 key (``kid``: RFC 7638
    thumbprint).

    An access token's signature is verified once: the decoded header and claims are kept by
    the token's exact text (at most :data:`VERIFIED_TOKENS`, least recently used first out),
    and every use checks type, issuer, audience, expiry and not-before again. Only tokens
    that verified are kept, so a forged one costs a verification every time and displaces
    nothing."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, settings: AuthSettings) -> None:
        self.key = ECKey.import_key(key)
        self.kid = self.key.thumbprint()
        self.settings = settings
        self._verified: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._verified_lock = threading.Lock()

    def _decode_access(self, token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self._verified_lock:
            kept = self._verified.get(token)
            if kept is not None:
                self._verified.move_to_end(token)
                return kept
        decoded = self._decode(token)
        if decoded is not None:
            with self._verified_lock:
                self._verified[token] = decoded
                while len(self._verified) > VERIFIED_TOKENS:
                    self._verified.popitem(last=False)
        return decoded

    def jwks(self) -> dict[str, Any]:
        """The public key set served at ``/jwks``."""
        public = dict(self.key.as_dict(private=False))
        public.update(kid=self.kid, use="sig", alg=ALGORITHM)
        return {"keys": [public]}

    def _sign(self, typ: str, claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": ALGORITHM, "typ": typ, "kid": self.kid}, claims, self.key,
                          algorithms=[ALGORITHM])

    def access_token(self, *, pairing_id: str, client_id: str, scopes: Iterable[str],
                     now: dt.datetime, lifetime_s: int | None = None,
                     not_before: dt.datetime | None = None) -> IssuedToken:
        lifetime = dt.timedelta(seconds=lifetime_s if lifetime_s is not None
                                else self.settings.access_token_lifetime_s)
        jti = secrets.token_hex(16)
        expires = now + lifetime
        claims = {"iss": self.settings.issuer, "sub": pairing_id,
                  "aud": self.settings.audience, "iat": _epoch(now),
                  "nbf": _epoch(not_before or now), "exp": _epoch(expires), "jti": jti,
                  "scope": scope_text(scopes), "client_id": client_id}
        return IssuedToken(self._sign(ACCESS_TYPE, claims), jti, now, expires)

    def refresh_token(self, *, now: dt.datetime) -> IssuedToken:
        jti = secrets.token_hex(16)
        expires = now + dt.timedelta(seconds=REFRESH_TOKEN_LIFETIME_S)
        claims = {"iss": self.settings.issuer, "iat": _epoch(now), "exp": _epoch(expires),
                  "jti": jti}
        return IssuedToken(self._sign(REFRESH_TYPE, claims), jti, now, expires)

    def _decode(self, token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        try:
            decoded = jwt.decode(token, self.key, algorithms=[ALGORITHM])
        except (JoseError, ValueError, TypeError):
            return None
        return dict(decoded.header), dict(decoded.claims)

    def refresh_jti(self, token: str, now: dt.datetime) -> str | None:
        """The ``jti`` of a valid, unexpired refresh token of this server, else None."""
        decoded = self._decode(token)
        if decoded is None:
            return None
        header, claims = decoded
        exp, jti = claims.get("exp"), claims.get("jti")
        if (header.get("typ") != REFRESH_TYPE or claims.get("iss") != self.settings.issuer
                or not isinstance(exp, int) or exp <= _epoch(now) or not isinstance(jti, str)):
            return None
        return jti

    def access_claims(self, token: str, now: dt.datetime) -> dict[str, Any]:
        """The claims of a valid access token, or :class:`AccessDenied` with the HDDT text."""
        decoded = self._decode_access(token)
        if decoded is None:
            raise AccessDenied(401, "invalid_token", NOT_SIGNED_JWT)
        header, claims = decoded
        if header.get("typ") != ACCESS_TYPE:
            raise AccessDenied(401, "invalid_token", NOT_AN_ACCESS_TOKEN)
        if claims.get("iss") != self.settings.issuer:
            raise AccessDenied(401, "invalid_token", INVALID_ISSUER)
        stamp = _epoch(now)
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or not isinstance(nbf, int):
            raise AccessDenied(401, "invalid_token", MISSING_CLAIMS)
        if exp <= stamp:
            raise AccessDenied(401, "invalid_token", EXPIRED)
        if nbf > stamp:
            raise AccessDenied(401, "invalid_token", NOT_YET_VALID)
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.settings.audience not in audiences:
            raise AccessDenied(401, "invalid_token", WRONG_AUDIENCE)
        for name in ("sub", "jti", "scope", "client_id"):
            if not isinstance(claims.get(name), str):
                raise AccessDenied(401, "invalid_token", MISSING_CLAIMS)
        return dict(claims)  # the kept claims stay as verified


@contextlib.contextmanager
def reading(store: Store) -> Iterator[Connection]:
    """A read-only transaction (``Store.read``: DEFERRED on SQLite) where the store has one."""
    read = getattr(store, "read", None)
    with (read() if read is not None else store.begin()) as conn:
        yield conn


class JwtAccessResolver:
    """The resource server's :class:`~bridge.hddt.access.AccessResolver` for these tokens.

    Checks signature, type, issuer, audience, expiry and not-before (HDDT error-codes.md
    texts), then the token's grant and pairing (not revoked, consent not expired, client still
    active in the directory), then that the client certificate on this connection is the one
    registered for the token's ``client_id`` (security-and-privacy.md: certificate and
    client_id in the same DiGA-VZ entry). Granted scopes are the token's, narrowed to the
    pairing's current consent.

    The grant and pairing are looked up on every request, so that a revocation holds at
    once. On PostgreSQL the lookup runs over asyncio connections of its own
    (:class:`~bridge.hddt.loop_reads.LoopReads`, ``loop_connections`` of them): a worker
    thread and a pooled blocking connection per request cost several times more
    (bench/hddt_api.py, ``tokens_*``). Elsewhere, or when such a connection fails, the
    lookup runs in a worker thread.
    """

    def __init__(self, store: Store, signer: TokenSigner, *, loop_connections: int = 4) -> None:
        self.store = store
        self.signer = signer
        self.loop_reads = (LoopReads(store.engine.url, loop_connections)
                           if loop_connections > 0 and store.engine.dialect.name == "postgresql"
                           else None)

    def close(self) -> None:
        """Close the event loop's connections."""
        if self.loop_reads is not None:
            self.loop_reads.close()

    def _state(self, jti: str) -> AccessState | None:
        with reading(self.store) as conn:
            return access_state(conn, jti)

    async def _lookup(self, jti: str) -> AccessState | None:
        reads = self.loop_reads
        if reads is not None:
            rows = await reads.fetch_rows(ACCESS_STATE_SQL_POSTGRESQL, {"jti": jti}, limit=1)
            if rows is not None:
                return access_state_from_row(rows[0]) if rows else None
        return await run_in_threadpool(self._state, jti)

    async def resolve(self, connection: HTTPConnection) -> AccessGrant:
        token = bearer_token(connection)
        now = dt.datetime.now(dt.UTC)
        claims = self.signer.access_claims(token, now)
        state = await self._lookup(claims["jti"])
        if (state is None or state.grant_revoked or state.consent_revoked
                or not state.client_active or now >= state.consent_expires_at
                or state.pairing_id != claims["sub"] or state.client_id != claims["client_id"]):
            raise AccessDenied(401, "invalid_token", CONSENT_ENDED)
        chain = client_certificate_chain(connection)
        if not chain:
            raise AccessDenied(401, "invalid_token", NO_CLIENT_CERTIFICATE)
        if leaf_sha256(chain[0]) != state.client_certificate_sha256:
            raise AccessDenied(401, "invalid_token", FOREIGN_CERTIFICATE)
        scopes = frozenset(claims["scope"].split()) & frozenset(state.consent_scopes)
        return AccessGrant(pairing_id=state.pairing_id, patient_id=state.patient_id,
                           client_id=state.client_id, scopes=scopes,
                           expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
                           token_id=claims["jti"])
