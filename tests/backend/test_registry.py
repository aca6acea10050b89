"""The registry: patients, gateways bound to certificates, devices; every change audited."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.backend import registry
from bridge.backend.registry import RegistryError
from bridge.backend.store import Store
from bridge.records import DeviceKind

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open("sqlite://") as s:
        yield s


def test_provisioning_flow_is_audited(store: Store) -> None:
    with store.begin() as conn:
        assert registry.provision_patient(conn, "P-0001", actor="alice", display_name="Demo")
        assert not registry.provision_patient(conn, "P-0001", actor="alice",
                                              display_name="Demo patient")
        assert registry.provision_gateway(conn, "pi-1", patient_id="P-0001", actor="alice",
                                          cert_subject="CN=pi-1",
                                          cert_fingerprint="AB:" * 31 + "AB")
        assert registry.assign_device(conn, "cgm-1", patient_id="P-0001", actor="bob",
                                      gateway_id="pi-1", kind=DeviceKind.CGM)
        gw = registry.get_gateway(conn, "pi-1")
        device = registry.get_device(conn, "cgm-1")
        patients = registry.list_patients(conn)
    assert gw is not None and gw.cert_fingerprint == "ab" * 32 and gw.status == "unknown"
    assert device is not None and (device.patient_id, device.gateway_id, device.kind) == (
        "P-0001", "pi-1", "cgm")
    assert [p.display_name for p in patients] == ["Demo patient"]
    entries = store.audit_entries(patient_id="P-0001")
    assert [(e.actor, e.action, e.subject_id) for e in reversed(entries)] == [
        ("alice", "provision-patient", "P-0001"), ("alice", "update-patient", "P-0001"),
        ("alice", "provision-gateway", "pi-1"), ("bob", "assign-device", "cgm-1")]
    assert all(e.at.tzinfo is dt.UTC for e in entries)


def test_refusals_name_the_problem(store: Store) -> None:
    with store.begin() as conn:
        registry.provision_patient(conn, "P-1", actor="t")
        registry.provision_patient(conn, "P-2", actor="t")
        registry.provision_gateway(conn, "gw-1", patient_id="P-1", actor="t",
                                   cert_fingerprint="11" * 32)
        with pytest.raises(RegistryError, match="unknown patient"):
            registry.provision_gateway(conn, "gw-2", patient_id="P-9", actor="t")
        with pytest.raises(RegistryError, match="already bound to gateway 'gw-1'"):
            registry.provision_gateway(conn, "gw-2", patient_id="P-2", actor="t",
                                       cert_fingerprint="11" * 32)
        with pytest.raises(RegistryError, match="belongs to patient 'P-1'"):
            registry.provision_gateway(conn, "gw-1", patient_id="P-2", actor="t")
        with pytest.raises(RegistryError, match="must be 1-64"):
            registry.provision_patient(conn, "bad id", actor="t")
        with pytest.raises(RegistryError, match="must be 1-64"):
            registry.provision_gateway(conn, "x" * 65, patient_id="P-1", actor="t")
        with pytest.raises(RegistryError, match="SHA-256"):
            registry.provision_gateway(conn, "gw-3", patient_id="P-1", actor="t",
                                       cert_fingerprint="not-hex")
        with pytest.raises(RegistryError, match="belongs to patient 'P-1', not 'P-2'"):
            registry.assign_device(conn, "m-1", patient_id="P-2", actor="t", gateway_id="gw-1")
        with pytest.raises(RegistryError, match="unknown gateway"):
            registry.assign_device(conn, "m-1", patient_id="P-2", actor="t", gateway_id="gw-9")


def test_moving_a_gateway_or_device_needs_reassign(store: Store) -> None:
    with store.begin() as conn:
        for p in ("P-1", "P-2"):
            registry.provision_patient(conn, p, actor="t")
        registry.provision_gateway(conn, "gw-1", patient_id="P-1", actor="t")
        registry.assign_device(conn, "cgm-1", patient_id="P-1", actor="t", gateway_id="gw-1")
        registry.assign_device(conn, "pump-1", patient_id="P-1", actor="t")
        with pytest.raises(RegistryError, match="pass reassign"):
            registry.assign_device(conn, "pump-1", patient_id="P-2", actor="t")
        registry.assign_device(conn, "pump-1", patient_id="P-2", actor="t", reassign=True)
        registry.provision_gateway(conn, "gw-1", patient_id="P-2", actor="t", reassign=True)
        assert {d.id: d.patient_id for d in registry.list_devices(conn)} == {
            "cgm-1": "P-2", "pump-1": "P-2"}
        assert [g.id for g in registry.list_gateways(conn, patient_id="P-2")] == ["gw-1"]
    actions = [e.action for e in store.audit_entries()]
    assert "reassign-gateway" in actions and "reassign-device" in actions


def test_certificate_identity_from_pem(tmp_path: Path) -> None:
    from tests.edge.mosquitto import make_pki

    pki = make_pki(tmp_path, client_cn="pi-home-7")
    pem = pki.client_cert.read_bytes()
    subject, fingerprint, cn = registry.certificate_identity(pem)
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert (subject, cn) == ("CN=pi-home-7", "pi-home-7")
    assert fingerprint == hashlib.sha256(der).hexdigest()
    with pytest.raises(RegistryError, match="not a PEM certificate"):
        registry.certificate_identity(b"hello")


def test_auto_provisioning_is_flagged_and_idempotent(store: Store) -> None:
    with store.begin() as conn:
        registry.auto_provision_gateway(conn, "pi-demo", now=NOW)
        registry.auto_provision_gateway(conn, "pi-demo", now=NOW)
        gw = registry.get_gateway(conn, "pi-demo")
        patient = registry.get_patient(conn, "auto-pi-demo")
    assert gw is not None and gw.auto_provisioned and gw.patient_id == "auto-pi-demo"
    assert patient is not None and patient.auto_provisioned
    assert len(store.audit_entries()) == 1
    long_id = "g" * 64
    assert len(registry.auto_patient_id(long_id)) <= 64
    assert registry.auto_patient_id(long_id) != registry.auto_patient_id("g" * 63 + "h")
    # Provisioning it properly afterwards clears the flag.
    with store.begin() as conn:
        registry.provision_gateway(conn, "pi-demo", patient_id="auto-pi-demo", actor="t")
        gw = registry.get_gateway(conn, "pi-demo")
    assert gw is not None and not gw.auto_provisioned
