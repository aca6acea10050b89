"""The maker's patient portal: login, the consent screen of ``/authorize``, the list of
pairings with revoke (HDDT pairing.md "Consent for Fine-Grained Access", "Unpairing by the
patient"; authorization-server-authorization-endpoint.md).

* Plain HTML forms without JavaScript, so browsers and scripted clients both get through.
* The consent screen names the DiGA and shows each requested scope (one per MIV) as its own
  checkbox, unticked: the patient grants each one by an act of their own, any subset.
* Every form carries a CSRF token bound to the session; a POST without it is refused (403).
* No open redirects: after login the portal only goes to its own ``/authorize`` or
  ``/portal/`` paths, and the browser leaves for a DiGA only through the redirect URI of a
  pushed request, which was checked against the directory.
* Sessions are signed cookies (HMAC-SHA-256 under the server's session key; HttpOnly,
  Secure, SameSite=Lax) carrying the patient id, the CSRF token and an expiry.
* Failed logins are throttled per login name and per client address
  (:func:`bridge.auth.accounts.throttled_login`): a locked name gets 429 with Retry-After,
  the same page whether or not the name exists, even for the right password.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from bridge.auth import pairing as rows
from bridge.auth.accounts import LoginLimits, LoginRefused, throttled_login
from bridge.auth.directory import get_client, list_clients
from bridge.auth.errors import OAuthError
from bridge.auth.portal_templates import TEMPLATES
from bridge.auth.scopes import SCOPE_LABELS, SUPPORTED_SCOPES
from bridge.auth.server import HddtAuthorizationServer, current_connection, run_endpoint
from bridge.auth.tls import ProxyNetworks, from_trusted_proxy, proxy_networks
from bridge.auth.tokens import reading
from bridge.backend.store import AuditEntry, list_audit

COOKIE = "hddt_portal"
#: Entries shown on the portal's audit page.
AUDIT_PAGE = 200
_ACTIONS = {"pairing-consented": "You agreed to share data",
            "pairing-denied": "You refused a request to share data",
            "pairing-revoked": "Sharing stopped",
            "portal-account-created": "Portal login created",
            "portal-login-locked": "Login locked after too many wrong passwords"}


def audit_row(entry: AuditEntry, names: dict[str, str]) -> dict[str, str]:
    """One audit entry as the patient reads it."""
    detail = entry.detail if isinstance(entry.detail, dict) else {}
    client = str(detail.get("client_id") or detail.get("partner_id") or "")
    if not client and entry.subject_type == "diga":
        client = entry.subject_id
    if entry.action.startswith("hddt-"):
        what = f"Data request: {entry.action.removeprefix('hddt-')}"
        result = str(detail.get("status", ""))
    else:
        what = _ACTIONS.get(entry.action, entry.action)
        result = str(detail.get("by", "")) if entry.action == "pairing-revoked" else ""
    return {"at": entry.at.strftime("%Y-%m-%d %H:%M:%S"), "what": what,
            "who": names.get(client, client), "result": result}


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    patient_id: str | None
    expires: int


class SessionCodec:
    """Signed session cookies (no server-side state)."""

    def __init__(self, key: bytes, lifetime_s: int) -> None:
        self.key = hashlib.sha256(b"hddt-portal-session\x00" + key).digest()
        self.lifetime_s = lifetime_s

    def _mac(self, data: bytes) -> str:
        digest = hmac.new(self.key, data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def dump(self, session: Session) -> str:
        data = base64.urlsafe_b64encode(json.dumps(
            {"c": session.csrf, "p": session.patient_id, "e": session.expires},
            separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{data}.{self._mac(data.encode())}"

    def load(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        data, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            session = Session(str(raw["c"]), raw["p"], int(raw["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= time.time() or not isinstance(session.patient_id, str | None):
            return None
        return session

    def fresh(self, patient_id: str | None = None) -> Session:
        return Session(secrets.token_urlsafe(24), patient_id,
                       int(time.time()) + self.lifetime_s)


def safe_next(target: str | None) -> str:
    """A post-login destination on this server only (no scheme, no host, own paths)."""
    if not target:
        return "/portal/pairings"
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc or "\\" in target or target.startswith("//")
            or not (parts.path == "/authorize" or parts.path.startswith("/portal/"))):
        return "/portal/pairings"
    return target


def client_address(request: Request, proxies: ProxyNetworks) -> str:
    """The address a request came from: the peer's, or behind a trusted reverse proxy the
    last address that proxy appended to ``X-Forwarded-For`` (what earlier hops wrote there
    could be made up by the client)."""
    peer = request.client.host if request.client is not None else ""
    if from_trusted_proxy(request.scope, proxies):
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
        last = forwarded[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return peer or "unknown"


def portal_routes(server: HddtAuthorizationServer) -> list[BaseRoute]:
    """``/authorize`` and ``/portal/...`` routes."""
    settings = server.settings
    codec = SessionCodec(server.secrets.session_key, settings.session_lifetime_s)
    limits = LoginLimits.of(settings)
    proxies = proxy_networks(settings.trusted_proxies)

    def session_of(request: Request) -> Session | None:
        return codec.load(request.cookies.get(COOKIE))

    def render(name: str, session: Session, status: int = 200,
               **context: Any) -> HTMLResponse:
        html = TEMPLATES.get_template(name).render(
            csrf=session.csrf, logged_in=session.patient_id is not None, **context)
        response = HTMLResponse(html, status_code=status, headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self' *; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer"})
        set_session(response, session)
        return response

    def set_session(response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, codec.dump(session), max_age=settings.session_lifetime_s,
                            httponly=True, secure=settings.secure_cookies, samesite="lax",
                            path="/")

    def redirect(location: str, session: Session | None = None) -> Response:
        response = RedirectResponse(location, status_code=303,
                                    headers={"Cache-Control": "no-store"})
        if session is not None:
            set_session(response, session)
        return response

    async def checked_form(request: Request) -> tuple[Session, FormData] | Response:
        """The form of a POST whose CSRF token matches the session, or a 403 page."""
        session = session_of(request)
        form = await request.form()
        token = form.get("csrf")
        if (session is None or not isinstance(token, str)
                or not hmac.compare_digest(token, session.csrf)):
            fresh = session or codec.fresh()
            return render("error.html", fresh, 403, error="csrf",
                          description="The form is stale or did not come from this portal; "
                                      "reload the page and try again")
        return session, form

    def error_page(session: Session, exc: OAuthError) -> HTMLResponse:
        return render("error.html", session, exc.status, error=exc.error,
                      description=exc.description)

    # -- login ------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        session = session_of(request) or codec.fresh()
        return render("login.html", session, next=safe_next(request.query_params.get("next")),
                      reason=None, error=None)

    async def login(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        target = safe_next(str(form.get("next", "")))

        address = client_address(request, proxies)

        def check() -> str | LoginRefused | None:
            return throttled_login(server.store, username, password, client_address=address,
                                   limits=limits)

        patient_id = await run_in_threadpool(check)
        if isinstance(patient_id, LoginRefused):
            # The same words for a known and an unknown name, and for a name or an address
            # limit: the page tells nothing about which accounts exist.
            minutes = math.ceil(patient_id.retry_after_s / 60)
            refused = render("login.html", session, 429, next=target, reason=None,
                             error="Too many failed logins for this user name or from your "
                                   f"network. Try again in {minutes} minute"
                                   f"{'s' if minutes != 1 else ''}.")
            refused.headers["Retry-After"] = str(patient_id.retry_after_s)
            return refused
        if patient_id is None:
            return render("login.html", session, 401, next=target, reason=None,
                          error="User name or password is wrong.")
        # A new session (and CSRF token) at login: nothing from before carries over.
        return redirect(target, codec.fresh(patient_id))

    async def logout(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        return redirect("/portal/login", codec.fresh())

    # -- consent ----------------------------------------------------------------------------

    async def authorize(request: Request) -> Response:
        session = session_of(request) or codec.fresh()
        client_id = request.query_params.get("client_id")
        request_uri = request.query_params.get("request_uri")

        def pending() -> rows.PushedRequest:
            return server.pending_request(client_id, request_uri)

        try:
            pushed = await run_endpoint(server, pending)
        except OAuthError as exc:
            return error_page(session, exc)
        if session.patient_id is None:
            target = "/authorize?" + urlencode({"client_id": pushed.client_id,
                                                "request_uri": pushed.request_uri})
            return render("login.html", session, next=target, error=None,
                          reason="Log in to decide what to share.")

        def describe() -> tuple[str, str]:
            entry = get_client(current_connection(), pushed.client_id)
            assert entry is not None
            end = pushed.params.get("prescription_end")
            until = rows.consent_expiry(rows.now_utc(), None if end is None
                                        else dt.datetime.fromisoformat(end))
            return entry.name, until.date().isoformat()

        name, until = await run_endpoint(server, describe)
        scopes = [(s, SCOPE_LABELS.get(s, s)) for s in pushed.params["scope"].split()]
        return render("consent.html", session, diga_name=name, client_id=pushed.client_id,
                      request_uri=pushed.request_uri, scopes=scopes, valid_until=until)

    async def decide(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        if session.patient_id is None:
            return render("login.html", session, 401, next="/portal/pairings", error=None,
                          reason="Your session ended; start again from the application.")
        patient_id = session.patient_id
        client_id = str(form.get("client_id", "")) or None
        request_uri = str(form.get("request_uri", "")) or None
        allow = form.get("decision") == "allow"
        granted = [str(v) for v in form.getlist("scope")] if allow else []

        def work() -> str:
            pushed = server.pending_request(client_id, request_uri)
            return server.decide(pushed, patient_id=patient_id, granted=granted)

        try:
            location = await run_endpoint(server, work)
        except OAuthError as exc:
            return error_page(session, exc)
        return redirect(location, session)

    # -- pairings ---------------------------------------------------------------------------

    async def pairings(request: Request) -> Response:
        session = session_of(request)
        if session is None or session.patient_id is None:
            return redirect("/portal/login?next=/portal/pairings")
        patient_id = session.patient_id

        def load() -> list[rows.Pairing]:
            with reading(server.store) as conn:
                return rows.list_pairings(conn, patient_id)

        found = await run_in_threadpool(load)
        now = rows.now_utc()
        active = [{"id": p.id, "client_name": p.client_name,
                   "labels": [SCOPE_LABELS.get(s, s) for s in p.scopes],
                   "granted": p.granted_at.date().isoformat(),
                   "until": p.expires_at.date().isoformat()}
                  for p in found if p.active(now)]
        ended = [{"client_name": p.client_name,
                  "why": (f"withdrawn on {p.revoked_at.date().isoformat()}"
                          if p.revoked_at is not None
                          else f"expired on {p.expires_at.date().isoformat()}")}
                 for p in found if not p.active(now)]
        message = request.query_params.get("done")
        return render("pairings.html", session, active=active, ended=ended,
                      message="Sharing stopped." if message == "revoked" else None)

    async def revoke(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        if session.patient_id is None:
            return redirect("/portal/login?next=/portal/pairings")
        patient_id = session.patient_id
        pairing_id = str(form.get("pairing_id", ""))

        def work() -> bool:
            conn = current_connection()
            found = rows.get_pairing(conn, pairing_id)
            # Only the patient's own pairing; anything else looks like "not found".
            if found is None or found.patient_id != patient_id:
                return False
            rows.revoke_pairing(conn, pairing_id, by="patient", actor=f"patient:{patient_id}")
            return True

        if not await run_endpoint(server, work):
            return render("error.html", session, 404, error="not_found",
                          description="No such pairing")
        return redirect("/portal/pairings?done=revoked", session)

    async def audit_trail(request: Request) -> Response:
        # security-and-privacy.md "Transparency of Operations": the patient can inspect the
        # audit trail.
        session = session_of(request)
        if session is None or session.patient_id is None:
            return redirect("/portal/login?next=/portal/audit")
        patient_id = session.patient_id

        def load() -> list[dict[str, str]]:
            with reading(server.store) as conn:
                names = {c.client_id: c.name for c in list_clients(conn)}
                found = list_audit(conn, patient_id=patient_id, limit=AUDIT_PAGE)
            return [audit_row(e, names) for e in found]

        entries = await run_in_threadpool(load)
        return render("audit.html", session, entries=entries, limit=AUDIT_PAGE)

    async def registration(request: Request) -> Response:
        return render("registration.html", session_of(request) or codec.fresh(),
                      scopes=SUPPORTED_SCOPES)

    async def home(request: Request) -> Response:
        return redirect("/portal/pairings")

    return [
        Route("/authorize", authorize, methods=["GET"]),
        Route("/authorize", decide, methods=["POST"]),
        Route("/portal", home, methods=["GET"]),
        Route("/portal/", home, methods=["GET"]),
        Route("/portal/login", login_form, methods=["GET"]),
        Route("/portal/login", login, methods=["POST"]),
        Route("/portal/logout", logout, methods=["POST"]),
        Route("/portal/pairings", pairings, methods=["GET"]),
        Route("/portal/pairings/revoke", revoke, methods=["POST"]),
        Route("/portal/audit", audit_trail, methods=["GET"]),
        Route("/portal/client-registration", registration, methods=["GET"]),
    ]

