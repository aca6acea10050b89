"""The DiGA reference client against the real Device Data Recorder over TLS.

One HTTPS server (authorization server, portal, FHIR resource server) with a sandbox PKI; a
simulated patient's meter and CGM records go into the store through the backend's ingest in
stages, as a gateway syncing late would deliver them. The client pairs through the portal's
forms, polls between the stages, refreshes, reads the CGM summary, and unpairs; afterwards the
recorder refuses the old tokens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from bridge.auth.pairing import revoke_pairing
from bridge.backend import registry
from bridge.backend.ingest import Inbound, IngestProcessor
from bridge.backend.store import Store
from bridge.diga.client import DigaClient
from bridge.diga.connection import load_connection
from bridge.diga.errors import (
    AuthorizationDenied,
    DigaError,
    NotPaired,
    OAuthError,
    PairingFlowError,
    PairingRevoked,
)
from bridge.diga.polling import BLOOD_GLUCOSE, CGM, Reading
from bridge.diga.render import mg_dl
from bridge.diga.state import PairingStore
from bridge.hddt.observations import BG_LOINC_BY_SAMPLE
from bridge.hddt.settings import HddtSettings
from bridge.messages import RecordsMessage, batches, records_topic
from bridge.records import AnyRecord, BloodGlucoseReading, CgmReading, DeviceInfo, Record
from simulators.physiology import standard_patient
from simulators.run import simulate_cohort
from simulators.scenario import default_scenario
from tests.auth.harness import (
    ALL_GLUCOSE,
    DIGA_A,
    PASSWORD,
    Sandbox,
    redirect_uri,
    running_sandbox,
)
from tests.auth.harness import (
    CGM as CGM_SCOPE,
)

GATEWAY = "gw-alice"


@dataclasses.dataclass
class Simulated:
    devices: list[DeviceInfo]
    records: dict[str, list[AnyRecord]]
    start: dt.datetime
    end: dt.datetime


def _shift(record: Record, delta: dt.timedelta) -> AnyRecord:
    changes: dict[str, Any] = {"time": record.time + delta}
    if record.device_time is not None:
        changes["device_time"] = record.device_time + delta
    if isinstance(record, CgmReading) and record.session_start is not None:
        changes["session_start"] = record.session_start + delta
    return cast("AnyRecord", dataclasses.replace(record, **changes))


def _simulate(days: int, now: dt.datetime, seed: int = 11) -> Simulated:
    result = simulate_cohort([standard_patient("adult#001")], default_scenario(), days,
                             seed=seed, records=True)
    assert result.devices is not None
    logs = [log for log in result.devices[0].logs if log.info.kind.value in
            {"cgm", "blood-glucose-meter"}]
    # Move the history so that it ends an hour before now, by whole hours (the CGM's
    # 5-minute grid stays on the recorder's hourly chunk grid).
    last = max(r.time for log in logs for r in log.records)
    hours = (now - last) // dt.timedelta(hours=1) - 1
    delta = dt.timedelta(hours=hours)
    records = {log.info.device_id: [_shift(r, delta) for r in log.records] for log in logs}
    start = min(r.time for rs in records.values() for r in rs)
    end = max(r.time for rs in records.values() for r in rs)
    return Simulated([log.info for log in logs], records, start, end)


def _ingest(store: Store, sim: Simulated, upto: dt.datetime, after: dt.datetime,
            gateway: str = GATEWAY) -> int:
    inserted = 0
    for info in sim.devices:
        part = [r for r in sim.records[info.device_id] if after <= r.time < upto]
        inbound = [Inbound(records_topic(gateway),
                           RecordsMessage(gateway_id=gateway, device=info,
                                          records=chunk).to_bytes(),
                           max(r.time for r in chunk))
                   for chunk in batches(part, 200)]
        inserted += IngestProcessor(store).ingest(inbound).inserted
    return inserted


def _expected(sim: Simulated) -> tuple[list[tuple[dt.datetime, float]],
                                         list[tuple[dt.datetime, float]]]:
    """What the recorder exports of the simulated records: (time, mg/dL) per reading."""
    meter, cgm = [], []
    for records in sim.records.values():
        for r in records:
            if isinstance(r, BloodGlucoseReading) and r.glucose_mg_dl is not None \
                    and r.sample_type.value in BG_LOINC_BY_SAMPLE:
                meter.append((r.time, round(r.glucose_mg_dl, 1)))
            elif isinstance(r, CgmReading) and r.glucose_mg_dl is not None:
                cgm.append((r.time, round(r.glucose_mg_dl, 1)))
    return sorted(meter), sorted(cgm)


def _pairs(readings: Sequence[Reading], kind: str) -> list[tuple[dt.datetime, float]]:
    out = []
    for r in readings:
        if r.kind == kind:
            value = mg_dl(r)
            assert value is not None
            out.append((r.time, round(value, 1)))
    return out


def _write_connection(box: Sandbox, folder: Path, patients: Sequence[str]) -> Path:
    pair = box.pki.diga(DIGA_A)
    path = folder / "connection.json"
    path.write_text(json.dumps({
        "fhir_base_url": box.fhir_url, "issuer": box.base_url,
        "ca_certificate": os.path.relpath(box.pki.ca.cert, folder),
        "diga": {"client_id": DIGA_A, "certificate": str(pair.cert),
                 "private_key": str(pair.key), "redirect_uri": redirect_uri(DIGA_A),
                 "scopes": list(ALL_GLUCOSE)},
        "patients": [{"id": p, "portal_username": p, "portal_password": PASSWORD}
                     for p in patients]}))
    return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tmp = tmp_path_factory.mktemp("diga-e2e")
    settings = HddtSettings(rate_limit_per_minute=None)
    with running_sandbox(tmp, patients=("alice", "bob", "carol", "dave"),
                         hddt_settings=settings) as box:
        with box.store.begin() as conn:
            registry.provision_gateway(conn, GATEWAY, patient_id="alice", actor="test")
            registry.provision_gateway(conn, "gw-carol", patient_id="carol", actor="test")
        yield box


def test_pair_poll_refresh_summary_unpair(sandbox: Sandbox, tmp_path: Path) -> None:
    box = sandbox
    now = dt.datetime.now(dt.UTC)
    sim = _simulate(2, now)
    connection = load_connection(_write_connection(box, tmp_path, ["alice"]))
    store = PairingStore(tmp_path / "pairings")
    client = DigaClient(connection, store)
    try:
        # Pairing through the portal's forms: PAR, login, consent for every MIV, code exchange.
        state = client.pair_with_portal("alice", connection.patient("alice"))
        assert state.status == "paired" and state.pairing_id
        assert state.scopes == set(ALL_GLUCOSE)
        assert "alice" not in state.pairing_id  # pseudonymous

        # Data arrives in stages; the DiGA polls in between (twice after one stage).
        first = sim.start
        cuts = [sim.start + dt.timedelta(hours=20), sim.start + dt.timedelta(hours=31),
                sim.end + dt.timedelta(seconds=1)]
        polled: list[Reading] = []
        since = sim.start - dt.timedelta(hours=1)
        lower = first
        for index, cut in enumerate(cuts):
            assert _ingest(box.store, sim, cut, lower) > 0
            lower = cut
            for _ in range(2 if index == 1 else 1):
                polled += client.fetch_blood_glucose("alice", since).readings
                cgm = client.fetch_cgm("alice", since)
                assert cgm.rejected == []
                polled += cgm.readings
        meter_expected, cgm_expected = _expected(sim)
        meter_got, cgm_got = _pairs(polled, BLOOD_GLUCOSE), _pairs(polled, CGM)
        # Every reading exactly once, with its time and value.
        assert len(meter_expected) >= 6 and len(cgm_expected) >= 500
        assert sorted(meter_got) == meter_expected
        assert sorted(cgm_got) == cgm_expected
        # Nothing new: a further poll delivers nothing.
        assert client.fetch_blood_glucose("alice", since).readings == []
        assert client.fetch_cgm("alice", since).readings == []

        # Refresh: new access and refresh tokens (rotation), and reading still works.
        before = store.load("alice")
        after = client.refresh("alice")
        assert after.access_token != before.access_token
        assert after.refresh_token != before.refresh_token
        assert after.pairing_id == before.pairing_id

        # The CGM summary over the simulated days.
        report = client.cgm_summary("alice", sim.start, sim.end, related=True)
        kinds = [e["resource"]["resourceType"] for e in report.get("entry", [])]
        assert "Observation" in kinds

        # Unpair: the recorder revokes the grant; the client forgets its tokens.
        old = store.load("alice")
        client.unpair("alice")
        with pytest.raises(NotPaired):
            client.fetch_cgm("alice", since)
        assert old.access_token and old.refresh_token
        pair = box.pki.diga(DIGA_A)
        with httpx.Client(verify=box.tls_context((pair.cert, pair.key))) as raw:
            refused = raw.get(f"{box.fhir_url}/Observation",
                              headers={"Authorization": f"Bearer {old.access_token}"})
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            token = raw.post(f"{box.base_url}/token", data={
                "grant_type": "refresh_token", "refresh_token": old.refresh_token,
                "client_id": DIGA_A})
            assert token.status_code == 400 and token.json()["error"] == "invalid_grant"
    finally:
        client.close()


def test_subset_denial_and_revocation_by_the_recorder(sandbox: Sandbox, tmp_path: Path
                                                      ) -> None:
    box = sandbox
    connection = load_connection(_write_connection(box, tmp_path, ["bob"]))
    store = PairingStore(tmp_path / "pairings")
    with DigaClient(connection, store) as client:
        # A wrong portal password: the login page comes back, the client stops.
        wrong = dataclasses.replace(connection.patient("bob"), portal_password="wrong")
        with pytest.raises(PairingFlowError, match="refused the login"):
            client.pair_with_portal("bob", wrong)

        # The patient declines: the recorder redirects with access_denied.
        with pytest.raises(AuthorizationDenied) as denied:
            client.pair_with_portal("bob", connection.patient("bob"), deny=True)
        assert denied.value.error == "access_denied"

        # The patient grants CGM only: the token carries only that MIV.
        state = client.pair_with_portal("bob", connection.patient("bob"), grant=[CGM_SCOPE])
        assert CGM_SCOPE in state.scopes
        assert not any("blood-glucose" in s for s in state.scopes)

        # The recorder ends the pairing (the patient in the portal, or the system): the
        # next refresh is refused with invalid_grant and the client records the end.
        assert state.pairing_id is not None
        with box.store.begin() as conn:
            revoke_pairing(conn, state.pairing_id, by="patient", actor="test")
        with pytest.raises(PairingRevoked):
            client.refresh("bob")
        assert store.load("bob").status == "revoked"


def test_command_line(sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                      ) -> None:
    from bridge.cli import main

    box = sandbox
    sim = _simulate(1, dt.datetime.now(dt.UTC), seed=12)
    _ingest(box.store, sim, sim.end + dt.timedelta(seconds=1), sim.start, gateway="gw-carol")
    meter_expected, cgm_expected = _expected(sim)
    conn_file = str(_write_connection(box, tmp_path, ["carol", "dave"]))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["diga", *args, "--connection", conn_file])
        out, err = capsys.readouterr()
        return code, out, err

    # Without a login the command prints the consent URL for a person; the browser's
    # redirect (here: the client walking the portal as that person) finishes the pairing.
    code, out, _ = run("pair", "--name", "carol", "--prescription-end",
                       (dt.date.today() + dt.timedelta(days=60)).isoformat())
    assert code == 0
    url = next(line.strip() for line in out.splitlines() if "/authorize?" in line)
    connection = load_connection(Path(conn_file))
    with DigaClient(connection, PairingStore(tmp_path / "unused")) as browser_side:
        redirected = browser_side.consent_in_portal(url, connection.patient("carol"))
    code, out, _ = run("pair", "--name", "carol", "--redirected-to", redirected)
    assert code == 0 and "paired" in out

    code, out, err = run("fetch", "--name", "carol", "--days", "3", "--format", "json",
                         "--plot", str(tmp_path / "chart.svg"))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert sum(r["kind"] == "blood-glucose" for r in rows) == len(meter_expected)
    assert sum(r["kind"] == "cgm" for r in rows) == len(cgm_expected)
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
    code, out, err = run("fetch", "--name", "carol", "--plot", "spark")
    assert code == 0 and "0 new readings" in err
    # --replay reads the period again without moving the cursor.
    code, out, err = run("fetch", "--name", "carol", "--days", "3", "--replay",
                         "--format", "json")
    assert code == 0 and len(out.splitlines()) == len(rows)
    code, out, err = run("fetch", "--name", "carol")
    assert code == 0 and "0 new readings" in err

    code, out, _ = run("summary", "--name", "carol", "--days", "7")
    assert code == 0 and out.strip()
    code, out, _ = run("refresh", "--name", "carol")
    assert code == 0 and "rotated" in out
    state_file = tmp_path / "diga" / "carol.json"
    tokens = json.loads(state_file.read_text())
    code, out, _ = run("show")
    assert code == 0 and "carol: paired" in out
    assert tokens["access_token"] not in out and tokens["refresh_token"] not in out

    code, out, _ = run("unpair", "--name", "carol")
    assert code == 0 and "unpaired carol" in out
    code, out, err = run("fetch", "--name", "carol")
    assert code == 1 and "not paired (unpaired by the DiGA)" in err

    # The patient login path, and clear refusals of bad input.
    code, out, _ = run("pair", "--patient", "dave", "--grant", CGM_SCOPE)
    assert code == 0 and "dave: paired" in out
    code, out, err = run("fetch", "--patient", "dave", "--kind", "bg")
    # Blood glucose was not granted: error-codes.md, a code outside the grant gives an
    # empty Bundle, not an error.
    assert code == 0 and "0 new readings" in err
    code, _, err = run("pair", "--patient", "nobody")
    assert code == 1 and "no patient 'nobody' (known: carol, dave)" in err
    code, _, err = run("fetch", "--name", "../x")
    assert code == 1 and "pairing name" in err
    assert main(["diga", "fetch", "--connection", str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_unknown_certificate_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    box = sandbox
    path = _write_connection(box, tmp_path, ["bob"])
    cert, key = box.foreign_certificate(DIGA_A)
    data = json.loads(path.read_text())
    data["diga"].update(certificate=str(cert), private_key=str(key))
    path.write_text(json.dumps(data))
    with DigaClient(load_connection(path), PairingStore(tmp_path / "p")) as client:
        # Refused in the TLS handshake or by the authorization server (invalid_client):
        # either way a clear error and no pairing.
        with pytest.raises(DigaError) as refused:
            client.start_pairing("bob")
        if isinstance(refused.value, OAuthError):
            assert refused.value.status == 401 and refused.value.error == "invalid_client"
        else:
            assert "cannot reach" in str(refused.value)
        assert not client.store.exists("bob")
