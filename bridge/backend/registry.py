"""The device and patient registry: who owns which gateway and which device.

* A **patient** is provisioned first (an id of 1-64 of ``[A-Za-z0-9._-]``; no personal data
  is needed here).
* A **gateway** belongs to exactly one patient and is bound to its client certificate
  (subject and SHA-256 fingerprint). The broker admits a gateway by that certificate and
  its ACL lets it publish only under ``hddt/v1/gw/<its CN>/``; the ingest trusts that topic
  and refuses payloads that claim another gateway.
* A **device** is attached to a patient. A device first seen on a gateway is attached to
  that gateway's patient automatically; one provisioned ahead (``assign_device``) keeps its
  patient, and records for it from a gateway of ANOTHER patient are refused (dead letter
  ``device-assigned-elsewhere``), so a gateway can never write into a stranger's record.
  Moving a device or gateway to another patient takes an explicit ``reassign``.

Every change is written to the audit log with the actor, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import ssl
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.backend.store import (
    DEVICE_INFO_COLUMNS,
    ID_LEN,
    audit,
    devices,
    dialect_insert,
    gateways,
    patients,
)
from bridge.errors import BridgeError
from bridge.messages import PayloadError, check_id
from bridge.records import DeviceKind

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(BridgeError):
    """A provisioning request that cannot be carried out (unknown patient, id taken, …)."""


def _ident(value: str, what: str) -> str:
    try:
        return check_id(value, what)
    except PayloadError as exc:
        raise RegistryError(exc.detail) from None


@dataclass(frozen=True, slots=True)
class Patient:
    id: str
    display_name: str | None
    auto_provisioned: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Gateway:
    id: str
    patient_id: str
    cert_subject: str | None
    cert_fingerprint: str | None
    status: str
    status_at: dt.datetime | None
    agent_version: str | None
    last_contact: dt.datetime | None
    auto_provisioned: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    kind: str | None
    gateway_id: str | None
    patient_id: str | None
    manufacturer: str | None
    model: str | None
    serial_number: str | None
    calibration_state: str | None
    status: str | None
    last_contact: dt.datetime | None
    first_seen: dt.datetime


# --- certificates ----------------------------------------------------------------------------

def normalise_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons and spaces allowed in)."""
    cleaned = re.sub(r"[\s:]", "", text).lower()
    if cleaned.startswith("sha256="):
        cleaned = cleaned[len("sha256="):]
    if not _FINGERPRINT.match(cleaned):
        raise RegistryError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return cleaned


