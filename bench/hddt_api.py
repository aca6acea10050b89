"""Benchmark of the HDDT resource server over real HTTP with PostgreSQL.

A private PostgreSQL holds one patient with a week of CGM readings (and a meter), written
through the ingest processor. uvicorn serves, on 127.0.0.1, the FHIR app mounted at
``/fhir`` (StaticAccessResolver, audit on, no rate limit) and ``/baseline``, a route of the
bench's own app that answers a precomputed body as large as the search answer. A keep-alive
HTTP/1.1 load generator (asyncio streams, ``--concurrency`` connections) measures
requests/s and p50/p99 latency of

* the 24 h CGM search with ``_include=Observation:device`` and
  ``_include:iterate=DeviceMetric:source``, and
* the baseline,

the same search on a server with the response cache off (``cache_off_*``: the chunks are
kept, the Bundle is built and encoded per request) and on one with both caches off (every
request reads and builds its chunks); then the production path (``tokens_*``): the whole web
application (authorization server and resource server) over TLS with client certificates,
a DiGA paired through PAR, the portal's login and consent forms and the code exchange (the
reference client, ``bridge.diga``), and the same search with its real access token
(signature, claims, grant and pairing looked up, client certificate compared), against a
baseline route on that same TLS server; then the vendor holdup: a reading is ingested and the
interface polled until it shows (blood glucose: the newest Observation; CGM: the current
chunk). With the response cache on, the load measures the kept answer checked by its
fingerprint query; the holdup shows that a new reading is still visible at once.

Run from a checkout: ``.venv/bin/python bench/hddt_api.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The private PostgreSQL launcher lives with the tests; run from a checkout.
from fastapi import FastAPI  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

from bridge.backend import registry  # noqa: E402
from bridge.backend.ingest import Inbound, IngestProcessor  # noqa: E402
from bridge.backend.store import Store  # noqa: E402
from bridge.diga.connection import DigaIdentity  # noqa: E402
from bridge.messages import RecordsMessage, batches, records_topic  # noqa: E402
from bridge.records import (  # noqa: E402
    AnyRecord,
    BloodGlucoseReading,
    CgmReading,
    DeviceInfo,
    DeviceKind,
)
from tests.backend.postgres import PostgresServer, postgres_available  # noqa: E402

TOKEN = "bench-token"
CGM = DeviceInfo(device_id="bench-cgm", kind=DeviceKind.CGM, manufacturer="Example Medical",
                 model="CGM-1", serial_number="SN-CGM-1")
METER = DeviceInfo(device_id="bench-meter", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                   manufacturer="Example Medical", model="Meter-1", serial_number="SN-M-1")


# --- the server process ----------------------------------------------------------------------

#: Server variants: the default settings; the response cache off; both caches off.
MODES = {
    "cached": {},
    "no-response-cache": {"response_cache_bytes": 0},
    "no-cache": {"response_cache_bytes": 0, "cell_cache": False},
}


def add_baseline(app: FastAPI) -> None:
    """``POST /baseline`` sets a body that ``GET /baseline`` then answers as it is."""
    body = {"data": b""}

    @app.post("/baseline")
    async def set_baseline(request: Request) -> Response:
        body["data"] = await request.body()
        return Response(b"", status_code=204)

    @app.get("/baseline")
    async def baseline() -> Response:
        return Response(body["data"], media_type="application/fhir+json; charset=utf-8")


def serve(url: str, port: int, base: str, *, mode: str = "cached") -> None:
    """uvicorn with the FHIR app at /fhir and the baseline at /baseline, in one of
    :data:`MODES`."""
    import uvicorn  # noqa: PLC0415

    from bridge.hddt.access import (  # noqa: PLC0415
        MIV_BLOOD_GLUCOSE,
        MIV_CONTINUOUS_GLUCOSE,
        SCOPE_DEVICE,
        SCOPE_DEVICE_METRIC,
        AccessGrant,
        StaticAccessResolver,
        observation_scope,
    )
    from bridge.hddt.app import create_fhir_app  # noqa: PLC0415
    from bridge.hddt.settings import HddtSettings  # noqa: PLC0415

    store = Store.open(url, migrate=False)
    grant = AccessGrant(pairing_id="bench-pairing", patient_id="p-bench",
                        client_id="urn:diga:bfarm:00000", scopes=frozenset({
                            observation_scope(MIV_CONTINUOUS_GLUCOSE),
                            observation_scope(MIV_BLOOD_GLUCOSE), SCOPE_DEVICE,
                            SCOPE_DEVICE_METRIC}))
    settings: dict[str, Any] = {"rate_limit_per_minute": None, **MODES[mode]}
    fhir = create_fhir_app(store, HddtSettings(**settings),
                           StaticAccessResolver({TOKEN: grant}), base_url=base + "/fhir")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    add_baseline(app)

    app.mount("/fhir", fhir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    fhir.state.hddt.close()


#: The DiGA of the production-path run, its redirect URI and the patient's portal login.
DIGA = "urn:diga:bfarm:99002"
REDIRECT_URI = "https://diga.example/bench/callback"
PORTAL_LOGIN = ("bench-patient", "bench portal passphrase")


def serve_tokens(url: str, port: int, state: Path) -> None:
    """The whole web application over TLS (client certificates, real tokens), with the
    baseline route on the same server; runs until SIGTERM."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from bridge.auth.settings import AuthSecrets, AuthSettings  # noqa: PLC0415
    from bridge.hddt.settings import HddtSettings  # noqa: PLC0415
    from bridge.web import HttpsServer, TlsFiles, create_app  # noqa: PLC0415

    store = Store.open(url, migrate=False)
    base = f"https://127.0.0.1:{port}"
    settings = AuthSettings(issuer=base, audience=base + "/fhir", state_dir=state / "auth")
    app = create_app(store, settings, hddt_settings=HddtSettings(rate_limit_per_minute=None),
                     dashboard=False, secrets=AuthSecrets.load(settings.state_dir))
    add_baseline(app)

    pki = state / "pki"
    server = HttpsServer(app, tls=TlsFiles(pki / "server.pem", pki / "server.key",
                                           state / "client-trust.pem"),
                         port=port, store=store, trust_refresh_s=3600)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
        store.close()


