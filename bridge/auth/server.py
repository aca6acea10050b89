"""The HDDT OAuth 2.0 authorization server on Authlib (HDDT pairing.md, authorization-server*.md).

Authlib supplies the OAuth core: the authorization code grant with PKCE (RFC 7636, ``S256``
only, required), the refresh token grant, the revocation endpoint (RFC 7009) and the client
authentication registry. This module adds what HDDT requires on top:

* client authentication ``tls_client_auth`` (RFC 8705 section 2.1.1): the ``client_id`` in
  the request and the TLS client certificate of the connection must be in the same, active
  directory entry, compared by the certificate's SHA-256 (security-and-privacy.md (c));
* pushed authorization requests (RFC 9126) at ``/par``, required: ``/authorize`` accepts only
  a ``request_uri`` from ``/par`` (``require_pushed_authorization_requests``), never a
  ``request`` object (RFC 9101 is excluded by HDDT);
* exact redirect URI match and scope validation against the directory entry, with the
  texts of error-codes.md "DiGA-VZ Validation Failures";
* refresh token rotation with reuse detection (RFC 9700 section 4.14.2): every refresh
  returns a new refresh token; presenting a rotated one again revokes its whole grant;
* revocation ends the consent: the pairing, every grant and so every token (error-codes.md
  "Consent Revocation");
* the metadata document (RFC 8414) with the values HDDT fixes.

Every endpoint runs its Authlib work in one database transaction on a worker thread; the
transaction commits even when the answer is an error, so a detected replay stays revoked.
Refused requests at ``/par``, ``/token`` and ``/revoke`` are written to the audit log
(security-and-privacy.md "Transparency of Operations": unsuccessful pairing attempts).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from authlib.common.security import generate_token
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidGrantError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749 import grants as authlib_grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.auth import pairing as rows
from bridge.auth.directory import DigaClient, get_client
from bridge.auth.errors import AuthError, OAuthError
from bridge.auth.scopes import SUPPORTED_SCOPES, parse_scope, scope_text
from bridge.auth.settings import AuthSecrets, AuthSettings
from bridge.auth.tokens import TokenSigner, leaf_sha256
from bridge.backend.store import Store, audit
from bridge.hddt.access import client_certificate_chain

T = TypeVar("T")

# error-codes.md "DiGA-VZ Validation Failures" (recommended descriptions).
NOT_REGISTERED = "The authenticated client is not registered or not active in the DiGA directory"
SCOPE_EXCEEDED = "The requested scope exceeds the scope granted to the client"
GRANT_TYPE_REFUSED = "The client is not authorized to use this authorization grant type"
# error-codes.md "Pairing ID Binding".
PAIRING_ID_FAILED = "Failed to generate pairing identifier"
# The project's own texts.
NO_CERTIFICATE = "Client authentication failed: no TLS client certificate was presented"
NO_CLIENT_ID = "Client authentication failed: the client_id parameter is missing"
PAR_REQUIRED = "Pushed authorization request required: pass the request_uri returned by /par"
PAR_UNKNOWN = "The request_uri is unknown, expired or already used"
REDIRECT_NOT_REGISTERED = "The redirect_uri is not registered for this client"
SCOPE_MALFORMED = "The scope is missing or is not a supported SMART scope of this server"
PKCE_REQUIRED = "PKCE is required: code_challenge with code_challenge_method=S256"

#: RFC 7636 section 4.2: 43 to 128 characters of the unreserved set.
_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
#: Parameters a pushed authorization request may carry (the HDDT list, plus the project's
#: ``prescription_end``). Everything else is refused rather than ignored.
PAR_PARAMETERS = frozenset({"client_id", "scope", "code_challenge", "code_challenge_method",
                            "redirect_uri", "state", "response_type", "prescription_end"})

_CONNECTION: contextvars.ContextVar[Connection] = contextvars.ContextVar("auth_connection")


def current_connection() -> Connection:
    """The transaction of the endpoint being run (:meth:`HddtAuthorizationServer.run`)."""
    return _CONNECTION.get()


_conn = current_connection


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- Authlib adapters ------------------------------------------------------------------------

class FormPayload(OAuth2Payload):  # type: ignore[misc]
    """Request parameters (query or form) as Authlib reads them."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class HddtRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth request as Authlib sees it, with the connection's client certificate."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str],
                 items: Sequence[tuple[str, str]], client_cert_chain: Sequence[str]) -> None:
        super().__init__(method=method, uri=uri, headers=dict(headers))
        self.payload = FormPayload(items)
        self.client_cert_chain = list(client_cert_chain)

    @property
    def form(self) -> dict[str, str]:
        return dict(self.payload.data)

    @property
    def args(self) -> dict[str, str]:
        return dict(self.payload.data)


