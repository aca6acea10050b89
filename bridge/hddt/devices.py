"""Store devices → HddtPersonalHealthDevice and HddtSensorTypeAndCalibrationStatus.

Device status (HddtPersonalHealthDevice ``status`` comment, retrieving-data.md "Missing
Values"): ``inactive`` once a newer sensor took over, ``unknown`` when the backend has had no
contact with the device for longer than Delay-From-Real-Time, else ``active``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bridge.hddt.data import DeviceRow
from bridge.hddt.observations import UCUM, device_id, fhir_time, metric_id
from bridge.records import CODINGS, RecordKind

DEVICE_PROFILE = "https://gematik.de/fhir/hddt/StructureDefinition/hddt-personal-health-device"
METRIC_PROFILE = (
    "https://gematik.de/fhir/hddt/StructureDefinition/hddt-sensor-type-and-calibration-status")
SNOMED = "http://snomed.info/sct"
SNOMED_VERSION = "http://snomed.info/sct/11000274103/version/20251115"
MDC = "urn:iso:std:iso:11073:10101"

#: SNOMED CT type per device kind, from hddt-device-type (VS_HddtDeviceType).
DEVICE_TYPES: dict[str, tuple[str, str]] = {
    "blood-glucose-meter": ("337414009", "Blood glucose meter (physical object)"),
    "cgm": ("700585005", "Invasive interstitial-fluid glucose monitoring system "
                         "(physical object)"),
    "insulin-pump": ("702203005", "Invasive interstitial fluid glucose monitoring/insulin "
                                  "infusion system (physical object)"),
}
#: Calibration states of a metric, in id order.
CALIBRATION_STATES = ("calibrated", "calibration-required", "not-calibrated")


def device_kind(device: DeviceRow) -> str:
    """The device's kind, from the registry or else from what it recorded."""
    if device.kind in DEVICE_TYPES:
        return device.kind
    if device.first_cgm is not None:
        return "cgm"
    if device.first_bg is not None:
        return "blood-glucose-meter"
    return "insulin-pump"


def device_status(device: DeviceRow, *, retired: bool, now: dt.datetime,
                  delay_from_real_time: dt.timedelta) -> str:
    if retired:
        return "inactive"
    if device.last_contact is None or now - device.last_contact > delay_from_real_time:
        return "unknown"
    return "active"


def device_resource(device: DeviceRow, *, status: str) -> dict[str, Any]:
    """The device as HddtPersonalHealthDevice (no patient element: the DiGA must not learn
    who the patient is, security-and-privacy.md)."""
    code, display = DEVICE_TYPES[device_kind(device)]
    out: dict[str, Any] = {
        "resourceType": "Device", "id": device_id(device),
        "meta": {"profile": [DEVICE_PROFILE]},
        "status": status,
    }
    name = device.model or device.manufacturer
    if name:
        out["deviceName"] = [{"name": name, "type": "user-friendly-name"}]
    if device.manufacturer:
        out["manufacturer"] = device.manufacturer
    if device.serial_number:
        out["serialNumber"] = device.serial_number
    if device.model:
        out["modelNumber"] = device.model
    out["type"] = {"coding": [{"system": SNOMED, "version": SNOMED_VERSION, "code": code,
                               "display": display}]}
    return out


def metric_resource(device: DeviceRow, state: str,
                    calibrated_since: dt.datetime | None) -> dict[str, Any]:
    """The sensor of ``device`` in calibration ``state`` as
    HddtSensorTypeAndCalibrationStatus."""
    kind = RecordKind.CGM_GLUCOSE if device_kind(device) == "cgm" else RecordKind.BLOOD_GLUCOSE
    coding = CODINGS[kind]
    calibration: dict[str, Any] = {"type": "unspecified", "state": state}
    if calibrated_since is not None:
        calibration["time"] = fhir_time(calibrated_since)
    return {
        "resourceType": "DeviceMetric", "id": metric_id(device, state),
        "meta": {"profile": [METRIC_PROFILE]},
        "type": {"coding": [{"system": MDC, "code": str(coding.mdc),
                             "display": coding.mdc_name}]},
        "unit": {"coding": [{"system": UCUM, "code": "mg/dL", "display": "mg/dL"}]},
        "source": {"reference": f"Device/{device_id(device)}"},
        "operationalStatus": "on",
        "category": "measurement",
        "calibration": [calibration],
    }
