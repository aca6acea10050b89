"""Insulin delivery as FHIR Observations: a project extension, NOT an HDDT v1 MIV.

HDDT 1.0.1 defines no Mandatory Interoperable Value for insulin pumps. So that DiGAs for pump
users can read pump data through the same interface today, the bridge exports the pump
records of ``insulin_events`` as Observations in the style of the HL7 Personal Health Device
IG (IEEE 11073-10101 MDC codes, category ``phd``, UCUM units), coded in a project-defined
value set, :data:`INSULIN_VALUE_SET` (URL :data:`bridge.hddt.access.PROJECT_INSULIN_DELIVERY`),
and granted only by its own scope :data:`INSULIN_SCOPE`. It is kept apart from the normative
MIVs: no HDDT profile is claimed, the codes are not in any MIV value set, and a grant of a
glucose MIV never includes it. docs/hddt-insulin-extension.md describes it for DiGA makers.

Codes: the MDC codes of :data:`bridge.records.CODINGS` (IEEE 11073-10419 terms, UNCONFIRMED
against the standard's tables, see docs/protocols.md); where the project table has no MDC
code (total daily insulin, therapy and operational state, bolus details) a code of the
project code system :data:`INSULIN_CODE_SYSTEM`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from bridge.hddt.access import PROJECT_INSULIN_DELIVERY, observation_scope
from bridge.hddt.data import fhir_device_key
from bridge.hddt.errors import HddtError
from bridge.protocols.mdc import Partition, Scada, mdc
from bridge.records import (
    CODINGS,
    BasalRateChange,
    BolusPhase,
    InsulinBolus,
    OperationalStateChange,
    RecordError,
    RecordKind,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyStateChange,
    TotalDailyInsulin,
    record_from_json,
)

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
PHD_CATEGORIES = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
#: Project code system for what the project's MDC table does not code.
INSULIN_CODE_SYSTEM = "https://hddt-bridge.github.io/fhir/CodeSystem/hddt-bridge-insulin"
#: The scope that grants the extension (never part of an HDDT MIV grant).
INSULIN_SCOPE = observation_scope(PROJECT_INSULIN_DELIVERY)

#: Kinds of ``insulin_events`` rows this module exports.
INSULIN_KINDS: frozenset[RecordKind] = frozenset({
    RecordKind.INSULIN_BOLUS, RecordKind.BASAL_RATE_CHANGE, RecordKind.TEMP_BASAL_START,
    RecordKind.TEMP_BASAL_END, RecordKind.TOTAL_DAILY_INSULIN, RecordKind.RESERVOIR_LEVEL,
    RecordKind.THERAPY_STATE_CHANGE, RecordKind.OPERATIONAL_STATE_CHANGE,
})


def _mdc_coding(kind: RecordKind) -> dict[str, str]:
    coding = CODINGS[kind]
    assert coding.mdc is not None and coding.mdc_name is not None
    return {"system": MDC, "code": str(coding.mdc), "display": coding.mdc_name}


def _project(code: str, display: str) -> dict[str, str]:
    return {"system": INSULIN_CODE_SYSTEM, "code": code, "display": display}


BOLUS = _mdc_coding(RecordKind.INSULIN_BOLUS)
BASAL = _mdc_coding(RecordKind.BASAL_RATE_CHANGE)
TEMP_BASAL = _mdc_coding(RecordKind.TEMP_BASAL_START)
RESERVOIR = _mdc_coding(RecordKind.RESERVOIR_LEVEL)
BOLUS_FAST = {"system": MDC, "code": str(mdc(Partition.SCADA, Scada.MDC_INS_BOLUS_FAST)),
              "display": "MDC_INS_BOLUS_FAST"}
BOLUS_EXTENDED = {"system": MDC, "code": str(mdc(Partition.SCADA, Scada.MDC_INS_BOLUS_EXT)),
                  "display": "MDC_INS_BOLUS_EXT"}
TOTAL_DAILY = _project("total-daily-insulin", "Total daily insulin")
TOTAL_DAILY_BOLUS = _project("total-daily-bolus", "Bolus part of total daily insulin")
TOTAL_DAILY_BASAL = _project("total-daily-basal", "Basal part of total daily insulin")
TEMP_BASAL_RELATIVE = _project("temp-basal-relative",
                               "Temporary basal rate relative to the programmed rate")
TEMP_BASAL_DURATION = _project("temp-basal-duration", "Duration of a temporary basal rate")
BOLUS_TYPE = _project("bolus-type", "Bolus type (fast, extended, multiwave)")
BOLUS_PHASE = _project("bolus-phase", "Bolus phase (programmed or delivered)")
BOLUS_DURATION = _project("bolus-extended-duration", "Duration of the extended part")
THERAPY_STATE = _project("therapy-state", "Pump therapy state (run, pause, stop)")
OPERATIONAL_STATE = _project("operational-state", "Pump operational state")
CANCELED = _project("canceled", "Ended early by the user")

#: The project value set of the extension, as a FHIR ValueSet resource.
INSULIN_VALUE_SET: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": PROJECT_INSULIN_DELIVERY.rsplit("/", 1)[-1],
    "url": PROJECT_INSULIN_DELIVERY,
    "version": "1.0.0",
    "name": "HddtBridgeInsulinDelivery",
    "title": "hddt-bridge insulin delivery (project extension, not an HDDT MIV)",
    "status": "active",
    "experimental": True,
    "publisher": "hddt-bridge",
    "description": (
        "Codes of the insulin pump Observations hddt-bridge exports beside the HDDT 1.0.1 "
        "MIVs: bolus, basal rate, temporary basal rate, reservoir level (IEEE 11073-10101 "
        "MDC) and total daily insulin and pump states (project codes). Not a gematik MIV; "
        "granted by its own scope."),
    "compose": {"include": [
        {"system": MDC, "concept": [
            {"code": c["code"], "display": c["display"]}
            for c in (BOLUS, BASAL, TEMP_BASAL, RESERVOIR)]},
        {"system": INSULIN_CODE_SYSTEM, "concept": [
            {"code": c["code"], "display": c["display"]}
            for c in (TOTAL_DAILY, THERAPY_STATE, OPERATIONAL_STATE)]},
    ]},
}
#: The Observation codes of the value set, as (system, code) pairs.
INSULIN_CODES: frozenset[tuple[str, str]] = frozenset(
    (inc["system"], c["code"]) for inc in INSULIN_VALUE_SET["compose"]["include"]
    for c in inc["concept"])


class InsulinRowError(HddtError):
    """An ``insulin_events`` row that cannot be exported; ``row_id`` names it."""

    def __init__(self, message: str, row_id: Any) -> None:
        self.row_id = row_id
        super().__init__(f"insulin_events row {row_id}: {message}")


def insulin_id(row_id: int) -> str:
    """The Observation's logical id for an ``insulin_events`` row."""
    return f"ins-{row_id}"


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _quantity(value: float, unit: str) -> dict[str, Any]:
    number: float | int = int(value) if float(value).is_integer() else round(value, 3)
    return {"value": number, "unit": unit, "system": UCUM, "code": unit}


