"""The dashboard's ASGI app: an overview page and one page per patient, GET only.

Mounted at ``/dashboard`` by the web server (``bridge.web``). It shows every patient's data,
so in production it must sit behind the maker's own access control; ``basic_auth`` adds a
second, optional fence (HTTP Basic, RFC 7617). Everything is rendered on the server: HTML
from Jinja2 templates (autoescaped) with inline SVG charts, no JavaScript, no external
resources.

Reads go through ``Store.read()``: on SQLite a DEFERRED transaction (no write lock), so a page
view neither waits for the ingest nor holds it up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from bridge.backend.store import Store
from bridge.dashboard import DashboardError
from bridge.dashboard.auth import BasicAuth
from bridge.dashboard.charts import daily_overlay_chart, glucose_chart, time_in_range_bar
from bridge.dashboard.queries import Overview, PatientWindow, overview, patient_window
from bridge.dashboard.stats import (
    RANGES,
    basal_steps,
    daily_profile,
    time_in_ranges,
)

#: The longest window a patient page shows (HDDT exports the last 30 days).
MAX_DAYS = 30
DEFAULT_DAYS = 1
#: Auto-refresh (``?refresh=N``) is allowed in this interval of seconds.
REFRESH_RANGE_S = (5, 3600)
_TEMPLATES = Path(__file__).with_name("templates")
_SAFE_METHODS = frozenset({"GET", "HEAD"})

Clock = Callable[[], dt.datetime]


class BadRequest(DashboardError):
    """A query parameter the page cannot use; shown to the user with status 400."""

    def __init__(self, parameter: str, value: str, expected: str) -> None:
        self.parameter, self.value, self.expected = parameter, value, expected
        super().__init__(f"{parameter}={value!r}: {expected}")


def _environment(tz: ZoneInfo) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)

    def when(value: dt.datetime | None) -> str:
        if value is None:
            return "—"
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    env.filters["when"] = when
    env.filters["duration"] = _duration
    return env


def _duration(seconds: float | None) -> str:
    """``12.3 s``, ``5 min``, ``3 h``, ``212 d`` (``—`` when unknown)."""
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:.1f} s"


def _ago(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "never"
    seconds = (now - value).total_seconds()
    return "in the future" if seconds < 0 else f"{_duration(seconds)} ago"


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int
               ) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, raw, f"a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise BadRequest(name, raw, f"a whole number from {lo} to {hi}")
    return value


def _end_param(request: Request, tz: ZoneInfo, now: dt.datetime) -> dt.datetime:
    raw = request.query_params.get("end")
    if raw is None or raw == "":
        return now
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest("end", raw, "an ISO 8601 date or date-time, e.g. 2027-07-01 or "
                                     "2027-07-01T12:00:00Z") from None
    if value.tzinfo is None:  # a wall-clock time of the dashboard's zone
        value = value.replace(tzinfo=tz)
    return value.astimezone(dt.UTC)


def create_dashboard_app(store: Store, *, portal_url: str | None = None,
                         fhir_base_url: str | None = None,
                         basic_auth: BasicAuth | None = None,
                         timezone: str = "Europe/Berlin",
                         clock: Clock | None = None) -> FastAPI:
    """The dashboard over ``store``.

    ``portal_url`` and ``fhir_base_url`` are linked from every page. ``basic_auth`` (user name
    and PBKDF2 password hash, see :mod:`bridge.dashboard.auth`) makes every page ask for that
    user. ``timezone`` is the zone of the times shown and of the daily overlay's time of day
    (the patients' zone). ``clock`` gives "now" (tests pin it).
    """
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DashboardError(f"unknown time zone {timezone!r} (an IANA name such as "
                             "'Europe/Berlin')") from None
    now_of: Clock = clock or (lambda: dt.datetime.now(dt.UTC))
    env = _environment(tz)
    app = FastAPI(title="hddt-bridge dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)

    def render(request: Request, template: str, status: int = 200, **context: Any
               ) -> HTMLResponse:
        refresh = _int_param(request, "refresh", None, *REFRESH_RANGE_S)
        html = env.get_template(template).render(
            portal_url=portal_url, fhir_base_url=fhir_base_url, refresh=refresh,
            root=request.url_for("overview").path, timezone=timezone, status=status,
            **context)
        return HTMLResponse(html, status_code=status)

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Read-only: any other method is refused before anything else happens.
        if request.method not in _SAFE_METHODS:
            return Response(f"{request.method} not allowed: the dashboard is read-only\n",
                            status_code=405, headers={"Allow": "GET, HEAD"},
                            media_type="text/plain")
        if basic_auth is not None:
            header = request.headers.get("authorization")
            if not await run_in_threadpool(basic_auth.check, header):
                return Response("authentication required\n", status_code=401,
                                media_type="text/plain",
                                headers={"WWW-Authenticate":
                                         'Basic realm="hddt-bridge dashboard", charset="UTF-8"'})
        response = await call_next(request)
        # Patient data: never cached, never framed, nothing loaded from elsewhere.
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> HTMLResponse:
        html = env.get_template("error.html").render(
            portal_url=portal_url, fhir_base_url=fhir_base_url, refresh=None,
            root=request.url_for("overview").path, timezone=timezone, status=400,
            title="Bad request", message=f"{exc.parameter}={exc.value!r} — expected "
                                         f"{exc.expected}.")
        return HTMLResponse(html, status_code=400)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse,
                   name="overview")
    def overview_page(request: Request) -> HTMLResponse:
        now = now_of()
        with store.read() as conn:
            data: Overview = overview(conn, now)
        ago = {("gateway", g.id): _ago(g.last_contact, now) for g in data.gateways}
        ago |= {("device", d.id): _ago(d.last_contact, now) for d in data.devices}
        return render(request, "overview.html", data=data, now=now, ago=ago,
                      patient_url=lambda pid: request.url_for("patient", patient_id=pid).path)

    @app.api_route("/patients/{patient_id}", methods=["GET", "HEAD"],
                   response_class=HTMLResponse, name="patient")
    def patient_page(request: Request, patient_id: str) -> HTMLResponse:
        days = _int_param(request, "days", DEFAULT_DAYS, 1, MAX_DAYS)
        assert days is not None
        now = now_of()
        end = _end_param(request, tz, now)
        start = end - dt.timedelta(days=days)
        with store.read() as conn:
            window: PatientWindow | None = patient_window(conn, patient_id, start, end)
        if window is None:
            return render(request, "error.html", status=404, title="No such patient",
                          message=f"There is no patient {patient_id!r}.")
        steps = basal_steps(window.basal_events, start, end)
        cgm_pairs = [(p.time, p.mg_dl) for p in window.cgm]
        shares = time_in_ranges([p.mg_dl for p in window.cgm])
        charts = {
            "glucose": glucose_chart(start=start, end=end, tz=tz, cgm=window.cgm,
                                     meter=window.meter, boluses=window.boluses, basal=steps),
            "overlay": daily_overlay_chart(daily_profile(cgm_pairs, tz), days=days),
            "tir": time_in_range_bar(shares),
        }
        return render(request, "patient.html", w=window, days=days, max_days=MAX_DAYS,
                      now=now, charts=charts, shares=shares, ranges=RANGES,
                      bolus_total=sum(b.total_iu for b in window.boluses),
                      basal_steps=steps,
                      ago={d.id: _ago(d.last_contact, now) for d in window.devices})

    return app
