"""Checks shared by the resource server tests: FHIR R4 parsing and the HDDT profiles."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B import get_fhir_model_class


def profile_violations(resource: Mapping[str, Any]) -> list[str]:
    """Violations of the HDDT profile constraints read from the FSH (bridge.hddt.profiles)."""
    profiles = importlib.import_module("bridge.hddt.profiles")
    violations: list[str] = profiles.check_resource(dict(resource))
    return violations


def assert_valid(resource: Mapping[str, Any]) -> None:
    """``resource`` parses as FHIR R4(B) and, for every HDDT resource inside (a Bundle's
    entries too), meets its profile."""
    get_fhir_model_class(str(resource["resourceType"])).model_validate(dict(resource))
    inner = [e["resource"] for e in resource.get("entry", [])] if (
        resource["resourceType"] == "Bundle") else [resource]
    for item in inner:
        if item["resourceType"] in ("Observation", "Device", "DeviceMetric"):
            assert profile_violations(item) == [], item