def _component(coding: Mapping[str, str], **value: Any) -> dict[str, Any]:
    return {"code": {"coding": [dict(coding)]}, **value}


def insulin_observation(row: Mapping[str, Any], *, base_url: str,
                        device_reference: str | None = None) -> dict[str, Any]:
    """An ``insulin_events`` row (columns of :data:`bridge.backend.store.insulin_events`)
    as a FHIR R4 Observation (plain dict).

    ``base_url`` (the FHIR base of this server) becomes ``meta.source``. ``device`` refers to
    the pump's Device as the resource server names it (``Device/dev-<key>``) unless
    ``device_reference`` is given. Raises :class:`InsulinRowError` for a row of another kind
    or with a record that does not read back.
    """
    row_id = row.get("id")
    if not isinstance(row_id, int):
        raise InsulinRowError("the row has no integer id", row_id)
    kind_text = row.get("kind")
    try:
        kind = RecordKind(str(kind_text))
    except ValueError:
        raise InsulinRowError(f"unknown kind {kind_text!r}", row_id) from None
    if kind not in INSULIN_KINDS:
        raise InsulinRowError(f"kind {kind.value} is not insulin delivery", row_id)
    payload = row.get("record")
    try:
        if isinstance(payload, str | bytes):
            payload = json.loads(payload)
        if not isinstance(payload, Mapping):
            raise RecordError("a record is a JSON object")
        record = record_from_json(payload)
    except (RecordError, ValueError) as exc:
        raise InsulinRowError(f"record does not read back: {exc}", row_id) from None
    if record.KIND is not kind:
        raise InsulinRowError(f"record kind {record.KIND.value} differs from row kind "
                              f"{kind.value}", row_id)
    time: dt.datetime = row["time"]
    obs: dict[str, Any] = {"resourceType": "Observation", "id": insulin_id(row_id)}
    meta: dict[str, Any] = {"source": base_url}
    if row.get("inserted_at") is not None:
        meta["lastUpdated"] = _time(row["inserted_at"])
    obs["meta"] = meta
    obs["status"] = "final"
    obs["category"] = [{"coding": [{"system": PHD_CATEGORIES, "code": "phd",
                                    "display": "PHD generated Observation"}]}]
    effective: dict[str, Any] = {"effectiveDateTime": _time(time)}
    value: dict[str, Any] = {}
    components: list[dict[str, Any]] = []

    if isinstance(record, InsulinBolus):
        code = BOLUS
        value = {"valueQuantity": _quantity(record.total_iu, "[iU]")}
        if record.phase is BolusPhase.PROGRAMMED:
            obs["status"] = "preliminary"  # programmed, not (yet) delivered
        components = [
            _component(BOLUS_FAST, valueQuantity=_quantity(record.fast_iu, "[iU]")),
            _component(BOLUS_EXTENDED, valueQuantity=_quantity(record.extended_iu, "[iU]")),
            _component(BOLUS_TYPE, valueCodeableConcept={"coding": [
                _project(record.bolus_type.value, record.bolus_type.value)]}),
            _component(BOLUS_PHASE, valueCodeableConcept={"coding": [
                _project(record.phase.value, record.phase.value)]}),
        ]
        if record.extended_duration_min:
            components.append(_component(BOLUS_DURATION, valueQuantity=_quantity(
                record.extended_duration_min, "min")))
            effective = {"effectivePeriod": {"start": _time(time), "end": _time(
                time + dt.timedelta(minutes=record.extended_duration_min))}}
    elif isinstance(record, BasalRateChange):
        code = BASAL
        value = {"valueQuantity": _quantity(record.rate_iu_per_h, "[iU]/h")}
    elif isinstance(record, TempBasalStart):
        code = TEMP_BASAL
        relative = record.temp_basal_type is TempBasalType.RELATIVE
        value = {"valueQuantity": _quantity(record.value, "%" if relative else "[iU]/h")}
        if relative:
            components.append(_component(TEMP_BASAL_RELATIVE, valueBoolean=True))
        components.append(_component(TEMP_BASAL_DURATION, valueQuantity=_quantity(
            record.duration_min, "min")))
        effective = {"effectivePeriod": {"start": _time(time), "end": _time(
            time + dt.timedelta(minutes=record.duration_min))}}
    elif isinstance(record, TempBasalEnd):
        code = TEMP_BASAL
        components = [
            _component(TEMP_BASAL_DURATION, valueQuantity=_quantity(
                record.effective_duration_min, "min")),
            _component(CANCELED, valueBoolean=record.canceled)]
        effective = {"effectivePeriod": {"start": _time(
            time - dt.timedelta(minutes=record.effective_duration_min)), "end": _time(time)}}
    elif isinstance(record, TotalDailyInsulin):
        code = TOTAL_DAILY
        value = {"valueQuantity": _quantity(record.total_iu, "[iU]")}
        components = [
            _component(TOTAL_DAILY_BOLUS, valueQuantity=_quantity(record.bolus_iu, "[iU]")),
            _component(TOTAL_DAILY_BASAL, valueQuantity=_quantity(record.basal_iu, "[iU]"))]
        # The pump's day (its local calendar day), as a FHIR date period.
        effective = {"effectivePeriod": {"start": record.day.isoformat(),
                                         "end": record.day.isoformat()}}
    elif isinstance(record, ReservoirLevel):
        code = RESERVOIR
        value = {"valueQuantity": _quantity(record.remaining_iu, "[iU]")}
    elif isinstance(record, TherapyStateChange):
        code = THERAPY_STATE
        value = {"valueCodeableConcept": {"coding": [
            _project(record.new_state.value, record.new_state.value)]}}
    else:
        assert isinstance(record, OperationalStateChange)
        code = OPERATIONAL_STATE
        value = {"valueCodeableConcept": {"coding": [
            _project(record.new_state.value, record.new_state.value)]}}

    obs["code"] = {"coding": [dict(code)]}
    obs.update(effective)
    obs.update(value)
    if device_reference is None:
        device_reference = f"Device/dev-{fhir_device_key(str(row['device_id']))}"
    obs["device"] = {"reference": device_reference}
    if components:
        obs["component"] = components
    return obs