def tokens_setup(store: Store, state: Path) -> tuple[DigaIdentity, Path]:
    """Sandbox PKI, the DiGA registered, the patient's portal login, the trust store; the
    DiGA's identity and the CA certificate its client trusts."""
    from bridge.hddt.access import (  # noqa: PLC0415
        MIV_BLOOD_GLUCOSE,
        MIV_CONTINUOUS_GLUCOSE,
        SCOPE_DEVICE,
        SCOPE_DEVICE_METRIC,
        observation_scope,
    )
    from bridge.web import (  # noqa: PLC0415
        client_trust_bundle,
        create_portal_account,
        issue_pki,
        register_diga,
    )

    pki = issue_pki(state / "pki", [DIGA])
    scopes = (observation_scope(MIV_BLOOD_GLUCOSE), observation_scope(MIV_CONTINUOUS_GLUCOSE),
              SCOPE_DEVICE, SCOPE_DEVICE_METRIC)
    register_diga(store, DIGA, name="Bench DiGA", redirect_uris=[REDIRECT_URI], scopes=scopes,
                  certificate_pem=pki.diga(DIGA).cert.read_text(), actor="bench")
    create_portal_account(store, PORTAL_LOGIN[0], PORTAL_LOGIN[1], patient_id="p-bench",
                          actor="bench")
    client_trust_bundle(store, [pki.ca.cert], state / "client-trust.pem")
    return DigaIdentity(client_id=DIGA, certificate=pki.diga(DIGA).cert,
                        private_key=pki.diga(DIGA).key, redirect_uri=REDIRECT_URI,
                        scopes=scopes), pki.ca.cert


def pair(identity: DigaIdentity, ca: Path, port: int, state: Path
         ) -> tuple[str, ssl.SSLContext]:
    """Pair as a DiGA does (PAR, portal login and consent, code exchange); the access
    token and the client's TLS context."""
    from bridge.diga.client import DigaClient, mtls_context  # noqa: PLC0415
    from bridge.diga.connection import Connection, PortalLogin  # noqa: PLC0415
    from bridge.diga.state import PairingStore  # noqa: PLC0415

    base = f"https://127.0.0.1:{port}"
    login = PortalLogin("p-bench", *PORTAL_LOGIN)
    connection = Connection(fhir_base_url=base + "/fhir", issuer=base, ca_certificate=ca,
                            diga=identity, patients=(login,))
    with DigaClient(connection, PairingStore(state / "diga")) as client:
        paired = client.pair_with_portal("bench", login)
    assert paired.access_token is not None, "the pairing gave no access token"
    return paired.access_token, mtls_context(ca, identity.certificate, identity.private_key)


