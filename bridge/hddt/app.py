"""The HDDT FHIR resource server as an ASGI application (mounted at ``/fhir``).

Every request: content negotiation (406), the caller's grant from the
:class:`~bridge.hddt.access.AccessResolver` (401/403 as error-codes.md), the rate limit
(429), the interaction in a worker thread, the response in JSON or XML, and one audit
entry. Only GET reads and searches exist, plus ``POST _search`` and
``POST Observation/$hddt-cgm-summary``; every other write is 405 (read-only interface).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread
import sqlalchemy as sa
from starlette.datastructures import QueryParams, State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from bridge.backend.store import Store
from bridge.hddt import formats, outcome, search
from bridge.hddt.access import MIV_CONTINUOUS_GLUCOSE, AccessDenied, AccessGrant, AccessResolver
from bridge.hddt.audit import AuditEvent, AuditLog
from bridge.hddt.capability import capability_statement
from bridge.hddt.formats import Format
from bridge.hddt.outcome import FhirError
from bridge.hddt.ratelimit import RateLimiter
from bridge.hddt.response_cache import ObservationAnswers
from bridge.hddt.service import Clock, FhirService, _utc_now
from bridge.hddt.settings import HddtSettings

log = logging.getLogger(__name__)

Work = Callable[[AccessGrant], dict[str, Any]]

#: Distinct query strings (and Observation searches) kept parsed.
_KEPT_QUERIES = 1024


class EncodedWork(Protocol):
    """Work that answers an encoded body itself, in the negotiated format."""

    def __call__(self, grant: AccessGrant, *, fmt: Format, pretty: bool) -> bytes: ...


class KeptWork(Protocol):
    """A kept encoded body when it is still right, else None (one quick query, which may
    await the database)."""

    def __call__(self, grant: AccessGrant, *, fmt: Format,
                 pretty: bool) -> Awaitable[bytes | None]: ...


class _Outcome(Exception):
    """A ready response (an error body that is not an OperationOutcome of ours)."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        super().__init__(status)


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("hddt-bridge")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "0"


