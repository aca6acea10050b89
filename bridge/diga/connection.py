"""Where the Device Data Recorder is and who the DiGA is: the connection file.

``hddt-bridge demo`` writes ``connection.json`` in its state folder; a DiGA developer needs
nothing else to pair a DiGA with the sandbox. The keys (docs/diga-client.md):

.. code-block:: json

    {
      "fhir_base_url": "https://127.0.0.1:8443/fhir",
      "issuer": "https://127.0.0.1:8443",
      "ca_certificate": "pki/ca.pem",
      "diga": {
        "client_id": "urn:diga:bfarm:12345",
        "certificate": "pki/diga-12345.pem",
        "private_key": "pki/diga-12345.key",
        "redirect_uri": "https://diga.example/callback",
        "scopes": ["patient/Observation.rs?code:in=…", "patient/Device.rs", …]
      },
      "patients": [{"id": "…", "portal_username": "…", "portal_password": "…"}]
    }

File paths are relative to the folder of the connection file (or absolute). ``scopes`` may
also be one space-separated string, as in OAuth. ``patients`` is sandbox-only: a real DiGA
never learns the patient's portal login.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.diga.errors import ConnectionFileError

#: pairing.md, client registration: ``urn:diga:bfarm:`` and the five-digit DiGA-VZ id.
CLIENT_ID = re.compile(r"urn:diga:bfarm:\d{5}")


@dataclass(frozen=True, slots=True)
class DigaIdentity:
    """The DiGA as registered in the DiGA directory: client id, mTLS key pair, redirect URI,
    and the SMART scopes it asks for when pairing."""

    client_id: str
    certificate: Path
    private_key: Path
    redirect_uri: str
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PortalLogin:
    """A sandbox patient's login at the maker's portal (never known to a real DiGA)."""

    id: str
    portal_username: str
    portal_password: str


@dataclass(frozen=True, slots=True)
class Connection:
    """Everything needed to pair with and read from one Device Data Recorder."""

    fhir_base_url: str
    issuer: str
    ca_certificate: Path
    diga: DigaIdentity
    patients: tuple[PortalLogin, ...] = ()

    def patient(self, patient_id: str | None) -> PortalLogin:
        """The portal login of ``patient_id`` (the only one when None and there is one)."""
        if patient_id is None:
            if len(self.patients) == 1:
                return self.patients[0]
            known = ", ".join(p.id for p in self.patients) or "none"
            raise ConnectionFileError("connection", f"name a patient (known: {known})")
        for login in self.patients:
            if login.id == patient_id:
                return login
        known = ", ".join(p.id for p in self.patients) or "none"
        raise ConnectionFileError("connection", f"no patient {patient_id!r} (known: {known})")


def load_connection(path: Path) -> Connection:
    """Read and check a connection file; paths in it are resolved against its folder."""
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConnectionFileError(where, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectionFileError(where, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConnectionFileError(where, f"not JSON: {exc}") from None
    return parse_connection(data, base=path.parent, where=where)


def parse_connection(data: Any, *, base: Path, where: str = "connection") -> Connection:
    """Build a :class:`Connection` from decoded JSON; relative paths are taken from ``base``."""
    top = _object(data, "the file", where)
    diga = _object(top.get("diga"), "diga", where)
    scopes_value = diga.get("scopes")
    if isinstance(scopes_value, str):
        scopes = tuple(scopes_value.split())
    elif isinstance(scopes_value, list) and all(isinstance(s, str) for s in scopes_value):
        scopes = tuple(scopes_value)
    else:
        raise ConnectionFileError(where, "diga.scopes must be a list of SMART scopes")
    if not scopes:
        raise ConnectionFileError(where, "diga.scopes is empty")
    client_id = _text(diga, "client_id", "diga.client_id", where)
    if not CLIENT_ID.fullmatch(client_id):
        raise ConnectionFileError(
            where, f"diga.client_id {client_id!r} is not urn:diga:bfarm: and five digits")
    identity = DigaIdentity(
        client_id=client_id,
        certificate=_file(base, _text(diga, "certificate", "diga.certificate", where), where),
        private_key=_file(base, _text(diga, "private_key", "diga.private_key", where), where),
        redirect_uri=_https_url(_text(diga, "redirect_uri", "diga.redirect_uri", where),
                                "diga.redirect_uri", where),
        scopes=scopes)
    patients_value = top.get("patients", [])
    if not isinstance(patients_value, list):
        raise ConnectionFileError(where, "patients must be a list")
    patients = []
    for index, item in enumerate(patients_value):
        entry = _object(item, f"patients[{index}]", where)
        patients.append(PortalLogin(
            id=_text(entry, "id", f"patients[{index}].id", where),
            portal_username=_text(entry, "portal_username",
                                  f"patients[{index}].portal_username", where),
            portal_password=_text(entry, "portal_password",
                                  f"patients[{index}].portal_password", where)))
    return Connection(
        fhir_base_url=_https_url(_text(top, "fhir_base_url", "fhir_base_url", where),
                                 "fhir_base_url", where).rstrip("/"),
        issuer=_https_url(_text(top, "issuer", "issuer", where), "issuer", where).rstrip("/"),
        ca_certificate=_file(base, _text(top, "ca_certificate", "ca_certificate", where), where),
        diga=identity, patients=tuple(patients))


def _object(value: Any, name: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConnectionFileError(where, f"{name} must be a JSON object")
    return value


def _text(data: Mapping[str, Any], key: str, name: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConnectionFileError(where, f"{name} is missing (a non-empty string)")
    return value.strip()


def _file(base: Path, value: str, where: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ConnectionFileError(where, f"no such file: {path}")
    return path


def _https_url(value: str, name: str, where: str) -> str:
    # HDDT traffic runs over mutual TLS only (pairing.md); a plain-HTTP URL is a mistake.
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ConnectionFileError(where, f"{name} must be an https:// URL, not {value!r}")
    return value
