"""Fixtures of the HDDT resource server tests: stores filled through the real ingest path.

Simulated patients (simulators.run) produce the records; :func:`ingest` sends them as MQTT
contract messages through :class:`bridge.backend.ingest.IngestProcessor` into SQLite or a
private PostgreSQL. The FHIR app runs in-process over httpx (Starlette's TestClient), mounted
at ``/fhir`` as the web server mounts it, with a :class:`StaticAccessResolver` and a clock the
test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bridge.backend import registry
from bridge.backend.ingest import Inbound, IngestProcessor
from bridge.backend.store import Store
from bridge.hddt.access import (
    MIV_BLOOD_GLUCOSE,
    MIV_CONTINUOUS_GLUCOSE,
    PROJECT_INSULIN_DELIVERY,
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
    AccessGrant,
    StaticAccessResolver,
    observation_scope,
)
from bridge.hddt.app import FhirRouter, create_fhir_app
from bridge.hddt.settings import HddtSettings
from bridge.messages import RecordsMessage, batches, records_topic
from bridge.records import AnyRecord, DeviceInfo
from simulators.physiology import standard_patient
from simulators.run import simulate_cohort
from simulators.scenario import default_scenario
from tests.backend.postgres import PostgresServer, postgres_available, shared_server

BASE = "https://ddr.example/fhir"
ALL_SCOPES = frozenset({observation_scope(MIV_BLOOD_GLUCOSE),
                        observation_scope(MIV_CONTINUOUS_GLUCOSE), SCOPE_DEVICE,
                        SCOPE_DEVICE_METRIC})


def grant(token: str = "t-all", *, patient: str = "p-1",
          scopes: frozenset[str] = ALL_SCOPES) -> AccessGrant:
    return AccessGrant(pairing_id=f"pair-{token}", patient_id=patient,
                       client_id="urn:diga:bfarm:12345", scopes=scopes)


GRANTS = {
    "t-all": grant("t-all"),
    "t-bg": grant("t-bg", scopes=frozenset({observation_scope(MIV_BLOOD_GLUCOSE),
                                             SCOPE_DEVICE, SCOPE_DEVICE_METRIC})),
    "t-cgm": grant("t-cgm", scopes=frozenset({observation_scope(MIV_CONTINUOUS_GLUCOSE),
                                               SCOPE_DEVICE, SCOPE_DEVICE_METRIC})),
    "t-cgm-only": grant("t-cgm-only",
                        scopes=frozenset({observation_scope(MIV_CONTINUOUS_GLUCOSE)})),
    "t-p2": grant("t-p2", patient="p-2"),
}


@dataclass(frozen=True, slots=True)
class SimulatedPatient:
    """Devices and records of one simulated patient."""

    start: dt.datetime
    end: dt.datetime
    devices: dict[str, DeviceInfo]
    records: dict[str, tuple[AnyRecord, ...]]

    def of_kind(self, kind: str) -> tuple[DeviceInfo, tuple[AnyRecord, ...]]:
        info = next(i for i in self.devices.values() if i.kind.value == kind)
        return info, self.records[info.device_id]


@functools.cache
def simulated(name: str = "adult#001", days: int = 2, seed: int = 5) -> SimulatedPatient:
    result = simulate_cohort([standard_patient(name)], default_scenario(), days, seed=seed,
                             records=True)
    assert result.devices is not None
    logs = result.devices[0].logs
    return SimulatedPatient(
        start=result.start, end=result.start + dt.timedelta(days=days),
        devices={log.info.device_id: log.info for log in logs},
        records={log.info.device_id: tuple(typing.cast(list[AnyRecord], log.records))
                 for log in logs})


def provision(store: Store, patient: str, gateway: str) -> None:
    with store.begin() as conn:
        registry.provision_patient(conn, patient, actor="test")
        registry.provision_gateway(conn, gateway, patient_id=patient, actor="test")


def ingest(store: Store, gateway: str, info: DeviceInfo, records: Sequence[AnyRecord], *,
           received_at: dt.datetime | None = None) -> int:
    """Send ``records`` through the ingest processor as the edge would; returns inserted."""
    inbound = []
    for part in batches(list(records), 200):
        msg = RecordsMessage(gateway_id=gateway, device=info, records=part)
        when = received_at or max(r.time for r in part)
        inbound.append(Inbound(records_topic(gateway), msg.to_bytes(), when))
    outcome = IngestProcessor(store).ingest(inbound)
    return outcome.inserted


@dataclass(slots=True)
class Clock:
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


class SyncClient:
    """httpx over the in-process ASGI transport, driven synchronously on a private loop."""

    def __init__(self, app: Any, base_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url=base_url)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@dataclass(slots=True)
class Fhir:
    """A FHIR app over one store, with its clock and an HTTP client."""

    store: Store
    clock: Clock
    client: SyncClient
    app: FhirRouter
    patient: SimulatedPatient | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, token: str | None = "t-all", **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.get("/fhir" + path, headers=headers, **kwargs)

    def post(self, path: str, token: str | None = "t-all", **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.post("/fhir" + path, headers=headers, **kwargs)

    def request(self, method: str, path: str, token: str | None = "t-all", **kwargs: Any
                ) -> Any:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, "/fhir" + path, headers=headers, **kwargs)

    def bundle(self, path: str, token: str = "t-all", **kwargs: Any) -> dict[str, Any]:
        response = self.get(path, token, **kwargs)
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        assert doc["resourceType"] == "Bundle" and doc["type"] == "searchset"
        return doc

    def audit_flush(self) -> None:
        self.app.state.hddt.audit.flush()


def matches(bundle: dict[str, Any], resource_type: str | None = None) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"
            and (resource_type is None or e["resource"]["resourceType"] == resource_type)]


def included(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"]


def outcomes(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


@contextlib.contextmanager
def make_fhir(store: Store, now: dt.datetime, settings: HddtSettings | None = None,
              patient: SimulatedPatient | None = None) -> Iterator[Fhir]:
    clock = Clock(now)
    app = create_fhir_app(store, settings or HddtSettings(rate_limit_per_minute=None,
                                                          context_cache_s=0),
                          StaticAccessResolver(GRANTS), base_url=BASE, clock=clock)
    root = FastAPI()
    root.mount("/fhir", app)
    client = SyncClient(root, "https://ddr.example")
    try:
        yield Fhir(store, clock, client, app, patient)
    finally:
        client.close()
        app.state.hddt.close()


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> PostgresServer:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    return shared_server(request.config)


def new_store(kind: str, tmp: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return Store.open(f"sqlite:///{tmp / 'backend.sqlite'}")
    server: PostgresServer = request.getfixturevalue("pg")
    if not server.running:
        server.start()
    return Store.open(server.url(server.create_database()))


def fill(store: Store) -> SimulatedPatient:
    """Patient p-1 (meter, CGM, pump of a simulated adult over two days) and patient p-2
    (another simulated patient) on their own gateways."""
    sim = simulated()
    provision(store, "p-1", "gw-1")
    for info in sim.devices.values():
        ingest(store, "gw-1", info, sim.records[info.device_id])
    other = simulated("adolescent#002", 1, 9)
    provision(store, "p-2", "gw-2")
    for info in other.devices.values():
        ingest(store, "gw-2", info, other.records[info.device_id])
    return sim


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Store, SimulatedPatient]]:
    """One filled store per backend, shared by a module's read-only tests."""
    store = new_store(request.param, tmp_path_factory.mktemp("hddt"), request)
    with store:
        yield store, fill(store)


@pytest.fixture
def fhir(filled: tuple[Store, SimulatedPatient]) -> Iterator[Fhir]:
    store, sim = filled
    with make_fhir(store, sim.end + dt.timedelta(minutes=2), patient=sim) as f:
        yield f


@pytest.fixture
def empty_store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh SQLite store (tests that write their own data)."""
    with new_store("sqlite", tmp_path, request) as store:
        yield store


GRANTS["t-insulin"] = grant("t-insulin", scopes=frozenset({
    observation_scope(PROJECT_INSULIN_DELIVERY), SCOPE_DEVICE}))
GRANTS["t-everything"] = grant("t-everything", scopes=ALL_SCOPES | {
    observation_scope(PROJECT_INSULIN_DELIVERY)})
