"""Tables of the authorization server, on the backend store's :data:`metadata`.

Created by migrations 0002 (``bridge/backend/migrations/versions/v0002_authorization.py``)
and 0004 (``portal_login_failures``); the store's schema test compares them with these.

* ``diga_clients`` the DiGA directory stand-in (HDDT pairing.md "Client Registration",
  security-and-privacy.md trust attributes): ``client_id`` ``urn:diga:bfarm:<5 digits>``,
  redirect URIs (exact match), allowed SMART scopes, active flag, the registered TLS client
  certificate and its SHA-256 fingerprint;
* ``portal_accounts`` patient logins of the maker's portal (scrypt hash, salt inside);
* ``portal_login_failures`` one row per failed (or still running) portal login within the
  throttling window: SHA-256 of the login name as typed, client address, instant
  (:mod:`bridge.auth.accounts`);
* ``pairings`` one row per Pairing ID (the token ``sub``): patient, DiGA, consented scopes,
  granted and expiry instants, revocation;
* ``par_requests`` pushed authorization requests (RFC 9126) until used or expired;
* ``authorization_codes`` (hashed), ``oauth_grants`` (one per code exchange: the token
  family), ``refresh_tokens`` (rotation with reuse detection) and ``access_tokens`` (issued
  ``jti`` values, so a revoked grant invalidates its access tokens at once).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from bridge.backend.store import ID_LEN, UtcDateTime, metadata

#: ``urn:diga:bfarm:`` + 5 digits.
CLIENT_ID_LEN = 32
#: Hex SHA-256.
HASH_LEN = 64


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


diga_clients = sa.Table(
    "diga_clients", metadata,
    sa.Column("client_id", sa.String(CLIENT_ID_LEN), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # Lists of strings: exact redirect URIs and SMART scopes from the DiGA-VZ entry.
    sa.Column("redirect_uris", _json(), nullable=False),
    sa.Column("scopes", _json(), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("certificate_pem", sa.Text, nullable=False),
    # SHA-256 of the certificate's DER bytes, lower-case hex.
    sa.Column("certificate_sha256", sa.String(HASH_LEN), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

portal_accounts = sa.Table(
    "portal_accounts", metadata,
    sa.Column("username", sa.String(128), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("patient_id", sa.String(ID_LEN), sa.ForeignKey("patients.id"), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index(None, "patient_id"),
)

portal_login_failures = sa.Table(
    "portal_login_failures", metadata,
    # SQLite assigns row ids automatically only to a column declared exactly INTEGER.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    # Hex SHA-256 of the login name as typed (known or not): no user name kept in clear.
    sa.Column("login_sha256", sa.String(HASH_LEN), nullable=False),
    # IPv4 or IPv6 text (45 characters at most).
    sa.Column("client_address", sa.String(45), nullable=False),
    sa.Column("failed_at", UtcDateTime, nullable=False),
    sa.Index(None, "login_sha256", "failed_at"),
    sa.Index(None, "client_address", "failed_at"),
    sa.Index(None, "failed_at"),
)

pairings = sa.Table(
    "pairings", metadata,
    sa.Column("id", sa.String(HASH_LEN), primary_key=True),
    sa.Column("patient_id", sa.String(ID_LEN), sa.ForeignKey("patients.id"), nullable=False),
    sa.Column("client_id", sa.String(CLIENT_ID_LEN), sa.ForeignKey("diga_clients.client_id"),
              nullable=False),
    sa.Column("scopes", _json(), nullable=False),
    sa.Column("granted_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("prescription_end", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
    # "patient", "diga", "reuse", "directory", "operator": who or what ended the consent.
    sa.Column("revoked_by", sa.String(32)),
    sa.Index(None, "patient_id"),
    sa.Index(None, "client_id"),
)

par_requests = sa.Table(
    "par_requests", metadata,
    sa.Column("request_uri", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(CLIENT_ID_LEN), sa.ForeignKey("diga_clients.client_id"),
              nullable=False),
    # The validated authorization request parameters.
    sa.Column("params", _json(), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime),
)

oauth_grants = sa.Table(
    "oauth_grants", metadata,
    sa.Column("id", sa.String(HASH_LEN), primary_key=True),
    sa.Column("pairing_id", sa.String(HASH_LEN), sa.ForeignKey("pairings.id"), nullable=False),
    sa.Column("client_id", sa.String(CLIENT_ID_LEN), sa.ForeignKey("diga_clients.client_id"),
              nullable=False),
    sa.Column("scopes", _json(), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Column("revoked_reason", sa.String(32)),
    sa.Index(None, "pairing_id"),
)

authorization_codes = sa.Table(
    "authorization_codes", metadata,
    # SHA-256 of the code: a leaked database row cannot be exchanged.
    sa.Column("code_sha256", sa.String(HASH_LEN), primary_key=True),
    sa.Column("client_id", sa.String(CLIENT_ID_LEN), sa.ForeignKey("diga_clients.client_id"),
              nullable=False),
    sa.Column("pairing_id", sa.String(HASH_LEN), sa.ForeignKey("pairings.id"), nullable=False),
    sa.Column("redirect_uri", sa.String(2000), nullable=False),
    sa.Column("scopes", _json(), nullable=False),
    sa.Column("code_challenge", sa.String(128), nullable=False),
    sa.Column("code_challenge_method", sa.String(8), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime),
    # The grant the exchange created: revoked when the code is presented a second time.
    sa.Column("grant_id", sa.String(HASH_LEN)),
)

refresh_tokens = sa.Table(
    "refresh_tokens", metadata,
    sa.Column("jti", sa.String(HASH_LEN), primary_key=True),
    sa.Column("grant_id", sa.String(HASH_LEN), sa.ForeignKey("oauth_grants.id"),
              nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    # Set when exchanged for a new pair; presenting it again revokes the whole grant.
    sa.Column("rotated_at", UtcDateTime),
    sa.Index(None, "grant_id"),
)

access_tokens = sa.Table(
    "access_tokens", metadata,
    sa.Column("jti", sa.String(HASH_LEN), primary_key=True),
    sa.Column("grant_id", sa.String(HASH_LEN), sa.ForeignKey("oauth_grants.id"),
              nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Index(None, "grant_id"),
    sa.Index(None, "expires_at"),
)

#: Every table of this module, parents first.
AUTH_TABLES: tuple[sa.Table, ...] = (diga_clients, portal_accounts, portal_login_failures,
                                     pairings, par_requests, oauth_grants,
                                     authorization_codes, refresh_tokens, access_tokens)