class FhirApp:
    """State and request handling behind the routes of :func:`create_fhir_app`."""

    def __init__(self, store: Store, settings: HddtSettings, access: AccessResolver, *,
                 base_url: str, clock: Clock = _utc_now) -> None:
        self.settings = settings
        self.access = access
        self.service = FhirService(store, settings, base_url=base_url, clock=clock)
        self.limiter = RateLimiter(settings)
        self.answers = ObservationAnswers(self.service, settings)
        # Few worker threads: the work is mostly Python, and many threads only contend for
        # the GIL (measured by bench/hddt_api.py).
        self._threads = (anyio.CapacityLimiter(settings.worker_threads)
                         if settings.worker_threads > 0 else None)
        self.audit = AuditLog(store, interface_id=base_url, batch=settings.audit_batch,
                              flush_interval_s=settings.audit_flush_interval_s)
        # Encoded bodies of resources that never change (the CapabilityStatement), per
        # format and pretty printing.
        self._public_bodies: dict[tuple[str, Format, bool], bytes] = {}
        # Parsed query strings and Observation searches (read-only once parsed).
        self._queries: dict[bytes, QueryParams] = {}
        self._searches: dict[tuple[tuple[str, str], ...], search.ObservationSearch] = {}
        self.metadata = capability_statement(base_url=base_url, software_version=_version(),
                                             published=clock())

    async def handle(self, request: Request, interaction: str, work: Work | None, *,
                     data_request: bool = False, public: Callable[[], dict[str, Any]] | None
                     = None, encoded: EncodedWork | None = None,
                     kept: KeptWork | None = None, public_key: str | None = None
                     ) -> Response:
        """Answer ``request``: ``work`` builds the resource from the caller's grant
        (``encoded`` instead answers the body itself, after ``kept``, which may answer a
        kept body on the event loop), ``public`` needs no grant; the encoded answer of a
        ``public`` resource that never changes is kept under ``public_key``."""
        started = time.perf_counter()
        grant: AccessGrant | None = None
        fmt = Format.JSON
        query = self.query(request)
        pretty = query.get("_pretty") == "true"
        headers: dict[str, str] = {}
        error: tuple[str, str] | None = None
        ready: bytes | None = None
        try:
            try:
                fmt = formats.negotiate(query.get("_format"),
                                        request.headers.get("accept"))
                if public is not None:
                    ready = (None if public_key is None
                             else self._public_bodies.get((public_key, fmt, pretty)))
                    resource = {} if ready is not None else public()
                else:
                    job: Callable[[AccessGrant], dict[str, Any] | bytes]
                    if encoded is not None:
                        job = functools.partial(encoded, fmt=fmt, pretty=pretty)
                    else:
                        assert work is not None
                        job = work
                    grant = await self.access.resolve(request)
                    self.limiter.check(grant.pairing_id, data_request=data_request)
                    answer: dict[str, Any] | bytes | None = None
                    try:
                        if kept is not None and self.settings.response_cache_check_on_loop:
                            answer = await kept(grant, fmt=fmt, pretty=pretty)
                        if answer is None:
                            answer = await self._run(job, grant)
                    except sa.exc.DBAPIError as exc:
                        if not exc.connection_invalidated:
                            raise
                        # The database restarted under a pooled connection; the pool is
                        # renewed and the read, idempotent, runs once more.
                        answer = await self._run(job, grant)
                    if isinstance(answer, bytes):
                        ready, resource = answer, {}
                    else:
                        resource = answer
                status = 200
            except AccessDenied as exc:
                raise _Outcome(exc.status, {"error": exc.error,
                                            "error_description": exc.description},
                               {"WWW-Authenticate": f'Bearer error="{exc.error}", '
                                                   f'error_description="{exc.description}"'}
                               ) from None
            except FhirError as exc:
                status, resource, headers = exc.status, exc.outcome(), exc.headers
                error = (exc.code, exc.diagnostics)
            except _Outcome:
                raise
            except Exception as exc:
                log.exception("HDDT %s failed", interaction)
                failure = outcome.server_failure(f"Internal failure ({type(exc).__name__}); "
                                                 "the request was logged")
                status, resource = 500, failure.outcome()
                error = (failure.code, failure.diagnostics)
            if ready is not None and status == 200:
                body = ready
            else:
                body = formats.serialize(resource, fmt, pretty=pretty)
                if public_key is not None and status == 200:
                    self._public_bodies[(public_key, fmt, pretty)] = body
            media = fmt.media_type
        except _Outcome as out:
            status, headers = out.status, out.headers
            body = formats.dumps_json(out.body)
            media = "application/json"
            error = (str(out.body.get("error")), str(out.body.get("error_description")))
        self.audit.record(AuditEvent(
            at=dt.datetime.now(dt.UTC),
            transaction_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
            pairing_id=None if grant is None else grant.pairing_id,
            patient_id=None if grant is None else grant.patient_id,
            client_id=None if grant is None else grant.client_id, interaction=interaction,
            method=request.method, url=str(request.url), status=status,
            response_time_ms=(time.perf_counter() - started) * 1000,
            data_volume_bytes=len(body), error_code=None if error is None else error[0],
            error_description=None if error is None else error[1]))
        return Response(body, status_code=status, headers=headers,
                        media_type=f"{media}; charset=utf-8")

    async def _run(self, work: Callable[[AccessGrant], dict[str, Any] | bytes],
                   grant: AccessGrant) -> dict[str, Any] | bytes:
        if self._threads is None:
            return work(grant)
        return await anyio.to_thread.run_sync(work, grant, limiter=self._threads)

    def close(self) -> None:
        """Write the audit entries still queued and release the read connections."""
        self.audit.close()
        self.answers.close()
        self.service.close()

    def query(self, request: Request) -> QueryParams:
        """The request's query items, parsed once per distinct query string: a DiGA polls
        the same searches again and again (retrieving-data.md "Polling")."""
        raw: bytes = request.scope.get("query_string", b"")
        parsed = self._queries.get(raw)
        if parsed is None:
            parsed = QueryParams(raw)
            if len(self._queries) >= _KEPT_QUERIES:
                self._queries.clear()  # bounded; refilled by the queries still in use
            self._queries[raw] = parsed
        return parsed

    def observation_search(self, items: list[tuple[str, str]]) -> search.ObservationSearch:
        """The parsed Observation search of ``items`` (kept per distinct items; a refused
        search raises its FhirError every time)."""
        key = tuple(items)
        parsed = self._searches.get(key)
        if parsed is None:
            st = self.settings
            parsed = search.parse_observation_search(items, default_count=st.page_size_default,
                                                     max_count=st.page_size_max)
            if len(self._searches) >= _KEPT_QUERIES:
                self._searches.clear()
            self._searches[key] = parsed
        return parsed

    async def search_params(self, request: Request) -> list[tuple[str, str]]:
        """Query items, plus the form body of ``POST _search`` (http.html "search")."""
        items = list(self.query(request).multi_items())
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise outcome.content_type_not_supported()
            form = await request.form()
            items += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return [(k, v) for k, v in items]

    def summary(self, grant: AccessGrant, body: dict[str, Any]) -> dict[str, Any]:
        from bridge.hddt import summary  # noqa: PLC0415 - optional MIV operation

        if MIV_CONTINUOUS_GLUCOSE not in grant.value_sets:
            raise AccessDenied(403, "insufficient_scope",
                               "The CGM summary needs the Continuous Glucose Measurement "
                               "scope")
        now = self.service.clock()
        try:
            req = summary.parse_summary_parameters(body, now=now)
            rows, devices = self.service.cgm_points(grant, req.start, req.end)
            points = [summary.CgmPoint(r.time, r.value, r.device_id) for r in rows]
            refs = {d: self.service.full_url(res) for d, res in devices.items()}
            # The HL7 CGM profiles make subject 1..1 while security-and-privacy.md says a
            # subject SHOULD NOT be sent: following the profile, the reference is a pseudonym
            # of the pairing (never the backend's patient id), with no Patient behind it.
            pseudonym = hashlib.sha256(f"hddt-pairing|{grant.pairing_id}".encode()).hexdigest()
            return summary.cgm_summary_bundle(req, points,
                                              patient_reference=f"Patient/{pseudonym[:32]}",
                                              device_references=refs, now=now,
                                              id_factory=lambda: str(uuid.uuid4()),
                                              devices=devices)
        except summary.SummaryError as exc:
            first = exc.operation_outcome()["issue"][0]
            text = str(first.get("details", {}).get("text", exc.text))
            raise FhirError(exc.http_status, str(first.get("code", "invalid")), text) from None


