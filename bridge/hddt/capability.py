"""The CapabilityStatement at ``/metadata``: exactly what this server supports
(fhir-api-metadata.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bridge.hddt.devices import DEVICE_PROFILE, METRIC_PROFILE
from bridge.hddt.observations import BG_PROFILE, CGM_PROFILE

SUMMARY_OPERATION = "https://gematik.de/fhir/hddt/OperationDefinition/hddt-cgm-summary-operation"
SUMMARY_BUNDLE_PROFILE = "https://gematik.de/fhir/hddt/StructureDefinition/hddt-cgm-summary"
_SEARCH = "http://hl7.org/fhir/SearchParameter/"


def _param(name: str, kind: str, definition: str, doc: str) -> dict[str, Any]:
    return {"name": name, "definition": _SEARCH + definition, "type": kind,
            "documentation": doc}


def capability_statement(*, base_url: str, software_version: str,
                         published: dt.datetime) -> dict[str, Any]:
    """The server's CapabilityStatement (plain dict)."""
    read_search = [{"code": "read"}, {"code": "search-type"}]
    observation = {
        "type": "Observation", "profile": "http://hl7.org/fhir/StructureDefinition/Observation",
        "supportedProfile": [BG_PROFILE, CGM_PROFILE],
        "interaction": read_search, "versioning": "no-version", "readHistory": False,
        "searchInclude": ["Observation:device", "DeviceMetric:source"],
        "searchParam": [
            _param("code", "token", "clinical-code",
                   "system|code, |code or code; comma: or. The granted MIV scopes always "
                   "apply as well."),
            _param("date", "date", "clinical-date",
                   "Prefixes eq ne gt lt ge le sa eb ap, partial dates, ranges by "
                   "repetition."),
            _param("value-quantity", "quantity", "Observation-value-quantity",
                   "Blood glucose only: [prefix]number[|system|code], mg/dL or mmol/L "
                   "(also accepted as valueQuantity)."),
            _param("_id", "token", "Resource-id", "Logical id; comma: or."),
            _param("_lastUpdated", "date", "Resource-lastUpdated", "When the data arrived."),
        ],
        "operation": [{"name": "hddt-cgm-summary", "definition": SUMMARY_OPERATION}],
    }
    device = {
        "type": "Device", "profile": "http://hl7.org/fhir/StructureDefinition/Device",
        "supportedProfile": [DEVICE_PROFILE], "interaction": read_search,
        "versioning": "no-version",
        "searchParam": [
            _param("device-name", "string", "Device-device-name", ":exact and :contains too."),
            _param("type", "token", "Device-type", "SNOMED CT device type."),
            _param("manufacturer", "string", "Device-manufacturer", "Starts with."),
            _param("_id", "token", "Resource-id", "Logical id; comma: or."),
        ],
    }
    metric = {
        "type": "DeviceMetric", "profile": "http://hl7.org/fhir/StructureDefinition/DeviceMetric",
        "supportedProfile": [METRIC_PROFILE], "interaction": read_search,
        "versioning": "no-version", "searchInclude": ["DeviceMetric:source"],
        "searchParam": [
            _param("source", "reference", "DeviceMetric-source", "Device/<id> or <id>."),
            _param("type", "token", "DeviceMetric-type", "MDC sensor type."),
            _param("_id", "token", "Resource-id", "Logical id; comma: or."),
        ],
    }
    bundle = {"type": "Bundle", "supportedProfile": [SUMMARY_BUNDLE_PROFILE]}
    return {
        "resourceType": "CapabilityStatement", "status": "active",
        "date": published.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "publisher": "hddt-bridge", "kind": "instance",
        "software": {"name": "hddt-bridge", "version": software_version},
        "implementation": {"description": "HDDT resource server of hddt-bridge",
                           "url": base_url},
        "fhirVersion": "4.0.1", "format": ["json", "xml"],
        "rest": [{
            "mode": "server",
            "documentation": "Results: _count (page size), _sort=date|-date (Observation); "
                             "next/previous links are keyset cursors that stay stable while "
                             "data arrives. Read-only: no create, update or delete.",
            "security": {"cors": False, "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "OAuth"}]}],
                "description": "OAuth2 bearer tokens of the Device Data Recorder's "
                               "authorization server over mutual TLS (RFC 8705)."},
            "resource": [observation, device, metric, bundle],
        }],
    }
