"""The connection file: keys, relative paths, and specific refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.diga.connection import load_connection, parse_connection
from bridge.diga.errors import ConnectionFileError

SCOPES = ["patient/Observation.rs?code:in=https://gematik.de/fhir/hddt/ValueSet/"
          "hddt-miv-continuous-glucose-measurement", "patient/Device.rs"]


def _data() -> dict[str, Any]:
    return {"fhir_base_url": "https://127.0.0.1:8443/fhir/", "issuer": "https://127.0.0.1:8443",
            "ca_certificate": "pki/ca.pem",
            "diga": {"client_id": "urn:diga:bfarm:12345", "certificate": "pki/diga.pem",
                     "private_key": "pki/diga.key",
                     "redirect_uri": "https://diga.example/callback", "scopes": SCOPES},
            "patients": [{"id": "p1", "portal_username": "anna", "portal_password": "pw"},
                         {"id": "p2", "portal_username": "ben", "portal_password": "pw2"}]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "diga.pem", "diga.key"):
        (tmp_path / "pki" / name).write_text("-----BEGIN-----\n")
    return tmp_path


def test_load_resolves_paths_against_the_file(folder: Path) -> None:
    path = folder / "connection.json"
    path.write_text(json.dumps(_data()))
    connection = load_connection(path)
    assert connection.fhir_base_url == "https://127.0.0.1:8443/fhir"
    assert connection.ca_certificate == folder / "pki" / "ca.pem"
    assert connection.diga.private_key == folder / "pki" / "diga.key"
    assert connection.diga.scopes == tuple(SCOPES)
    assert connection.patient("p2").portal_username == "ben"
    with pytest.raises(ConnectionFileError, match=r"name a patient \(known: p1, p2\)"):
        connection.patient(None)


def test_scopes_as_one_string(folder: Path) -> None:
    data = _data()
    data["diga"]["scopes"] = " ".join(SCOPES)
    data["patients"] = data["patients"][:1]
    connection = parse_connection(data, base=folder)
    assert connection.diga.scopes == tuple(SCOPES)
    assert connection.patient(None).id == "p1"


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("issuer"), "issuer is missing"),
    (lambda d: d.update(fhir_base_url="http://127.0.0.1/fhir"), "must be an https:// URL"),
    (lambda d: d["diga"].update(client_id="urn:diga:bfarm:123"), "five digits"),
    (lambda d: d["diga"].update(certificate="pki/none.pem"), "no such file"),
    (lambda d: d["diga"].update(scopes=[]), "diga.scopes is empty"),
    (lambda d: d["diga"].update(scopes=[1]), "list of SMART scopes"),
    (lambda d: d.update(patients={}), "patients must be a list"),
    (lambda d: d["patients"][0].pop("portal_password"), "patients\\[0\\].portal_password"),
    (lambda d: d.update(diga="x"), "diga must be a JSON object"),
])
def test_refusals(folder: Path, change: Any, message: str) -> None:
    data = _data()
    change(data)
    with pytest.raises(ConnectionFileError, match=message):
        parse_connection(data, base=folder)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFileError, match="no such file"):
        load_connection(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConnectionFileError, match="not JSON"):
        load_connection(broken)
