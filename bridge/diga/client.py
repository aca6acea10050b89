"""The DiGA side of HDDT over mutual TLS: pairing, tokens, unpairing and FHIR reads.

Read top to bottom, this module is the DiGA's part of pairing.md "Pairing Sequence":

1. :meth:`DigaClient.metadata`: discovery at ``/.well-known/oauth-authorization-server``
   (RFC 8414; authorization-server-metadata-endpoint.md). Endpoints are never hard-coded.
2. :meth:`DigaClient.start_pairing`: PKCE verifier and ``state``, the pushed authorization
   request (RFC 9126; authorization-server-par-endpoint.md), and the authorization URL
   carrying only ``client_id`` and ``request_uri`` (authorization-server-authorization-
   endpoint.md).
3. The patient logs in at the maker's portal and consents per MIV. A real DiGA sends the
   patient's browser there; in the sandbox :meth:`DigaClient.pair_with_portal` walks the plain
   HTML forms itself.
4. :meth:`DigaClient.complete_pairing`: the redirect back carries ``code`` and ``state``; the
   state is checked, the code exchanged with the verifier (authorization-server-token-
   endpoint.md), and the token response's ``sub`` kept as the Pairing ID.
5. :meth:`DigaClient.refresh` (rotation: the new refresh token is saved before anything
   else), :meth:`DigaClient.unpair` (RFC 7009 revocation, authorization-server-revocation-
   endpoint.md), and the FHIR reads with the polling pattern of retrieving-data.md.

Every backend-to-backend request (PAR, token, revocation, FHIR) goes over mutual TLS with the
DiGA's client certificate (``tls_client_auth``: the ``client_id`` in the form, the certificate
on the TLS connection; certificate-bound tokens are not used). The server's certificate and
host name are checked against the sandbox CA. The patient's browser (user agent) presents no
client certificate.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hmac
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from bridge.diga.connection import Connection, PortalLogin
from bridge.diga.errors import (
    AuthorizationDenied,
    BundleError,
    DigaError,
    DiscoveryError,
    FhirError,
    NotPaired,
    OAuthError,
    PairingFlowError,
    PairingRevoked,
)
from bridge.diga.forms import Form, parse_forms
from bridge.diga.forms import page_error as _page_error
from bridge.diga.pkce import make_state, make_verifier, s256_challenge
from bridge.diga.polling import (
    BLOOD_GLUCOSE_CODES,
    CGM_CODES,
    ContinuousCursor,
    DedicatedCursor,
    PollResult,
    Rejected,
    bundle_observations,
    code_parameter,
    iso,
    next_link,
)
from bridge.diga.state import (
    PAIRED,
    PENDING,
    REVOKED,
    UNPAIRED,
    PairingState,
    PairingStore,
    PendingAuthorization,
)

WELL_KNOWN = "/.well-known/oauth-authorization-server"
FHIR_JSON = "application/fhir+json"
#: Refresh a little before the access token expires, not after a refused request.
EXPIRY_MARGIN = dt.timedelta(seconds=30)
#: At most this many pages of one search (a guard against a server that loops).
MAX_PAGES = 1000
#: At most this many redirects and forms on the way through the portal.
MAX_PORTAL_STEPS = 12
#: A throttled request (429/503 with Retry-After) is retried this often, if the wait is short.
MAX_THROTTLED_RETRIES = 3
MAX_RETRY_AFTER_S = 10.0
#: FHIR logical id (FHIR R4 datatypes.html#id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The parts of the authorization server metadata the DiGA uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    pushed_authorization_request_endpoint: str
    revocation_endpoint: str
    scopes_supported: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, issuer: str, data: Any) -> ServerMetadata:
        """Check a metadata document against RFC 8414 and the HDDT requirements."""
        if not isinstance(data, dict):
            raise DiscoveryError(issuer, "the metadata is not a JSON object")
        # RFC 8414 §3.3: the issuer in the document must be the one the DiGA asked.
        if str(data.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            raise DiscoveryError(issuer, f"the metadata names issuer {data.get('issuer')!r}")

        def endpoint(key: str) -> str:
            value = data.get(key)
            if not isinstance(value, str) or urlsplit(value).scheme != "https":
                raise DiscoveryError(issuer, f"{key} is missing or not an https:// URL")
            return value

        def offers(key: str, value: str) -> None:
            if value not in (data.get(key) or []):
                raise DiscoveryError(issuer, f"{key} does not list {value!r}")

        # pairing.md, RFC 8414 row: what the DiGA relies on below.
        if data.get("require_pushed_authorization_requests") is not True:
            raise DiscoveryError(issuer, "require_pushed_authorization_requests is not true")
        offers("code_challenge_methods_supported", "S256")
        offers("token_endpoint_auth_methods_supported", "tls_client_auth")
        offers("revocation_endpoint_auth_methods_supported", "tls_client_auth")
        if data.get("tls_client_certificate_bound_access_tokens") is not False:
            raise DiscoveryError(issuer, "tls_client_certificate_bound_access_tokens "
                                         "is not false")
        scopes = data.get("scopes_supported") or []
        return cls(issuer=issuer,
                   authorization_endpoint=endpoint("authorization_endpoint"),
                   token_endpoint=endpoint("token_endpoint"),
                   pushed_authorization_request_endpoint=endpoint(
                       "pushed_authorization_request_endpoint"),
                   revocation_endpoint=endpoint("revocation_endpoint"),
                   scopes_supported=tuple(str(s) for s in scopes), raw=data)


def mtls_context(ca_certificate: Path, certificate: Path | None = None,
                 private_key: Path | None = None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_certificate``, presenting ``certificate`` when
    given; TLS 1.2 or newer (BSI TR-02102-2), host names checked."""
    try:
        context = ssl.create_default_context(cafile=str(ca_certificate))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if certificate is not None:
            context.load_cert_chain(str(certificate),
                                    None if private_key is None else str(private_key))
    except (OSError, ssl.SSLError) as exc:
        raise DigaError(f"cannot load the TLS material ({ca_certificate}, {certificate}): "
                        f"{exc}") from None
    return context


