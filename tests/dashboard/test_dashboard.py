"""The dashboard over a store filled through the real ingest with simulated patients:
pages in-process (httpx.ASGITransport) and over real HTTP (uvicorn), on SQLite and on a
private PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from bridge.backend.store import Store, cgm_readings, devices, gateways, insert_rows, record_row
from bridge.dashboard import DashboardError
from bridge.dashboard.app import create_dashboard_app
from bridge.dashboard.auth import BasicAuth, hash_password
from bridge.records import CgmReading
from tests.backend.postgres import PostgresServer, postgres_available, shared_server
from tests.dashboard.fill import (
    AGENT_VERSION,
    GATEWAY,
    HOSTILE_ERROR,
    HOSTILE_MAKER,
    HOSTILE_NAME,
    HOSTILE_PATIENT,
    HOSTILE_TOPIC,
    PATIENT,
    QUEUED,
    Filled,
    fill,
)
from tests.dashboard.pages import BERLIN, by_class, check_patient_page, parse
from tests.dashboard.server import ServerThread

# Async tests run on anyio's pytest plugin (installed with httpx), on asyncio.
pytestmark = pytest.mark.anyio

PORTAL = "https://bridge.example/portal/"
FHIR = "https://bridge.example/fhir"


def site(store: Store, filled: Filled, **options: object) -> FastAPI:
    """The dashboard mounted where the web server mounts it."""
    app = FastAPI()
    app.mount("/dashboard", create_dashboard_app(
        store, portal_url=PORTAL, fhir_base_url=FHIR, clock=lambda: filled.now,
        **options))  # type: ignore[arg-type]
    return app


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Filled]]:
    with Store.open(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'backend.sqlite'}") as store:
        yield store, fill(store)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(sqlite_store: tuple[Store, Filled]) -> AsyncIterator[httpx.AsyncClient]:
    store, filled = sqlite_store
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=site(store, filled)),
                                 base_url="http://dash.test") as c:
        yield c


def when(value: dt.datetime) -> str:
    return value.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S %Z")


# --- patient page ----------------------------------------------------------------------------

@pytest.mark.parametrize("days", [None, 1, 3])
async def test_patient_page_draws_every_reading_of_the_window(
        client: httpx.AsyncClient, sqlite_store: tuple[Store, Filled], days: int | None
) -> None:
    store, filled = sqlite_store
    query = "" if days is None else f"?days={days}"
    response = await client.get(f"/dashboard/patients/{PATIENT}{query}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    check_patient_page(response.text, filled, store, days or 1)


async def test_patient_page_window_can_end_in_the_past(
        client: httpx.AsyncClient, sqlite_store: tuple[Store, Filled]) -> None:
    store, filled = sqlite_store
    end = filled.now - dt.timedelta(days=1)
    response = await client.get(f"/dashboard/patients/{PATIENT}",
                                params={"end": end.isoformat()})
    doc = parse(response.text)
    svg = by_class(doc, "svg", "glucose-chart")[0]
    assert svg.get("data-end") == end.isoformat().replace("+00:00", "Z")
    with store.read() as conn:
        expected = conn.execute(sa.select(sa.func.count()).select_from(cgm_readings).where(
            cgm_readings.c.patient_id == PATIENT, cgm_readings.c.value.is_not(None),
            cgm_readings.c.time >= end - dt.timedelta(days=1),
            cgm_readings.c.time < end)).scalar_one()
    assert int(by_class(doc, "path", "cgm-line")[0].get("data-points")) == expected > 0


async def test_patient_page_links_the_portal_and_the_fhir_base(
        client: httpx.AsyncClient) -> None:
    doc = parse((await client.get(f"/dashboard/patients/{PATIENT}")).text)
    assert doc.xpath('//a[@class="portal-link"]/@href') == [PORTAL]
    assert doc.xpath('//a[@class="fhir-link"]/@href') == [FHIR]
    # No script anywhere, no resource from elsewhere.
    assert doc.xpath("//script") == []
    assert [s for s in doc.xpath("//@src")] == []


@pytest.mark.parametrize(("query", "expected"), [
    ("days=0", "days='0'"), ("days=31", "days='31'"), ("days=two", "days='two'"),
    ("end=yesterday", "end='yesterday'"), ("refresh=1", "refresh='1'")])
async def test_bad_parameters_get_a_specific_400(client: httpx.AsyncClient, query: str,
                                                 expected: str) -> None:
    response = await client.get(f"/dashboard/patients/{PATIENT}?{query}")
    assert response.status_code == 400
    message = parse(response.text).xpath('//p[@class="error"]')[0].text_content()
    assert message.startswith(expected)
    # The app keeps serving.
    assert (await client.get(f"/dashboard/patients/{PATIENT}")).status_code == 200


async def test_unknown_patient_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard/patients/nobody")
    assert response.status_code == 404
    assert "nobody" in response.text


async def test_refresh_adds_a_meta_refresh(client: httpx.AsyncClient) -> None:
    plain = parse((await client.get("/dashboard/")).text)
    assert plain.xpath('//meta[@http-equiv="refresh"]') == []
    doc = parse((await client.get("/dashboard/?refresh=30")).text)
    assert doc.xpath('//meta[@http-equiv="refresh"]/@content') == ["30"]


# --- overview --------------------------------------------------------------------------------

async def test_overview_shows_status_last_contact_and_pipeline_health(
        client: httpx.AsyncClient, sqlite_store: tuple[Store, Filled]) -> None:
    store, filled = sqlite_store
    doc = parse((await client.get("/dashboard/")).text)
    with store.read() as conn:
        gw = conn.execute(sa.select(gateways).where(gateways.c.id == GATEWAY)).mappings().one()
        device_rows = {r["id"]: r for r in conn.execute(sa.select(devices)).mappings()}
    (row,) = doc.xpath(f'//tr[@data-gateway="{GATEWAY}"]')
    assert row.get("data-status") == "online"
    assert gw["last_contact"] == filled.received_at
    last = row.xpath('./td[@class="last-contact"]')[0].text_content()
    assert when(filled.received_at) in last and "5 min ago" in last
    assert AGENT_VERSION in row.text_content()
    assert row.xpath('./td[contains(@class, "queued")]')[0].text_content() == str(
        sum(QUEUED.values()))
    for name, device_id in filled.device_ids.items():
        (drow,) = doc.xpath(f'//table[@id="devices"]//tr[@data-device="{device_id}"]')
        stored = device_rows[device_id]
        assert drow.get("data-status") == stored["status"]
        assert when(stored["last_contact"]) in drow.xpath(
            './td[@class="last-contact"]')[0].text_content()
        if name in QUEUED:
            assert stored["status"] == "connected"
            assert drow.xpath("./td")[9].text_content() == str(QUEUED[name])
    # Pipeline health.
    assert doc.get_element_by_id("agent-queue").text_content() == str(sum(QUEUED.values()))
    assert doc.get_element_by_id("ingest-lag").text_content() == "5 min"
    assert doc.get_element_by_id("dead-letters").text_content() == "2"
    reasons = sorted(r.get("data-reason") for r in doc.xpath('//tr[@class="dead-letter"]'))
    assert reasons == ["invalid-topic", "not-json"]
    # Patients with their counts, linked to their pages.
    (prow,) = doc.xpath(f'//tr[@data-patient="{PATIENT}"]')
    cells = [c.text_content() for c in prow.xpath("./td")]
    assert int(cells[2]) == sum(1 for r in filled.sim.records if isinstance(r, CgmReading))
    assert prow.xpath(".//a/@href") == [f"/dashboard/patients/{PATIENT}"]


async def test_ingest_rate_counts_records_of_the_last_minute(
        tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'b.sqlite'}") as store:
        filled = fill(store)
        # Everything was inserted just now: as seen now, all of it is the last minute's.
        now = dt.datetime.now(dt.UTC)
        app = FastAPI()
        app.mount("/dashboard", create_dashboard_app(store, clock=lambda: now))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://dash.test") as c:
            doc = parse((await c.get("/dashboard/")).text)
        total = sum(store.counts().values())
        assert total == len(filled.sim.records) + 3
        assert doc.get_element_by_id("ingest-rate").text_content() == str(total)
        assert doc.get_element_by_id("records-total").text_content() == str(total)
        # No portal or FHIR link when none is configured.
        assert doc.xpath('//a[@class="portal-link"]') == []


async def test_hostile_names_are_escaped(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/", f"/dashboard/patients/{HOSTILE_PATIENT}"):
        response = await client.get(path)
        assert response.status_code == 200
        html = response.text
        doc = parse(html)
        assert doc.xpath("//script") == [] and doc.xpath("//img") == []
        assert "<script>" not in html and "<img" not in html
        assert HOSTILE_NAME in doc.text_content()
        assert HOSTILE_MAKER in doc.text_content()
        assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt; &amp; &#34;Eve&#34;" in html
    doc = parse((await client.get("/dashboard/")).text)
    assert HOSTILE_ERROR in doc.text_content()
    assert HOSTILE_TOPIC in doc.text_content()
    # The injected "</td></tr><tr>" in the model did not add a row.
    assert len(doc.xpath('//table[@id="devices"]/tbody/tr')) == 4


# --- read-only and authentication ------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/dashboard/", f"/dashboard/patients/{PATIENT}",
                                  "/dashboard/anything"])
async def test_only_get_and_head(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, content=b"x=1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_head_answers_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.head(f"/dashboard/patients/{PATIENT}")
    assert response.status_code == 200 and response.content == b""


async def test_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard/")
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_basic_auth_when_configured(sqlite_store: tuple[Store, Filled]) -> None:
    store, filled = sqlite_store
    auth = BasicAuth("maker", hash_password("s3cret pass", iterations=2000))
    app = site(store, filled, basic_auth=auth)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash.test") as c:
        refused = await c.get("/dashboard/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Basic realm="hddt-bridge')
        assert PATIENT not in refused.text
        for user, password in (("maker", "wrong"), ("other", "s3cret pass"),
                               ("maker", "")):
            response = await c.get("/dashboard/", auth=(user, password))
            assert response.status_code == 401, (user, password)
        bad_header = await c.get("/dashboard/", headers={"Authorization": "Basic !!!"})
        assert bad_header.status_code == 401
        ok = await c.get(f"/dashboard/patients/{PATIENT}", auth=("maker", "s3cret pass"))
        assert ok.status_code == 200 and PATIENT in ok.text
        # Remembered after the first check, and still read-only.
        again = await c.get("/dashboard/", auth=("maker", "s3cret pass"))
        assert again.status_code == 200
        post = await c.post("/dashboard/", auth=("maker", "s3cret pass"))
        assert post.status_code == 405


def test_bad_settings_are_refused(sqlite_store: tuple[Store, Filled]) -> None:
    store, _ = sqlite_store
    with pytest.raises(DashboardError, match="password hash must look like"):
        BasicAuth("maker", "plaintext")
    with pytest.raises(DashboardError, match="user name"):
        BasicAuth("ma:ker", hash_password("x", iterations=2000))
    with pytest.raises(DashboardError, match="unknown time zone 'Mars/Olympus'"):
        create_dashboard_app(store, timezone="Mars/Olympus")
    header = base64.b64encode(b"maker:pw").decode()
    assert BasicAuth("maker", hash_password("pw", iterations=2000)).check(f"Basic {header}")


# --- reading while the ingest writes ---------------------------------------------------------

async def test_pages_answer_while_the_ingest_holds_the_write_lock(
        client: httpx.AsyncClient, sqlite_store: tuple[Store, Filled]) -> None:
    store, filled = sqlite_store
    cgm_id = filled.device_ids["cgm"]
    before = int(by_class(parse((await client.get(f"/dashboard/patients/{PATIENT}")).text),
                          "path", "cgm-line")[0].get("data-points"))
    record = CgmReading(device_id=cgm_id, time=filled.now - dt.timedelta(seconds=30),
                        glucose_mg_dl=123.0, sequence=999_999)
    writing, release = threading.Event(), threading.Event()

    def ingest_transaction() -> None:
        with store.begin() as conn:  # BEGIN IMMEDIATE: the write lock
            table, row = record_row(record, patient_id=PATIENT, gateway_id=GATEWAY,
                                    received_at=filled.now, inserted_at=store.clock.now())
            insert_rows(conn, table, [row])
            writing.set()
            release.wait(30)
            conn.rollback()

    writer = threading.Thread(target=ingest_transaction)
    writer.start()
    try:
        assert writing.wait(10)
        response = await client.get(f"/dashboard/patients/{PATIENT}", timeout=5)
        assert response.status_code == 200
        # The uncommitted row is not visible.
        assert int(by_class(parse(response.text), "path", "cgm-line")[0].get(
            "data-points")) == before
    finally:
        release.set()
        writer.join(30)


# --- real HTTP and PostgreSQL ----------------------------------------------------------------

def test_over_real_http(sqlite_store: tuple[Store, Filled]) -> None:
    store, filled = sqlite_store
    with ServerThread(site(store, filled)) as base, httpx.Client(base_url=base) as http:
        overview = http.get("/dashboard/")
        assert overview.status_code == 200
        href = parse(overview.text).xpath(f'//tr[@data-patient="{PATIENT}"]//a/@href')[0]
        page = http.get(href, params={"days": 2})
        assert page.status_code == 200
        check_patient_page(page.text, filled, store, 2)
        assert http.post(href).status_code == 405


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest) -> PostgresServer:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed")
    return shared_server(request.config)


async def test_on_postgresql(pg: PostgresServer) -> None:
    if not pg.running:
        pg.start()
    with Store.open(pg.url(pg.create_database())) as store:
        filled = fill(store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=site(store, filled)),
                                     base_url="http://dash.test") as c:
            page = await c.get(f"/dashboard/patients/{PATIENT}", params={"days": 3})
            assert page.status_code == 200
            check_patient_page(page.text, filled, store, 3)
            doc = parse((await c.get("/dashboard/")).text)
            assert doc.get_element_by_id("agent-queue").text_content() == str(
                sum(QUEUED.values()))
            assert doc.xpath(f'//tr[@data-gateway="{GATEWAY}"]/@data-status') == ["online"]
