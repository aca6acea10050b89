"""SMART scope syntax and the scopes this Device Data Recorder supports (HDDT smart-scopes.md).

A scope is one of ``patient/Observation.rs?code:in=<ValueSet URL>`` (one per MIV),
``patient/Device.rs`` or ``patient/DeviceMetric.rs``. The authorization server refuses any
other spelling (pairing.md "Consent for Fine-Grained Access": a scope deviating from the
SMART syntax MUST be rejected) and any value set that is not one it serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.hddt.access import (
    KNOWN_VALUE_SETS,
    MIV_BLOOD_GLUCOSE,
    MIV_CONTINUOUS_GLUCOSE,
    PROJECT_INSULIN_DELIVERY,
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
    observation_scope,
    observation_value_set,
)

#: Every scope the server publishes in ``scopes_supported``, in a stable order.
SUPPORTED_SCOPES: tuple[str, ...] = (
    observation_scope(MIV_BLOOD_GLUCOSE),
    observation_scope(MIV_CONTINUOUS_GLUCOSE),
    observation_scope(PROJECT_INSULIN_DELIVERY),
    SCOPE_DEVICE,
    SCOPE_DEVICE_METRIC,
)

#: What the consent screen shows for each scope (HDDT pairing.md: human-readable).
SCOPE_LABELS: dict[str, str] = {
    observation_scope(MIV_BLOOD_GLUCOSE): "Blood glucose measurements (glucose meter)",
    observation_scope(MIV_CONTINUOUS_GLUCOSE):
        "Continuous glucose measurements (CGM sensor values)",
    observation_scope(PROJECT_INSULIN_DELIVERY):
        "Insulin delivery (pump boluses and basal rates; project extension, not an HDDT MIV)",
    SCOPE_DEVICE: "The devices that took these measurements (name, type, serial number)",
    SCOPE_DEVICE_METRIC: "Sensor type and calibration state of these devices",
}


def is_valid_scope(scope: str) -> bool:
    """Whether ``scope`` is spelt as a supported SMART scope of this server."""
    if scope in (SCOPE_DEVICE, SCOPE_DEVICE_METRIC):
        return True
    value_set = observation_value_set(scope)
    return value_set is not None and value_set in KNOWN_VALUE_SETS


def parse_scope(text: str | None) -> list[str] | None:
    """The scopes of a space-delimited ``scope`` parameter in order, without repeats, or None
    when one of them is not a supported SMART scope (or none is given)."""
    if not text:
        return None
    scopes = list(dict.fromkeys(text.split(" ")))
    if any(not s or not is_valid_scope(s) for s in scopes):
        return None
    return scopes


def scope_text(scopes: Iterable[str]) -> str:
    """The space-delimited ``scope`` value, in the server's published order."""
    wanted = set(scopes)
    ordered = [s for s in SUPPORTED_SCOPES if s in wanted]
    return " ".join(ordered + sorted(wanted - set(ordered)))