# --- load generator --------------------------------------------------------------------------

async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _raw(method: str, path: str, body: bytes = b"", token: str = TOKEN) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def _load(port: int, path: str, *, concurrency: int, seconds: float,
                tls: Any = None, token: str = TOKEN) -> dict[str, Any]:
    """Keep-alive load; ``tls`` an ``ssl.SSLContext`` (one handshake per connection)."""
    raw = _raw("GET", path, token=token)
    latencies: list[float] = []
    sizes: set[int] = set()
    errors = 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, body = await _request(reader, writer, raw)
                latencies.append(time.perf_counter() - t0)
                sizes.add(len(body))
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    # Warm-up, then the measured run.
    deadline = time.perf_counter() + 1.0
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.clear()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(ordered), "seconds": elapsed,
            "requests_per_s": len(ordered) / elapsed,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "errors": errors, "body_bytes": max(sizes)}


async def _get(port: int, path: str, *, tls: Any = None, token: str = TOKEN
               ) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        return await _request(reader, writer, _raw("GET", path, token=token))
    finally:
        writer.close()


async def _post(port: int, path: str, body: bytes, *, tls: Any = None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        status, _ = await _request(reader, writer, _raw("POST", path, body))
        return status
    finally:
        writer.close()


# --- data ------------------------------------------------------------------------------------

def _send(store: Store, info: DeviceInfo, records: list[AnyRecord], when: dt.datetime) -> None:
    inbound = [Inbound(records_topic("gw-bench"),
                       RecordsMessage("gw-bench", info, part).to_bytes(), when)
               for part in batches(records, 200)]
    IngestProcessor(store).ingest(inbound)


def fill(store: Store, now: dt.datetime, days: int, interval_min: int) -> int:
    with store.begin() as conn:
        registry.provision_patient(conn, "p-bench", actor="bench")
        registry.provision_gateway(conn, "gw-bench", patient_id="p-bench", actor="bench")
    start = now - dt.timedelta(days=days)
    n = days * 24 * 60 // interval_min
    cgm: list[AnyRecord] = [
        CgmReading(device_id=CGM.device_id, time=start + dt.timedelta(minutes=interval_min * i),
                   glucose_mg_dl=float(90 + (i * 7) % 130), quality_percent=100.0)
        for i in range(n)]
    _send(store, CGM, cgm, now)
    meter: list[AnyRecord] = [
        BloodGlucoseReading(device_id=METER.device_id, sequence=i,
                            time=start + dt.timedelta(hours=6 * i), glucose_mg_dl=100.0 + i)
        for i in range(days * 4)]
    _send(store, METER, meter, now)
    return n


# --- main ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on port {port}")


def _start(url: str, *, mode: str) -> tuple[subprocess.Popen[bytes], int]:
    """The server process on a free port, listening."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, str(port), f"http://127.0.0.1:{port}",
         mode], env=os.environ | {"PYTHONPATH": str(ROOT)})
    _wait_port(port)
    return server, port


def _run_server(url: str, mode: str, search: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    """Load on a server of its own in ``mode``."""
    server, port = _start(url, mode=mode)
    try:
        return asyncio.run(_load(port, search, concurrency=args.concurrency,
                                 seconds=args.seconds))
    finally:
        server.terminate()
        server.wait(10)


def _run_tokens(url: str, store: Store, search: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    """The production path: pair, then load the search with the real token over mutual
    TLS, and the baseline on the same TLS server."""
    import tempfile  # noqa: PLC0415

    state = Path(tempfile.mkdtemp(prefix="hddt-bench-"))
    identity, ca = tokens_setup(store, state)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-tokens", url, str(port), str(state)],
        env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        _wait_port(port)
        started = time.perf_counter()
        token, tls = pair(identity, ca, port, state)
        pairing_s = time.perf_counter() - started
        status, body = asyncio.run(_get(port, search, tls=tls, token=token))
        doc = json.loads(body)
        chunks = sum(e["search"]["mode"] == "match" for e in doc.get("entry", []))
        assert status == 200 and chunks == 24, (status, body[:300])
        refused, _ = asyncio.run(_get(port, search, tls=tls, token=token[:-4] + "AAAA"))
        assert refused == 401, refused  # the token is really checked
        posted = asyncio.run(_post(port, "/baseline", body, tls=tls))
        assert posted == 204, posted
        fhir = asyncio.run(_load(port, search, concurrency=args.concurrency,
                                 seconds=args.seconds, tls=tls, token=token))
        base = asyncio.run(_load(port, "/baseline", concurrency=args.concurrency,
                                 seconds=args.seconds, tls=tls, token=token))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(state, ignore_errors=True)
    return {"search": fhir, "baseline": base, "pairing_s": pairing_s}


def z(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


async def holdup(store: Store, port: int, now: dt.datetime) -> dict[str, float]:
    """Seconds from the commit of an ingested reading to its visibility on the interface."""
    bg_time = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5)
    reading = BloodGlucoseReading(device_id=METER.device_id, sequence=10_000, time=bg_time,
                                  glucose_mg_dl=123.0)
    _send(store, METER, [reading], dt.datetime.now(dt.UTC))
    committed = time.perf_counter()
    path = "/fhir/Observation?code=41653-7&_sort=-date&_count=1"
    while True:
        _status, body = await _get(port, path)
        if z(bg_time) in body.decode():
            bg = time.perf_counter() - committed
            break
    cgm_time = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    _send(store, CGM, [CgmReading(device_id=CGM.device_id, time=cgm_time, glucose_mg_dl=77.0)],
          dt.datetime.now(dt.UTC))
    committed = time.perf_counter()
    path = ("/fhir/Observation?code=99504-3&_sort=-date&_count=1&date=ge"
            + quote(z(cgm_time - dt.timedelta(hours=2))))
    while True:
        _status, body = await _get(port, path)
        doc = json.loads(body)
        chunk = doc["entry"][0]["resource"] if doc.get("entry") else {}
        data = chunk.get("valueSampledData", {}).get("data", "")
        if data.split() and data.split()[-1] == "77" and chunk["effectivePeriod"]["start"] <= z(
                cgm_time):
            cg = time.perf_counter() - committed
            break
    return {"bg_s": bg, "cgm_s": cg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=4, metavar=("URL", "PORT", "BASE", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--serve-tokens", nargs=3, metavar=("URL", "PORT", "STATE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--days", type=int, default=7, help="days of CGM data stored")
    parser.add_argument("--interval", type=int, default=5, help="CGM sample interval, minutes")
    args = parser.parse_args()
    if args.serve:
        url, port, base, mode = args.serve
        serve(url, int(port), base, mode=mode)
        return
    if args.serve_tokens:
        url, port, state = args.serve_tokens
        serve_tokens(url, int(port), Path(state))
        return
    if not postgres_available():
        sys.exit("PostgreSQL server binaries are needed (initdb, pg_ctl)")
    pg = PostgresServer()
    server: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        url = pg.url(pg.create_database("hddt_bench"))
        now = dt.datetime.now(dt.UTC)
        with Store.open(url) as store:
            t0 = time.perf_counter()
            n = fill(store, now, args.days, args.interval)
            print(f"stored {n} CGM readings ({args.days} days every {args.interval} min) in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            server, port = _start(url, mode="cached")
            day_end = now.replace(minute=0, second=0, microsecond=0)
            day_start = day_end - dt.timedelta(days=1)
            search = (f"/fhir/Observation?code=99504-3&date=ge{quote(z(day_start))}"
                      f"&date=lt{quote(z(day_end))}&_count=100&_include=Observation:device"
                      "&_include:iterate=DeviceMetric:source")
            status, body = asyncio.run(_get(port, search))
            doc = json.loads(body)
            chunks = sum(e["search"]["mode"] == "match" for e in doc.get("entry", []))
            print(f"24 h search: HTTP {status}, {chunks} chunks, "
                  f"{len(doc.get('entry', [])) - chunks} included, {len(body):,} bytes",
                  flush=True)
            assert status == 200 and chunks == 24, (status, body[:300])
            posted = asyncio.run(_post(port, "/baseline", body))
            assert posted == 204, posted
            fhir = asyncio.run(_load(port, search, concurrency=args.concurrency,
                                     seconds=args.seconds))
            print(f"CGM search with includes: {fhir['requests_per_s']:,.0f} requests/s, "
                  f"p50 {fhir['p50_ms']:.1f} ms, p99 {fhir['p99_ms']:.1f} ms "
                  f"({fhir['requests']} requests, {fhir['errors']} errors, "
                  f"concurrency {args.concurrency})", flush=True)
            base_run = asyncio.run(_load(port, "/baseline", concurrency=args.concurrency,
                                         seconds=args.seconds))
            print(f"baseline (same body precomputed): {base_run['requests_per_s']:,.0f} "
                  f"requests/s, p50 {base_run['p50_ms']:.1f} ms, p99 "
                  f"{base_run['p99_ms']:.1f} ms", flush=True)
            off = _run_server(url, "no-response-cache", search, args)
            print(f"same search, response cache off (chunks kept, Bundle built and encoded "
                  f"per request): {off['requests_per_s']:,.0f} requests/s, p50 "
                  f"{off['p50_ms']:.1f} ms, p99 {off['p99_ms']:.1f} ms", flush=True)
            cold = _run_server(url, "no-cache", search, args)
            print(f"same search, both caches off (every request reads and builds its 24 "
                  f"chunks): {cold['requests_per_s']:,.0f} requests/s, p50 "
                  f"{cold['p50_ms']:.1f} ms, p99 {cold['p99_ms']:.1f} ms", flush=True)
            ratio = fhir["requests_per_s"] / base_run["requests_per_s"]
            print(f"ratio to baseline: {ratio:.2f} (response cache off: "
                  f"{off['requests_per_s'] / base_run['requests_per_s']:.2f})", flush=True)
            tokens = _run_tokens(url, store, search, args)
            t_fhir, t_base = tokens["search"], tokens["baseline"]
            t_ratio = t_fhir["requests_per_s"] / t_base["requests_per_s"]
            print(f"production path (mutual TLS, real access token; paired in "
                  f"{tokens['pairing_s']:.2f} s): search {t_fhir['requests_per_s']:,.0f} "
                  f"requests/s, p50 {t_fhir['p50_ms']:.1f} ms, p99 {t_fhir['p99_ms']:.1f} ms "
                  f"({t_fhir['errors']} errors); baseline over the same TLS "
                  f"{t_base['requests_per_s']:,.0f} requests/s; ratio {t_ratio:.2f}",
                  flush=True)
            hold = asyncio.run(holdup(store, port, now))
            print(f"vendor holdup (ingest commit -> visible): blood glucose "
                  f"{1000 * hold['bg_s']:.1f} ms (limit 60 s), CGM {1000 * hold['cgm_s']:.1f} ms "
                  f"(limit 15 min)", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        pg.close()
        shutil.rmtree(pg.root, ignore_errors=True)
    print(json.dumps({
        "search_requests_per_s": round(fhir["requests_per_s"], 1),
        "search_p50_ms": round(fhir["p50_ms"], 2), "search_p99_ms": round(fhir["p99_ms"], 2),
        "baseline_requests_per_s": round(base_run["requests_per_s"], 1),
        "baseline_p50_ms": round(base_run["p50_ms"], 2),
        "baseline_p99_ms": round(base_run["p99_ms"], 2),
        "ratio_vs_baseline": round(ratio, 3), "concurrency": args.concurrency,
        "cache_off_search_requests_per_s": round(off["requests_per_s"], 1),
        "cache_off_search_p50_ms": round(off["p50_ms"], 2),
        "cache_off_search_p99_ms": round(off["p99_ms"], 2),
        "cache_off_ratio_vs_baseline": round(off["requests_per_s"]
                                             / base_run["requests_per_s"], 3),
        "search_no_chunk_cache_requests_per_s": round(cold["requests_per_s"], 1),
        "search_no_chunk_cache_p50_ms": round(cold["p50_ms"], 2),
        "search_no_chunk_cache_p99_ms": round(cold["p99_ms"], 2),
        "body_bytes": fhir["body_bytes"], "chunks": chunks, "errors": fhir["errors"],
        "tokens_search_requests_per_s": round(t_fhir["requests_per_s"], 1),
        "tokens_search_p50_ms": round(t_fhir["p50_ms"], 2),
        "tokens_search_p99_ms": round(t_fhir["p99_ms"], 2),
        "tokens_baseline_requests_per_s": round(t_base["requests_per_s"], 1),
        "tokens_ratio_vs_baseline": round(t_ratio, 3),
        "tokens_errors": t_fhir["errors"], "tokens_pairing_s": round(tokens["pairing_s"], 2),
        "holdup_blood_glucose_ms": round(1000 * hold["bg_s"], 1),
        "holdup_cgm_ms": round(1000 * hold["cgm_s"], 1),
    }))


if __name__ == "__main__":
    main()