class FhirRouter(Router):
    """The resource server's routes as a plain Starlette router (no FastAPI dependency
    injection or middleware stack per request: the routes take only the request, and
    :meth:`FhirApp.handle` answers every error itself). ``state.hddt`` is the
    :class:`FhirApp`."""

    def __init__(self, fhir: FhirApp) -> None:
        super().__init__()
        self.state = State()
        self.state.hddt = fhir

    def route(self, path: str, endpoint: Endpoint, methods: Sequence[str]) -> None:
        """Add ``endpoint`` for exactly ``methods`` (no implicit HEAD: HEAD stays 405)."""
        route = Route(path, endpoint, methods=list(methods))
        route.methods = set(methods)
        self.routes.append(route)


Endpoint = Callable[[Request], Awaitable[Response]]


def create_fhir_app(store: Store, settings: HddtSettings, access: AccessResolver, *,
                    base_url: str, clock: Clock = _utc_now) -> FhirRouter:
    """The resource server; ``base_url`` is its public FHIR base (e.g. ``…/fhir``).

    ``app.state.hddt`` is the :class:`FhirApp` (call its ``close()``, or at least close its
    ``audit``, on shutdown: mounted sub-applications get no lifespan events)."""
    fhir = FhirApp(store, settings, access, base_url=base_url, clock=clock)
    app = FhirRouter(fhir)
    st = settings

    async def metadata(request: Request) -> Response:
        return await fhir.handle(request, "metadata", None, public=lambda: fhir.metadata,
                                 public_key="metadata")

    app.route("/metadata", metadata, ["GET"])

    async def observation_search(request: Request) -> Response:
        try:
            items = await fhir.search_params(request)
            s = fhir.observation_search(items)
        except FhirError as exc:
            return await fhir.handle(request, "search-observation", _raise(exc))
        return await fhir.handle(
            request, "search-observation", None, data_request=True,
            encoded=lambda g, *, fmt, pretty: fhir.answers.search(
                g, s, items, variant=(fmt, pretty),
                encode=lambda bundle: formats.serialize(bundle, fmt, pretty=pretty)),
            kept=lambda g, *, fmt, pretty: fhir.answers.kept_on_loop(
                g, s, items, variant=(fmt, pretty)))

    app.route("/Observation", observation_search, ["GET"])
    app.route("/Observation/_search", observation_search, ["POST"])

    async def cgm_summary(request: Request) -> Response:
        try:
            body_format = formats.request_body_format(request.headers.get("content-type"))
            body = formats.parse_body(await request.body(), body_format)
        except FhirError as exc:
            return await fhir.handle(request, "operation-cgm-summary", _raise(exc))
        return await fhir.handle(request, "operation-cgm-summary",
                                 lambda g: fhir.summary(g, body), data_request=True)

    app.route("/Observation/$hddt-cgm-summary", cgm_summary, ["POST"])

    async def observation_read(request: Request) -> Response:
        resource_id: str = request.path_params["resource_id"]
        return await fhir.handle(request, "read-observation",
                                 lambda g: fhir.service.read_observation(g, resource_id))

    app.route("/Observation/{resource_id}", observation_read, ["GET"])

    async def device_search(request: Request) -> Response:
        try:
            items = await fhir.search_params(request)
            s = search.parse_device_search(items, default_count=st.page_size_default,
                                           max_count=st.page_size_max)
        except FhirError as exc:
            return await fhir.handle(request, "search-device", _raise(exc))
        return await fhir.handle(request, "search-device",
                                 lambda g: fhir.service.search_devices(g, s, items))

    app.route("/Device", device_search, ["GET"])
    app.route("/Device/_search", device_search, ["POST"])

    async def device_read(request: Request) -> Response:
        resource_id: str = request.path_params["resource_id"]
        return await fhir.handle(request, "read-device",
                                 lambda g: fhir.service.read_device(g, resource_id))

    app.route("/Device/{resource_id}", device_read, ["GET"])

    async def metric_search(request: Request) -> Response:
        try:
            items = await fhir.search_params(request)
            s = search.parse_device_metric_search(items, default_count=st.page_size_default,
                                                  max_count=st.page_size_max)
        except FhirError as exc:
            return await fhir.handle(request, "search-devicemetric", _raise(exc))
        return await fhir.handle(request, "search-devicemetric",
                                 lambda g: fhir.service.search_metrics(g, s, items))

    app.route("/DeviceMetric", metric_search, ["GET"])
    app.route("/DeviceMetric/_search", metric_search, ["POST"])

    async def metric_read(request: Request) -> Response:
        resource_id: str = request.path_params["resource_id"]
        return await fhir.handle(request, "read-devicemetric",
                                 lambda g: fhir.service.read_metric(g, resource_id))

    app.route("/DeviceMetric/{resource_id}", metric_read, ["GET"])

    async def vread(request: Request) -> Response:
        # Device and DeviceMetric are not versioned (a new calibration state is a new
        # DeviceMetric), so no version exists (fhir-api-device.md "VREAD" may be omitted).
        p = request.path_params
        return await fhir.handle(request, "vread", _raise(outcome.version_not_valid(
            p["version"], f"{p['resource_type']}/{p['resource_id']}")))

    app.route("/{resource_type}/{resource_id}/_history/{version}", vread, ["GET"])

    async def other(request: Request) -> Response:
        path: str = request.path_params["path"]
        if request.method == "GET":
            error = FhirError(404, "not-supported", f"Resource type or path /{path} is not "
                                                    "supported by this server")
        else:
            error = outcome.method_not_allowed(request.method, f"/{path}")
        return await fhir.handle(request, "refused", None, public=lambda: _raise(error)(None))

    app.route("/{path:path}", other, ["GET", "POST", "PUT", "PATCH", "DELETE"])
    return app


def _raise(error: FhirError) -> Callable[[AccessGrant | None], dict[str, Any]]:
    def work(_grant: AccessGrant | None) -> dict[str, Any]:
        raise error
    return work
