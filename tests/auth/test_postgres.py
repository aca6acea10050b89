"""The authorization server on PostgreSQL (production's database): pairing, data access,
refresh rotation with replay detection, revocation, over real TLS."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tests.auth.data import seed_glucose
from tests.auth.harness import DIGA_A, DIGA_B, bearer, running_sandbox
from tests.backend.postgres import PostgresServer


def test_pairing_refresh_replay_and_revoke_on_postgresql(tmp_path: Path,
                                                         pg: PostgresServer) -> None:
    url = pg.url(pg.create_database())
    with running_sandbox(tmp_path, url=url, patients=("alice", "bob")) as box:
        seed_glucose(box.store, "alice", value=111.0, now=dt.datetime.now(dt.UTC))
        tokens = box.pair(DIGA_A, "alice")
        response = box.diga(DIGA_A).get(f"{box.fhir_url}/Observation",
                                        headers=bearer(tokens["access_token"]))
        assert response.status_code == 200
        values = {e["resource"]["valueQuantity"]["value"]
                  for e in response.json()["entry"] if "valueQuantity" in e["resource"]}
        assert values == {111}
        assert box.diga(DIGA_B).get(f"{box.fhir_url}/Observation", headers=bearer(
            tokens["access_token"])).status_code == 401

        rotated = box.refresh(DIGA_A, tokens["refresh_token"])
        assert rotated.status_code == 200
        replay = box.refresh(DIGA_A, tokens["refresh_token"])
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert box.diga(DIGA_A).get(f"{box.fhir_url}/Observation", headers=bearer(
            rotated.json()["access_token"])).status_code == 401

        again = box.pair(DIGA_A, "alice")
        assert again["sub"] == tokens["sub"]
        assert box.revoke(DIGA_A, again["refresh_token"]).status_code == 200
        assert box.diga(DIGA_A).get(f"{box.fhir_url}/Observation", headers=bearer(
            again["access_token"])).status_code == 401