class DigaClient:
    """A DiGA backend paired (or pairing) with one Device Data Recorder."""

    def __init__(self, connection: Connection, store: PairingStore, *,
                 clock: Clock = _utc_now, timeout: float = 15.0) -> None:
        self.connection = connection
        self.store = store
        self.clock = clock
        diga = connection.diga
        self._http = httpx.Client(
            verify=mtls_context(connection.ca_certificate, diga.certificate, diga.private_key),
            timeout=timeout, follow_redirects=False)
        self._timeout = timeout
        self._metadata: ServerMetadata | None = None

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> DigaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- 1. discovery -------------------------------------------------------------------------

    def metadata(self) -> ServerMetadata:
        """The authorization server metadata (fetched once per client)."""
        if self._metadata is None:
            issuer = self.connection.issuer
            response = self._send("GET", issuer + WELL_KNOWN,
                                  headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise DiscoveryError(issuer, f"{WELL_KNOWN} answered {response.status_code}")
            self._metadata = ServerMetadata.from_json(issuer, _json(response, issuer))
        return self._metadata

    # --- 2. pushed authorization request -------------------------------------------------

    def start_pairing(self, name: str, scopes: Iterable[str] | None = None, *,
                      prescription_end: dt.date | None = None,
                      extra: Mapping[str, str] | None = None) -> PairingState:
        """Push the authorization request and keep what the redirect must match.

        ``scopes`` defaults to the DiGA's registered scopes. ``prescription_end`` declares
        the last day of the prescription (this recorder's documented PAR extension: the
        consent never outlives it); ``extra`` adds further documented form parameters.
        Returns the pending pairing whose ``pending.authorize_url`` the browser opens.
        """
        meta = self.metadata()
        diga = self.connection.diga
        scope = " ".join(scopes if scopes is not None else diga.scopes)
        verifier = make_verifier()
        state_value = make_state()
        form = {
            "client_id": diga.client_id, "response_type": "code", "scope": scope,
            "redirect_uri": diga.redirect_uri, "state": state_value,
            "code_challenge": s256_challenge(verifier), "code_challenge_method": "S256",
            **(extra or {}),
        }
        if prescription_end is not None:
            form["prescription_end"] = prescription_end.isoformat()
        body = self._oauth_post(meta.pushed_authorization_request_endpoint, form, "PAR")
        request_uri = body.get("request_uri")
        expires_in = body.get("expires_in")
        if not isinstance(request_uri, str) or not isinstance(expires_in, int):
            raise OAuthError("PAR", 200, "invalid_response",
                             "the answer lacks request_uri or expires_in")
        authorize_url = meta.authorization_endpoint + (
            "&" if "?" in meta.authorization_endpoint else "?") + urlencode(
                {"client_id": diga.client_id, "request_uri": request_uri})
        with self.store.lock(name):
            previous = self.store.load(name) if self.store.exists(name) else None
            if previous is not None and previous.status == PAIRED:
                raise DigaError(f"pairing {name!r} is active (Pairing ID "
                                f"{previous.pairing_id}); unpair it first")
            state = PairingState(name=name, client_id=diga.client_id,
                                 issuer=self.connection.issuer,
                                 fhir_base_url=self.connection.fhir_base_url, status=PENDING)
            state.pending = PendingAuthorization(
                state=state_value, code_verifier=verifier, request_uri=request_uri,
                authorize_url=authorize_url, redirect_uri=diga.redirect_uri, scope=scope,
                expires_at=self.clock() + dt.timedelta(seconds=expires_in))
            self.store.save(state)
        return state

    # --- 3. the patient's consent (sandbox: walk the portal's forms) ---------------------

    def pair_with_portal(self, name: str, login: PortalLogin, *,
                         grant: Iterable[str] | None = None, deny: bool = False,
                         prescription_end: dt.date | None = None) -> PairingState:
        """Pair end to end as the patient would: PAR, login, consent, code exchange.

        ``grant`` names the scopes to tick on the consent page (default: every offered
        one); ``deny`` presses the decline button instead (the recorder then redirects with
        ``access_denied``).
        """
        pending = self.start_pairing(name, prescription_end=prescription_end).pending
        assert pending is not None
        redirected_to = self.consent_in_portal(pending.authorize_url, login, grant=grant,
                                               deny=deny)
        return self.complete_pairing(name, redirected_to)

    def consent_in_portal(self, authorize_url: str, login: PortalLogin, *,
                          grant: Iterable[str] | None = None, deny: bool = False) -> str:
        """Follow the authorization URL through the login and consent forms as a browser
        without JavaScript would; returns the URL the portal redirects to (the DiGA's
        redirect URI with ``code`` and ``state``)."""
        redirect_uri = self.connection.diga.redirect_uri
        issuer_origin = _origin(self.connection.issuer)
        wanted = None if grant is None else list(grant)
        logged_in = False
        with httpx.Client(verify=mtls_context(self.connection.ca_certificate),
                          timeout=self._timeout, follow_redirects=False) as browser:
            url, method, data = authorize_url, "GET", None
            for _ in range(MAX_PORTAL_STEPS):
                response = _browser_send(browser, method, url, data)
                if response.is_redirect:
                    location = urljoin(url, response.headers.get("location", ""))
                    if _same_endpoint(location, redirect_uri):
                        return str(location)
                    if _origin(location) != issuer_origin:
                        # Only the recorder's own pages or the registered redirect URI.
                        raise PairingFlowError("the portal redirected to a foreign origin",
                                               location)
                    url, method, data = location, "GET", None
                    continue
                if response.status_code >= 400 and logged_in and any(
                        f.has_password for f in parse_forms(response.text)):
                    raise PairingFlowError(f"the portal refused the login: "
                                           f"{_page_error(response.text)}", url)
                if response.status_code >= 400:
                    raise PairingFlowError(
                        f"the portal answered {response.status_code}: "
                        f"{_page_error(response.text) or response.reason_phrase}", url)
                form = _pick_form(parse_forms(response.text), url)
                if form.has_password:
                    if logged_in:
                        raise PairingFlowError("the portal refused the login", url)
                    form.fill_login(login.portal_username, login.portal_password)
                    button = form.approve_button()
                    logged_in = True
                else:
                    if form.checkboxes:
                        form.choose(wanted if wanted is not None
                                    else [b.value for b in form.checkboxes])
                    button = form.deny_button() if deny else form.approve_button()
                    if deny and button is None:
                        raise PairingFlowError("the consent form has no decline button", url)
                method = "POST" if form.method == "post" else "GET"
                target = form.target(url)
                if _origin(target) != issuer_origin:
                    raise PairingFlowError("a portal form posts to a foreign origin", target)
                url, data = target, form.fields(submit=button)
                if method == "GET":
                    url, data = url.split("?")[0] + "?" + urlencode(data), None
            raise PairingFlowError(f"no redirect to the DiGA after {MAX_PORTAL_STEPS} steps",
                                   url)

    # --- 4. code exchange ------------------------------------------------------------------

    def complete_pairing(self, name: str, redirected_to: str) -> PairingState:
        """Check the redirect (state, issuer) and exchange the code for tokens."""
        with self.store.lock(name):
            state = self.store.load(name)
            pending = state.pending
            if state.status != PENDING or pending is None:
                raise DigaError(f"pairing {name!r} has no authorization in progress "
                                f"(status {state.status})")
            if not _same_endpoint(redirected_to, pending.redirect_uri):
                raise PairingFlowError("the URL is not the registered redirect URI",
                                       redirected_to)
            query = {k: v[0] for k, v in parse_qs(urlsplit(redirected_to).query).items()}
            if "error" in query:
                raise AuthorizationDenied(query["error"], query.get("error_description", ""))
            # RFC 6749 §10.12: the state ties this redirect to the request this DiGA pushed.
            if not hmac.compare_digest(query.get("state", ""), pending.state):
                raise PairingFlowError("the redirect's state does not match this pairing")
            # RFC 9207: when the recorder names itself, it must be the issuer we talk to.
            if "iss" in query and query["iss"].rstrip("/") != state.issuer.rstrip("/"):
                raise PairingFlowError(f"the redirect names issuer {query['iss']!r}")
            code = query.get("code")
            if not code:
                raise PairingFlowError("the redirect carries no code", redirected_to)
            meta = self.metadata()
            now = self.clock()
            body = self._oauth_post(meta.token_endpoint, {
                "grant_type": "authorization_code", "code": code,
                "redirect_uri": pending.redirect_uri, "client_id": state.client_id,
                "code_verifier": pending.code_verifier}, "token")
            _check_token_response(body, first=True)
            state.store_tokens(body, now)
            state.status = PAIRED
            state.paired_at = now
            state.pending = None
            self.store.save(state)
            return state

    # --- 5. refresh and unpair -------------------------------------------------------------

    def refresh(self, name: str) -> PairingState:
        """Use the refresh token; the rotated one is saved at once."""
        with self.store.lock(name):
            state = self._paired(name)
            self._refresh(state)
            return state

    def _refresh(self, state: PairingState) -> None:
        if not state.refresh_token:
            raise NotPaired(state.name, "no refresh token")
        meta = self.metadata()
        now = self.clock()
        try:
            body = self._oauth_post(meta.token_endpoint, {
                "grant_type": "refresh_token", "refresh_token": state.refresh_token,
                "client_id": state.client_id}, "token")
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                # pairing.md "Unpairing by the patient": the recorder ended the pairing; the
                # DiGA invalidates its local consent record.
                state.end(REVOKED, f"refresh refused: {exc.description or exc.error}", now)
                self.store.save(state)
                raise PairingRevoked(state.name, f"the recorder refused the refresh token "
                                                 f"({exc.description or exc.error}); "
                                                 "the pairing has ended") from exc
            raise
        _check_token_response(body, first=False)
        state.store_tokens(body, now)
        self.store.save(state)

    def unpair(self, name: str) -> PairingState:
        """Revoke the refresh token (and with it the grant, its access tokens and the
        patient's consent) and forget the tokens."""
        with self.store.lock(name):
            state = self._paired(name)
            meta = self.metadata()
            assert state.refresh_token is not None
            response = self._send("POST", meta.revocation_endpoint, data={
                "client_id": state.client_id, "token": state.refresh_token,
                "token_type_hint": "refresh_token"})
            if response.status_code != 200:
                raise _oauth_error("revoke", response)
            state.end(UNPAIRED, "unpaired by the DiGA", self.clock())
            self.store.save(state)
            return state

    def _paired(self, name: str) -> PairingState:
        state = self.store.load(name)
        if state.status != PAIRED or not state.refresh_token:
            why = state.ended_reason or f"status {state.status}"
            raise NotPaired(name, f"not paired ({why})")
        return state

    # --- FHIR reads ---------------------------------------------------------------------------

    def fetch_blood_glucose(self, name: str, start: dt.datetime,
                            overlap: dt.timedelta = dt.timedelta(0), *,
                            replay: bool = False) -> PollResult:
        """New blood glucose readings since the last poll (``start`` on the first).

        ``replay``: read everything from ``start`` again with a fresh cursor and leave the
        pairing's cursor where it is (to look at or plot a period)."""
        with self.store.lock(name):
            state = self._paired(name)
            cursor = DedicatedCursor() if replay else state.blood_glucose
            params = {"code": code_parameter(BLOOD_GLUCOSE_CODES),
                      "date": cursor.search_date(start, overlap), "_sort": "date"}
            observations = self._search(state, params)
            result = cursor.take(observations, overlap)
            self.store.save(state)
            return result

    def fetch_cgm(self, name: str, start: dt.datetime,
                  overlap: dt.timedelta = dt.timedelta(0), *, replay: bool = False
                  ) -> PollResult:
        """New CGM samples since the last poll: re-read the open chunks by id, then search
        for newer chunks when the newest known one is final (``start`` on the first).
        ``replay`` as for :meth:`fetch_blood_glucose`."""
        with self.store.lock(name):
            state = self._paired(name)
            cursor = ContinuousCursor() if replay else state.cgm
            result = PollResult()
            for chunk_id in cursor.open_chunks():
                try:
                    observation = self._read(state, "Observation", chunk_id)
                except FhirError as exc:
                    if exc.status not in {404, 410}:
                        raise
                    cursor.forget(chunk_id)
                    result.rejected.append(Rejected(chunk_id, f"no longer served "
                                                              f"({exc.status})"))
                    continue
                result.extend(cursor.take([observation], searched=False, overlap=overlap))
            if cursor.needs_search(self.clock()):
                params = {"code": code_parameter(CGM_CODES),
                          "date": cursor.search_date(start, overlap), "_sort": "date"}
                result.extend(cursor.take(self._search(state, params), overlap=overlap))
            self.store.save(state)
            return result

    def cgm_summary(self, name: str, start: dt.datetime | None = None,
                    end: dt.datetime | None = None, *, related: bool = False
                    ) -> dict[str, Any]:
        """The ``$hddt-cgm-summary`` report (measurement-cgm.md) as a Bundle."""
        parameters: list[dict[str, Any]] = []
        if start is not None:
            parameters.append({"name": "effectivePeriodStart", "valueDateTime": iso(start)})
        if end is not None:
            parameters.append({"name": "effectivePeriodEnd", "valueDateTime": iso(end)})
        parameters.append({"name": "related", "valueBoolean": related})
        with self.store.lock(name):
            state = self._paired(name)
            url = f"{state.fhir_base_url}/Observation/$hddt-cgm-summary"
            response = self._fhir(state, "POST", url, json_body={
                "resourceType": "Parameters", "parameter": parameters})
            self.store.save(state)
            bundle = _json(response, url)
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise BundleError("$hddt-cgm-summary did not answer with a Bundle")
            return bundle

    def read(self, name: str, resource_type: str, resource_id: str) -> dict[str, Any]:
        """A FHIR read of one resource (``Device/…``, ``DeviceMetric/…``, ``Observation/…``)."""
        with self.store.lock(name):
            state = self._paired(name)
            resource = self._read(state, resource_type, resource_id)
            self.store.save(state)
            return resource

    def _read(self, state: PairingState, resource_type: str, resource_id: str
              ) -> dict[str, Any]:
        if not _FHIR_ID.fullmatch(resource_id) or not resource_type.isalpha():
            raise BundleError(f"not a FHIR resource reference: {resource_type}/{resource_id}")
        url = f"{state.fhir_base_url}/{resource_type}/{resource_id}"
        resource = _json(self._fhir(state, "GET", url), url)
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise BundleError(f"{url} did not answer with a {resource_type}")
        return resource

    def _search(self, state: PairingState, params: Mapping[str, str]) -> list[dict[str, Any]]:
        url = f"{state.fhir_base_url}/Observation"
        observations: list[dict[str, Any]] = []
        query: Mapping[str, str] | None = params
        for _ in range(MAX_PAGES):
            bundle = _json(self._fhir(state, "GET", url, params=query), url)
            observations.extend(bundle_observations(bundle))
            following = next_link(bundle)
            if following is None:
                return observations
            # The access token goes only to the recorder's own FHIR base.
            if not following.startswith(state.fhir_base_url + "/"):
                raise BundleError(f"a next link outside the FHIR base: {following}")
            url, query = following, None
        raise BundleError(f"more than {MAX_PAGES} pages in one search")

    def _fhir(self, state: PairingState, method: str, url: str, *,
              params: Mapping[str, str] | None = None,
              json_body: Any = None) -> httpx.Response:
        """A FHIR request with a fresh access token; one refresh and retry on 401."""
        for attempt in range(2):
            expires = state.access_token_expires_at
            if (not state.access_token or expires is None
                    or expires - EXPIRY_MARGIN <= self.clock()):
                self._refresh(state)
            headers = {"Authorization": f"Bearer {state.access_token}", "Accept": FHIR_JSON}
            if json_body is not None:
                headers["Content-Type"] = FHIR_JSON
            response = self._send(method, url, params=params, json=json_body,
                                  headers=headers)
            if response.status_code == 401 and attempt == 0:
                # An access token the recorder no longer accepts (revoked consent, restart):
                # a refresh tells whether the pairing still exists.
                state.access_token = None
                continue
            if response.status_code >= 400:
                raise _fhir_error(url, response)
            return response
        raise DigaError("unreachable")  # pragma: no cover - the loop returns or raises

    # --- HTTP ---------------------------------------------------------------------------------

    def _oauth_post(self, url: str, form: Mapping[str, str], endpoint: str) -> dict[str, Any]:
        response = self._send("POST", url, data=dict(form),
                              headers={"Accept": "application/json"})
        if response.status_code not in {200, 201}:
            raise _oauth_error(endpoint, response)
        body = _json(response, url)
        if not isinstance(body, dict):
            raise OAuthError(endpoint, response.status_code, "invalid_response",
                             "the answer is not a JSON object")
        return body

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for _ in range(MAX_THROTTLED_RETRIES + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.RemoteProtocolError as exc:
                # A recorder that does not trust the presented client certificate ends the
                # TLS connection before answering.
                raise DigaError(f"cannot reach {url}: {exc} (does the recorder trust this "
                                "DiGA's client certificate?)") from None
            except httpx.HTTPError as exc:
                raise DigaError(f"cannot reach {url}: {exc}") from None
            if response.status_code not in {429, 503}:
                return response
            # error-codes.md: 429 (and 503) carry Retry-After; wait as told, briefly.
            delay = _retry_after(response.headers.get("retry-after"))
            if delay is None or delay > MAX_RETRY_AFTER_S:
                return response
            time.sleep(delay)
        return response


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _browser_send(browser: httpx.Client, method: str, url: str,
                  data: list[tuple[str, str]] | None) -> httpx.Response:
    try:
        if data is None:
            return browser.request(method, url)
        body = urlencode(data)
        return browser.request(method, url, content=body, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
    except httpx.HTTPError as exc:
        raise PairingFlowError(f"cannot reach the portal: {exc}", url) from None


def _pick_form(forms: list[Form], url: str) -> Form:
    """The login form, else the consent form (checkboxes), else the only form."""
    for form in forms:
        if form.has_password:
            return form
    for form in forms:
        if form.checkboxes:
            return form
    posting = [f for f in forms if f.method == "post"]
    if len(posting) == 1:
        return posting[0]
    raise PairingFlowError(f"expected a login or consent form, found {len(forms)} forms", url)


def _check_token_response(body: Mapping[str, Any], *, first: bool) -> None:
    """pairing.md "Token Response": access_token, refresh_token, token_type, expires_in,
    scope and sub (the Pairing ID)."""
    required = ["access_token", "token_type", "expires_in", "scope"]
    if first:
        required += ["refresh_token", "sub"]
    missing = [key for key in required if not body.get(key)]
    if missing:
        raise OAuthError("token", 200, "invalid_response",
                         f"the token response lacks {', '.join(missing)}")
    if str(body["token_type"]).lower() != "bearer":
        raise OAuthError("token", 200, "invalid_response",
                         f"token_type {body['token_type']!r} is not Bearer")
    if not isinstance(body["expires_in"], int) or body["expires_in"] <= 0:
        raise OAuthError("token", 200, "invalid_response", "expires_in is not a positive "
                                                           "integer")


def _json(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise BundleError(f"{url} answered {response.status_code} without JSON") from None


def _oauth_error(endpoint: str, response: httpx.Response) -> OAuthError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return OAuthError(endpoint, response.status_code,
                      str(body.get("error") or response.reason_phrase or "error"),
                      str(body.get("error_description") or ""))


def _fhir_error(url: str, response: httpx.Response) -> FhirError:
    error = ""
    diagnostics = ""
    challenge = response.headers.get("www-authenticate", "")
    match = re.search(r'error="([^"]*)"', challenge)
    if match:
        error = match.group(1)
    match = re.search(r'error_description="([^"]*)"', challenge)
    if match:
        diagnostics = match.group(1)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            texts = [str(i.get("diagnostics", "")) for i in body.get("issue") or []
                     if isinstance(i, dict)]
            diagnostics = "; ".join(t for t in texts if t) or diagnostics
        else:
            error = error or str(body.get("error", ""))
            diagnostics = diagnostics or str(body.get("error_description", ""))
    return FhirError(url, response.status_code, diagnostics, error)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _same_endpoint(url: str, registered: str) -> bool:
    """Whether ``url`` is the registered redirect URI (exact scheme, host, port and path)."""
    a, b = urlsplit(url), urlsplit(registered)
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)