@dataclass(frozen=True, slots=True)
class HddtClient:
    """A directory entry as Authlib's ``ClientMixin``."""

    entry: DigaClient

    @property
    def client_id(self) -> str:
        return self.entry.client_id

    def get_client_id(self) -> str:
        return self.entry.client_id

    def get_default_redirect_uri(self) -> str | None:
        # RFC 9700 section 2.1: no defaults; every request names its redirect URI.
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        requested = parse_scope(scope)
        if requested is None or not set(requested) <= set(self.entry.scopes):
            return None
        return scope_text(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # pairing.md: strict comparison with the registered URI.
        return redirect_uri in self.entry.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "tls_client_auth"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class DirectoryClientError(InvalidClientError):  # type: ignore[misc]
    """401 invalid_client without Authlib's ``WWW-Authenticate: Basic`` (mTLS, not Basic)."""

    status_code = 401

    def get_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                ("Pragma", "no-cache")]


def authenticate_tls_client(query_client: Callable[[str], HddtClient | None],
                            request: HddtRequest) -> HddtClient:
    """``tls_client_auth``: the client_id's active entry must hold the presented certificate."""
    if not request.client_cert_chain:
        raise DirectoryClientError(description=NO_CERTIFICATE)
    client_id = request.payload.client_id
    if not client_id:
        raise DirectoryClientError(description=NO_CLIENT_ID)
    client = query_client(client_id)
    presented = leaf_sha256(request.client_cert_chain[0])
    if (client is None or not client.entry.active
            or presented != client.entry.certificate_sha256):
        raise DirectoryClientError(description=NOT_REGISTERED)
    return client


@dataclass(frozen=True, slots=True)
class PairingUser:
    """The "user" Authlib passes around: a pairing and the grant its tokens belong to."""

    pairing_id: str
    client_id: str
    scopes: tuple[str, ...]
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshTokenModel:
    """A presented refresh token (Authlib's TokenMixin where it is needed)."""

    jti: str
    grant: rows.Grant
    scopes: tuple[str, ...]

    def check_client(self, client: HddtClient) -> bool:
        return self.grant.client_id == client.client_id

    def get_scope(self) -> str:
        return scope_text(self.scopes)


@dataclass(frozen=True, slots=True)
class AccessTokenModel:
    """A presented access token at ``/revoke``."""

    jti: str
    grant: rows.Grant

    def check_client(self, client: HddtClient) -> bool:
        return self.grant.client_id == client.client_id


def _active_pairing(conn: Connection, pairing_id: str, now: dt.datetime) -> rows.Pairing | None:
    found = rows.get_pairing(conn, pairing_id)
    return found if found is not None and found.active(now) else None