def certificate_identity(pem: bytes) -> tuple[str | None, str, str | None]:
    """(subject as RFC 4514 text, SHA-256 fingerprint of the DER, common name) of a PEM
    certificate. The subject needs the ``cryptography`` package; without it the subject and
    CN are ``None`` and only the fingerprint is taken."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RegistryError("not a PEM certificate") from None
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        from cryptography import x509  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError:  # pragma: no cover - cryptography is installed with the backend
        return None, fingerprint, None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise RegistryError(f"not a readable X.509 certificate: {exc}") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    return cert.subject.rfc4514_string(), fingerprint, cn if isinstance(cn, str) else None


# --- reads -----------------------------------------------------------------------------------

def get_patient(conn: Connection, patient_id: str) -> Patient | None:
    row = conn.execute(sa.select(patients).where(patients.c.id == patient_id)).first()
    return None if row is None else Patient(**row._asdict())


def get_gateway(conn: Connection, gateway_id: str) -> Gateway | None:
    row = conn.execute(sa.select(gateways).where(gateways.c.id == gateway_id)).first()
    return None if row is None else Gateway(**row._asdict())


def _device(row: Any) -> Device:
    m = row._mapping
    return Device(**{name: m[name] for name in Device.__dataclass_fields__})


def get_device(conn: Connection, device_id: str) -> Device | None:
    row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).first()
    return None if row is None else _device(row)


def list_patients(conn: Connection) -> list[Patient]:
    return [Patient(**r._asdict()) for r in conn.execute(
        sa.select(patients).order_by(patients.c.id))]


def list_gateways(conn: Connection, *, patient_id: str | None = None) -> list[Gateway]:
    q = sa.select(gateways).order_by(gateways.c.id)
    if patient_id is not None:
        q = q.where(gateways.c.patient_id == patient_id)
    return [Gateway(**r._asdict()) for r in conn.execute(q)]


def list_devices(conn: Connection, *, patient_id: str | None = None,
                 gateway_id: str | None = None) -> list[Device]:
    q = sa.select(devices).order_by(devices.c.id)
    if patient_id is not None:
        q = q.where(devices.c.patient_id == patient_id)
    if gateway_id is not None:
        q = q.where(devices.c.gateway_id == gateway_id)
    return [_device(r) for r in conn.execute(q)]


# --- provisioning ----------------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def provision_patient(conn: Connection, patient_id: str, *, actor: str,
                      display_name: str | None = None) -> bool:
    """Create a patient (or update the display name); True when it was created."""
    _ident(patient_id, "patient id")
    if display_name is not None and (len(display_name) > 200 or "\x00" in display_name):
        raise RegistryError("display name: at most 200 characters, no NUL")
    existing = get_patient(conn, patient_id)
    if existing is None:
        conn.execute(patients.insert().values(id=patient_id, display_name=display_name,
                                              auto_provisioned=False, created_at=_now()))
        audit(conn, actor=actor, action="provision-patient", subject_type="patient",
              subject_id=patient_id, patient_id=patient_id,
              detail={"display_name": display_name})
        return True
    values: dict[str, Any] = {"auto_provisioned": False}
    if display_name is not None:
        values["display_name"] = display_name
    conn.execute(patients.update().where(patients.c.id == patient_id).values(**values))
    audit(conn, actor=actor, action="update-patient", subject_type="patient",
          subject_id=patient_id, patient_id=patient_id, detail={"display_name": display_name})
    return False


def provision_gateway(conn: Connection, gateway_id: str, *, patient_id: str, actor: str,
                      cert_subject: str | None = None, cert_fingerprint: str | None = None,
                      reassign: bool = False) -> bool:
    """Create a gateway of ``patient_id`` bound to its client certificate, or update its
    certificate binding; True when it was created. Moving an existing gateway to another
    patient needs ``reassign=True`` (its devices that follow the gateway move with it)."""
    _ident(gateway_id, "gateway id")
    if get_patient(conn, patient_id) is None:
        raise RegistryError(f"unknown patient {patient_id!r}: provision the patient first")
    fingerprint = None if cert_fingerprint is None else normalise_fingerprint(cert_fingerprint)
    if cert_subject is not None and (len(cert_subject) > 512 or "\x00" in cert_subject):
        raise RegistryError("certificate subject: at most 512 characters, no NUL")
    if fingerprint is not None:
        holder = conn.execute(sa.select(gateways.c.id).where(
            gateways.c.cert_fingerprint == fingerprint)).scalar_one_or_none()
        if holder is not None and holder != gateway_id:
            raise RegistryError(f"certificate {fingerprint[:16]}… is already bound to "
                                f"gateway {holder!r}")
    existing = get_gateway(conn, gateway_id)
    detail = {"patient_id": patient_id, "cert_subject": cert_subject,
              "cert_fingerprint": fingerprint}
    if existing is None:
        conn.execute(gateways.insert().values(
            id=gateway_id, patient_id=patient_id, cert_subject=cert_subject,
            cert_fingerprint=fingerprint, status="unknown", auto_provisioned=False,
            created_at=_now()))
        audit(conn, actor=actor, action="provision-gateway", subject_type="gateway",
              subject_id=gateway_id, patient_id=patient_id, detail=detail)
        return True
    if existing.patient_id != patient_id:
        if not reassign:
            raise RegistryError(f"gateway {gateway_id!r} belongs to patient "
                                f"{existing.patient_id!r}; pass reassign to move it")
        # Devices that came with this gateway move with it; those assigned elsewhere stay.
        conn.execute(devices.update().where(
            (devices.c.gateway_id == gateway_id)
            & (devices.c.patient_id == existing.patient_id)).values(patient_id=patient_id))
        audit(conn, actor=actor, action="reassign-gateway", subject_type="gateway",
              subject_id=gateway_id, patient_id=existing.patient_id,
              detail={"from": existing.patient_id, "to": patient_id})
    values: dict[str, Any] = {"patient_id": patient_id, "auto_provisioned": False}
    if cert_subject is not None:
        values["cert_subject"] = cert_subject
    if fingerprint is not None:
        values["cert_fingerprint"] = fingerprint
    conn.execute(gateways.update().where(gateways.c.id == gateway_id).values(**values))
    audit(conn, actor=actor, action="update-gateway", subject_type="gateway",
          subject_id=gateway_id, patient_id=patient_id, detail=detail)
    return False


def assign_device(conn: Connection, device_id: str, *, patient_id: str, actor: str,
                  gateway_id: str | None = None, kind: DeviceKind | None = None,
                  reassign: bool = False) -> bool:
    """Attach a device to a patient (ahead of its first record, or later); True when the
    device row was created. A device of another patient needs ``reassign=True``."""
    _ident(device_id, "device id")
    if get_patient(conn, patient_id) is None:
        raise RegistryError(f"unknown patient {patient_id!r}: provision the patient first")
    if gateway_id is not None:
        gw = get_gateway(conn, gateway_id)
        if gw is None:
            raise RegistryError(f"unknown gateway {gateway_id!r}")
        if gw.patient_id != patient_id:
            raise RegistryError(f"gateway {gateway_id!r} belongs to patient "
                                f"{gw.patient_id!r}, not {patient_id!r}")
    existing = get_device(conn, device_id)
    detail = {"patient_id": patient_id, "gateway_id": gateway_id,
              "kind": None if kind is None else kind.value}
    if existing is None:
        conn.execute(devices.insert().values(
            id=device_id, patient_id=patient_id, gateway_id=gateway_id,
            kind=None if kind is None else kind.value, first_seen=_now()))
        audit(conn, actor=actor, action="assign-device", subject_type="device",
              subject_id=device_id, patient_id=patient_id, detail=detail)
        return True
    if existing.patient_id not in (None, patient_id) and not reassign:
        raise RegistryError(f"device {device_id!r} belongs to patient "
                            f"{existing.patient_id!r}; pass reassign to move it")
    values: dict[str, Any] = {"patient_id": patient_id}
    if gateway_id is not None:
        values["gateway_id"] = gateway_id
    if kind is not None:
        values["kind"] = kind.value
    conn.execute(devices.update().where(devices.c.id == device_id).values(**values))
    audit(conn, actor=actor,
          action="reassign-device" if existing.patient_id not in (None, patient_id)
          else "assign-device",
          subject_type="device", subject_id=device_id, patient_id=patient_id,
          detail=detail | {"from": existing.patient_id})
    return False


#: Auto-provisioned patients (demo mode) are named ``auto-<gateway id>``.
AUTO_PATIENT_PREFIX = "auto-"


def auto_patient_id(gateway_id: str) -> str:
    """The patient an auto-provisioned gateway belongs to (never a provisioned patient's id
    unless somebody provisioned one with the ``auto-`` prefix)."""
    if len(AUTO_PATIENT_PREFIX) + len(gateway_id) <= ID_LEN:
        return AUTO_PATIENT_PREFIX + gateway_id
    return AUTO_PATIENT_PREFIX + hashlib.sha256(gateway_id.encode()).hexdigest()[:32]


def auto_provision_gateway(conn: Connection, gateway_id: str, *, now: dt.datetime,
                           actor: str = "ingest:auto-provision") -> None:
    """Demo only (``auto_provision = true``): a patient ``auto-<gateway id>`` and the
    gateway itself, both flagged ``auto_provisioned``. Safe against concurrent workers."""
    patient_id = auto_patient_id(gateway_id)
    stmt = dialect_insert(conn, patients).values(
        id=patient_id, display_name=f"auto-provisioned for gateway {gateway_id}",
        auto_provisioned=True, created_at=now).on_conflict_do_nothing(
        index_elements=[patients.c.id])
    conn.execute(stmt)
    result = conn.execute(dialect_insert(conn, gateways).values(
        id=gateway_id, patient_id=patient_id, status="unknown", auto_provisioned=True,
        created_at=now).on_conflict_do_nothing(index_elements=[gateways.c.id]))
    if result.rowcount:
        audit(conn, actor=actor, action="auto-provision-gateway", subject_type="gateway",
              subject_id=gateway_id, patient_id=patient_id, at=now)


__all__ = ["AUTO_PATIENT_PREFIX", "DEVICE_INFO_COLUMNS", "Device", "Gateway", "Patient",
           "RegistryError", "assign_device", "auto_patient_id", "auto_provision_gateway",
           "certificate_identity", "get_device", "get_gateway", "get_patient", "list_devices",
           "list_gateways", "list_patients", "normalise_fingerprint", "provision_gateway",
           "provision_patient"]