class HddtAuthorizationCodeGrant(authlib_grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["tls_client_auth"]  # noqa: RUF012 (Authlib's attribute)

    def save_authorization_code(self, code: str, request: HddtRequest) -> None:
        user: PairingUser = request.user
        server: HddtAuthorizationServer = self.server
        rows.save_code(
            _conn(), code, client_id=user.client_id, pairing_id=user.pairing_id,
            redirect_uri=request.payload.redirect_uri, scopes=user.scopes,
            code_challenge=request.payload.data["code_challenge"],
            code_challenge_method=request.payload.data["code_challenge_method"],
            lifetime=dt.timedelta(seconds=server.settings.code_lifetime_s), now=now_utc())

    def query_authorization_code(self, code: str,
                                 client: HddtClient) -> rows.AuthorizationCode | None:
        conn, now = _conn(), now_utc()
        found = rows.find_code(conn, code)
        if found is None or found.client_id != client.client_id:
            return None
        if found.used_at is not None:
            # RFC 6749 section 4.1.2: a code used twice is refused and what it issued revoked.
            if found.grant_id is not None:
                rows.revoke_grant(conn, found.grant_id, reason="code-reuse", now=now)
            audit(conn, actor=client.client_id, action="authorization-code-reused",
                  subject_type="pairing", subject_id=found.pairing_id)
            return None
        if found.expires_at <= now:
            return None
        return found

    def delete_authorization_code(self, authorization_code: rows.AuthorizationCode) -> None:
        """Codes are kept, marked used (:meth:`authenticate_user`), to detect reuse."""

    def authenticate_user(self, authorization_code: rows.AuthorizationCode) -> PairingUser:
        conn, now = _conn(), now_utc()
        if _active_pairing(conn, authorization_code.pairing_id, now) is None:
            raise InvalidGrantError(description="The consent behind this code was revoked")
        grant = rows.create_grant(conn, pairing_id=authorization_code.pairing_id,
                                  client_id=authorization_code.client_id,
                                  scopes=authorization_code.scopes, now=now)
        if not rows.mark_code_used(conn, authorization_code.code_sha256, grant.id, now):
            rows.revoke_grant(conn, grant.id, reason="code-reuse", now=now)
            raise InvalidGrantError(description="Invalid 'code' in request.")
        return PairingUser(authorization_code.pairing_id, authorization_code.client_id,
                           authorization_code.scopes, grant.id)


class HddtRefreshTokenGrant(authlib_grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["tls_client_auth"]  # noqa: RUF012 (Authlib's attribute)
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation (HDDT token endpoint: MUST support it)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshTokenModel | None:
        server: HddtAuthorizationServer = self.server
        conn, now = _conn(), now_utc()
        jti = server.signer.refresh_jti(refresh_token, now)
        found = None if jti is None else rows.find_refresh_token(conn, jti)
        if found is None or found.expires_at <= now:
            return None
        grant = rows.get_grant(conn, found.grant_id)
        if grant is None or grant.revoked_at is not None:
            return None
        if found.rotated_at is not None:
            # RFC 9700 section 4.14.2: a rotated refresh token presented again means it
            # leaked; the whole grant goes, the legitimate holder's current token included.
            rows.revoke_grant(conn, grant.id, reason="refresh-reuse", now=now)
            audit(conn, actor=grant.client_id, action="refresh-token-reused",
                  subject_type="pairing", subject_id=grant.pairing_id)
            return None
        pairing = _active_pairing(conn, grant.pairing_id, now)
        if pairing is None:
            return None
        scopes = tuple(s for s in grant.scopes if s in pairing.scopes)
        return RefreshTokenModel(found.jti, grant, scopes)

    def authenticate_user(self, refresh_token: RefreshTokenModel) -> PairingUser:
        if not rows.rotate_refresh_token(_conn(), refresh_token.jti, now_utc()):
            raise InvalidGrantError()
        grant = refresh_token.grant
        return PairingUser(grant.pairing_id, grant.client_id, refresh_token.scopes, grant.id)

    def revoke_old_credential(self, refresh_token: RefreshTokenModel) -> None:
        """Already marked rotated in :meth:`authenticate_user`, before the new pair is made."""


class HddtRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["tls_client_auth"]  # noqa: RUF012 (Authlib's attribute)

    def query_token(self, token_string: str,
                    token_type_hint: str | None) -> RefreshTokenModel | AccessTokenModel | None:
        server: HddtAuthorizationServer = self.server
        conn, now = _conn(), now_utc()
        jti = server.signer.refresh_jti(token_string, now)
        if jti is not None:
            found = rows.find_refresh_token(conn, jti)
            grant = None if found is None else rows.get_grant(conn, found.grant_id)
            return None if found is None or grant is None else RefreshTokenModel(
                found.jti, grant, grant.scopes)
        try:
            claims = server.signer.access_claims(token_string, now)
        except AuthError:
            return None
        grant_id = rows.grant_of_access_token(conn, claims["jti"])
        grant = None if grant_id is None else rows.get_grant(conn, grant_id)
        return None if grant is None else AccessTokenModel(claims["jti"], grant)

    def revoke_token(self, token: RefreshTokenModel | AccessTokenModel,
                     request: HddtRequest) -> None:
        # pairing.md RFC 7009 row: the refresh token, every access token of the grant, the
        # grant and the stored consent of the Pairing ID.
        rows.revoke_pairing(_conn(), token.grant.pairing_id, by="diga",
                            actor=token.grant.client_id)


class HddtAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """The authorization server of one Device Data Recorder."""

    def __init__(self, store: Store, settings: AuthSettings, secrets: AuthSecrets) -> None:
        super().__init__(scopes_supported=list(SUPPORTED_SCOPES))
        self.store = store
        self.settings = settings
        self.secrets = secrets
        self.signer = TokenSigner(secrets.signing_key, settings)
        self.register_client_auth_method("tls_client_auth", authenticate_tls_client)
        self.register_grant(HddtAuthorizationCodeGrant, [CodeChallenge(required=True)])
        self.register_grant(HddtRefreshTokenGrant)
        self.register_endpoint(HddtRevocationEndpoint)
        self.register_token_generator("default", self._generate_token)

    # -- Authlib hooks ---------------------------------------------------------------------

    def query_client(self, client_id: str) -> HddtClient | None:
        entry = get_client(_conn(), client_id)
        return None if entry is None else HddtClient(entry)

    def save_token(self, token: dict[str, Any], request: HddtRequest) -> None:
        """Tokens are recorded as they are made (:meth:`_generate_token`)."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal receivers."""

    def create_oauth2_request(self, request: HddtRequest) -> HddtRequest:
        return request

    def handle_response(self, status: int, body: Any,
                        headers: Sequence[tuple[str, str]]) -> Response:
        header_map = dict(headers)
        if isinstance(body, dict):
            header_map.pop("Content-Type", None)
            header_map.setdefault("Cache-Control", "no-store")
            return JSONResponse(body, status_code=status, headers=header_map)
        return Response(body or b"", status_code=status, headers=header_map)

    def validate_requested_scope(self, scope: str | None) -> None:
        if parse_scope(scope) is None:
            raise InvalidScopeError(description=SCOPE_MALFORMED)

    def _generate_token(self, *, grant_type: str, client: HddtClient, user: PairingUser,
                        scope: str | None = None, expires_in: int | None = None,
                        include_refresh_token: bool = True) -> dict[str, Any]:
        conn, now = _conn(), now_utc()
        assert user.grant_id is not None
        scopes = parse_scope(scope) or list(user.scopes)
        access = self.signer.access_token(pairing_id=user.pairing_id,
                                          client_id=client.client_id, scopes=scopes, now=now)
        rows.record_access_token(conn, access.jti, user.grant_id, access.issued_at,
                                 access.expires_at)
        refresh = self.signer.refresh_token(now=now)
        rows.record_refresh_token(conn, refresh.jti, user.grant_id, refresh.issued_at,
                                  refresh.expires_at)
        # pairing.md "Token Response": access_token, refresh_token, token_type, expires_in,
        # scope and sub (the Pairing ID).
        return {"access_token": access.token, "token_type": "Bearer",
                "expires_in": self.settings.access_token_lifetime_s,
                "refresh_token": refresh.token, "scope": scope_text(scopes),
                "sub": user.pairing_id}

    # -- running Authlib in a transaction ---------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.store.begin() as conn:
            token = _CONNECTION.set(conn)
            try:
                yield conn
            finally:
                _CONNECTION.reset(token)

    def run(self, work: Callable[[], T]) -> T:
        """``work`` inside one transaction, on the calling thread."""
        with self.transaction():
            return work()

    # -- endpoints -------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata with the values HDDT requires (metadata endpoint page)."""
        base = self.settings.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "revocation_endpoint": f"{base}/revoke",
            "pushed_authorization_request_endpoint": f"{base}/par",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
            "require_pushed_authorization_requests": True,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "tls_client_certificate_bound_access_tokens": False,
            "scopes_supported": list(SUPPORTED_SCOPES),
            "service_documentation": self.settings.documentation_url,
        }

    def push_authorization_request(self, request: HddtRequest) -> dict[str, Any]:
        """``/par``: validate and keep the request; returns ``request_uri`` and ``expires_in``
        (raises :class:`OAuthError`)."""
        conn, now = _conn(), now_utc()
        try:
            client: HddtClient = self.authenticate_client(request, ["tls_client_auth"], "par")
        except OAuth2Error as exc:
            raise OAuthError(exc.status_code, exc.error, exc.description) from None
        data, datalist = request.payload.data, request.payload.datalist
        if "request" in data:
            raise OAuthError(400, "invalid_request",
                             "The request parameter is not supported (no JWT-secured "
                             "authorization requests)")
        if "request_uri" in data:
            raise OAuthError(400, "invalid_request", "request_uri is not allowed at /par")
        repeated = sorted(k for k, v in datalist.items() if len(v) > 1)
        if repeated:
            raise OAuthError(400, "invalid_request", f"Parameter {repeated[0]} is repeated")
        unknown = sorted(set(data) - PAR_PARAMETERS)
        if unknown:
            raise OAuthError(400, "invalid_request", f"Unsupported parameter {unknown[0]}")
        if data.get("response_type") != "code":
            raise OAuthError(400, "unsupported_response_type", "response_type must be code")
        redirect_uri = data.get("redirect_uri")
        if not redirect_uri or not client.check_redirect_uri(redirect_uri):
            raise OAuthError(400, "invalid_request", REDIRECT_NOT_REGISTERED)
        requested = parse_scope(data.get("scope"))
        if requested is None:
            raise OAuthError(400, "invalid_scope", SCOPE_MALFORMED)
        if not set(requested) <= set(client.entry.scopes):
            raise OAuthError(400, "invalid_scope", SCOPE_EXCEEDED)
        challenge = data.get("code_challenge", "")
        if data.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(challenge):
            raise OAuthError(400, "invalid_request", PKCE_REQUIRED)
        if not data.get("state"):
            raise OAuthError(400, "invalid_request", "Missing state")
        params = {k: data[k] for k in PAR_PARAMETERS if k in data}
        params["scope"] = scope_text(requested)
        if "prescription_end" in params:
            end = parse_prescription_end(params["prescription_end"])
            if end <= now:
                raise OAuthError(400, "invalid_request", "prescription_end lies in the past")
            params["prescription_end"] = end.isoformat()
        lifetime = dt.timedelta(seconds=self.settings.par_lifetime_s)
        request_uri = rows.store_par(conn, client.client_id, params, lifetime=lifetime,
                                     now=now)
        return {"request_uri": request_uri, "expires_in": self.settings.par_lifetime_s}

    def pending_request(self, client_id: str | None,
                        request_uri: str | None) -> rows.PushedRequest:
        """The pushed request ``/authorize`` was sent for (:class:`OAuthError` when the
        request did not come through ``/par``, is unknown, expired, used or not the
        client's)."""
        if not request_uri:
            raise OAuthError(400, "invalid_request", PAR_REQUIRED)
        found = rows.load_par(_conn(), request_uri)
        if (found is None or found.used_at is not None or found.expires_at <= now_utc()
                or client_id != found.client_id):
            raise OAuthError(400, "invalid_request", PAR_UNKNOWN)
        entry = get_client(_conn(), found.client_id)
        if entry is None or not entry.active:
            raise OAuthError(400, "invalid_request", PAR_UNKNOWN)
        return found

    def authorization_request(self, pushed: rows.PushedRequest) -> HddtRequest:
        query = urlencode({"client_id": pushed.client_id, "request_uri": pushed.request_uri})
        return HddtRequest("GET", f"{self.settings.issuer}/authorize?{query}", {},
                           list(pushed.params.items()), [])

    def decide(self, pushed: rows.PushedRequest, *, patient_id: str,
               granted: Sequence[str] | None) -> str:
        """The patient's decision on a pushed request; returns where to send the browser.

        ``granted`` None or empty denies (``access_denied``); otherwise the consent is
        recorded under the Pairing ID and a code is issued for exactly ``granted``, which
        must be a subset of what was requested.
        """
        conn, now = _conn(), now_utc()
        if not rows.use_par(conn, pushed.request_uri, now):
            raise OAuthError(400, "invalid_request", PAR_UNKNOWN)
        request = self.authorization_request(pushed)
        try:
            grant = self.get_consent_grant(request=request)
        except OAuth2Error as exc:  # the pushed request no longer fits the directory entry
            raise OAuthError(exc.status_code, exc.error, exc.description or exc.error) from None
        redirect_uri: str = grant.redirect_uri
        requested = pushed.params["scope"].split()
        chosen = [s for s in requested if s in set(granted or ())]
        if granted and set(granted) - set(requested):
            raise OAuthError(400, "invalid_scope", "Granted scopes must be among those requested")
        if not chosen:
            audit(conn, actor=f"patient:{patient_id}", action="pairing-denied",
                  subject_type="diga", subject_id=pushed.client_id, patient_id=patient_id)
            return redirect_with(redirect_uri, error="access_denied",
                                 error_description="The patient denied the request",
                                 state=pushed.params.get("state"))
        try:
            pairing_id = rows.derive_pairing_id(self.secrets.pairing_salt, pushed.client_id,
                                                patient_id)
        except Exception:  # error-codes.md "Pairing ID Binding"
            return redirect_with(redirect_uri, error="server_error",
                                 error_description=PAIRING_ID_FAILED,
                                 state=pushed.params.get("state"))
        end = pushed.params.get("prescription_end")
        rows.record_consent(conn, pairing_id=pairing_id, patient_id=patient_id,
                            client_id=pushed.client_id, scopes=chosen,
                            prescription_end=None if end is None
                            else dt.datetime.fromisoformat(end),
                            now=now, actor=f"patient:{patient_id}")
        user = PairingUser(pairing_id, pushed.client_id, tuple(chosen))
        response: Response = self.create_authorization_response(request=request,
                                                                grant_user=user, grant=grant)
        location = response.headers.get("location")
        if location is None:  # pragma: no cover - Authlib always redirects here
            raise OAuthError(500, "server_error", "No redirect was produced")
        return location


def redirect_with(redirect_uri: str, **params: str | None) -> str:
    from authlib.common.urls import add_params_to_uri  # noqa: PLC0415

    return str(add_params_to_uri(redirect_uri, [(k, v) for k, v in params.items()
                                                if v is not None]))


def parse_prescription_end(text: str) -> dt.datetime:
    """``prescription_end`` (project extension of the PAR parameters): the last day of the
    prescription (``YYYY-MM-DD``, consent ends at the start of the next day, UTC) or an
    instant with its offset."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
        instant = dt.datetime.fromisoformat(text)
    except ValueError:
        raise OAuthError(400, "invalid_request",
                         "prescription_end must be YYYY-MM-DD or an ISO 8601 instant") from None
    if instant.tzinfo is None:
        raise OAuthError(400, "invalid_request", "prescription_end needs a UTC offset")
    return instant.astimezone(dt.UTC)


def generate_code() -> str:
    return str(generate_token(48))


# --- Starlette glue ---------------------------------------------------------------------------

async def oauth_request(request: Request, settings: AuthSettings) -> HddtRequest:
    """The Authlib request for a Starlette request (form body for POST, query for GET)."""
    items: list[tuple[str, str]]
    if request.method == "POST":
        form = await request.form()
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    else:
        items = list(request.query_params.multi_items())
    # Authlib checks the scheme; TLS ends at this server or at a trusted proxy in front.
    uri = settings.issuer + request.url.path
    return HddtRequest(request.method, uri, dict(request.headers), items,
                       client_certificate_chain(request))


def oauth_error_response(error: OAuthError) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def audit_refusal(endpoint: str, request: HddtRequest, status: int, body: Any) -> None:
    """An audit entry for a refused backend request (no patient data in it), in the
    current transaction."""
    error = body.get("error") if isinstance(body, dict) else None
    audit(_conn(), actor=str(request.payload.client_id or "unknown-client")[:128],
          action=f"{endpoint}-refused", subject_type="diga",
          subject_id=str(request.payload.client_id or "-")[:128],
          detail={"status": status, "error": error})


async def run_endpoint(server: HddtAuthorizationServer, work: Callable[[], T]) -> T:
    return await run_in_threadpool(server.run, work)
