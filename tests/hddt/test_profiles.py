"""The FSH reader, the derived constraint table and the profile checker."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from bridge.hddt import fsh
from bridge.hddt.profiles import (
    TABLE_PATH,
    check_resource,
    example_instances,
    generate_table,
    load_table,
    main,
    unchecked,
)

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
HDDT_FSH = REFERENCE / "hddt-spec" / "input" / "fsh"
CGM_FSH = REFERENCE / "hl7-cgm-ig" / "input" / "fsh"
needs_reference = pytest.mark.skipif(not HDDT_FSH.is_dir() or not CGM_FSH.is_dir(),
                                     reason="the reference FSH sources are not beside the "
                                            "checkout")

SD = "https://gematik.de/fhir/hddt/StructureDefinition/"
BG = SD + "hddt-blood-glucose-measurement"
CGM = SD + "hddt-continuous-glucose-measurement"
PHD = SD + "hddt-personal-health-device"
METRIC = SD + "hddt-sensor-type-and-calibration-status"
TIR = "http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-summary-times-in-ranges"


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# --- the table ----------------------------------------------------------------------------------

@needs_reference
def test_committed_table_is_what_the_fsh_sources_give() -> None:
    assert generate_table(HDDT_FSH, CGM_FSH) == load_table(TABLE_PATH)


def test_table_covers_the_profiles_and_the_miv_value_sets() -> None:
    table = load_table()
    names = {p["name"] for p in table["profiles"].values()}
    assert {"HddtBloodGlucoseMeasurement", "HddtContinuousGlucoseMeasurement",
            "HddtPersonalHealthDevice", "HddtSensorTypeAndCalibrationStatus",
            "HddtCgmSummary", "CGMSummaryTimesInRanges", "CGMSummaryObservation"} <= names
    codes = table["value_sets"]
    assert ["http://loinc.org", "99504-3"] in codes[
        "https://gematik.de/fhir/hddt/ValueSet/hddt-miv-continuous-glucose-measurement"]
    assert len(codes["https://gematik.de/fhir/hddt/ValueSet/"
                     "hddt-miv-blood-glucose-measurement"]) == 6
    assert ["http://snomed.info/sct", "700585005"] in codes[
        "https://gematik.de/fhir/hddt/ValueSet/hddt-device-type"]
    assert not any(label.startswith("/") for label in table["generated_from"])


def test_unchecked_constraints_are_listed() -> None:
    gaps = unchecked()
    assert any("obeys device-definition-reference-check-1" in g
               for g in gaps["HddtPersonalHealthDevice"])
    assert any("ucum-units" in g for g in gaps["HddtBloodGlucoseMeasurement"])
    assert any("resolve().code" in g for g in gaps["CGMSummaryObservation"])


def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fsh_dir = tmp_path / "fsh"
    fsh_dir.mkdir()
    (fsh_dir / "p.fsh").write_text(
        "Profile: HddtBloodGlucoseMeasurement\nParent: Observation\n"
        "Id: hddt-blood-glucose-measurement\n* device 1..1\n", encoding="utf-8")
    out = tmp_path / "table.json"
    assert main(["--generate", str(fsh_dir), "--output", str(out)]) == 0
    table = json.loads(out.read_text(encoding="utf-8"))
    assert table["profiles"][BG]["rules"] == [
        {"kind": "card", "path": "device", "min": 1, "max": "1"}]
    assert "1 profiles, 1 rules" in capsys.readouterr().out
    (fsh_dir / "bad.fsh").write_text(
        "Profile: HddtPersonalHealthDevice\nParent: Device\n* type ~~ odd\n", encoding="utf-8")
    assert main(["--generate", str(fsh_dir), "--output", str(out)]) == 1
    assert "bad.fsh:3: rule form not understood" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--generate", str(tmp_path / "missing")])


# --- the reader ---------------------------------------------------------------------------------

def read_one(tmp_path: Path, text: str, name: str = "P") -> list[fsh.Rule]:
    path = tmp_path / "x.fsh"
    path.write_text(text, encoding="utf-8")
    entities = fsh.read_entities([path])
    aliases = fsh.read_aliases(entities)
    rule_sets = {e.name: e for e in entities if e.keyword == "RuleSet"}
    entity = next(e for e in entities if e.name == name)
    return fsh.expand_rules(entity, rule_sets, aliases)


def test_reader_rule_forms(tmp_path: Path) -> None:
    rules = read_one(tmp_path, '''Alias: $LNC = http://loinc.org
Alias: $vs = https://example.org/ValueSet/v  // a comment after a URL
RuleSet: Percent
* valueQuantity 1..1 MS
* valueQuantity = '%' "%"
Profile: P
Parent: Observation
Description: """
Two lines of text
with a * star"""
* ^status = #active
* code from $vs (required)
* code = $LNC#1234-5 "Some code"
* status = #final (exactly)
* effective[x] only Period
* device only Reference(A or B)
* effectivePeriod 1..1 MS
  * start 1..
    * ^short = "ignored"
* component ^slicing.discriminator.path = "code"
* component contains
    low 1..1 MS and
    high 0..1
* component[low]
  * insert Percent
* obeys inv-1
''')
    got = [(r.kind, r.path, r.data) for r in rules]
    assert got == [
        ("binding", "code", {"value_set": "https://example.org/ValueSet/v",
                             "strength": "required"}),
        ("fixed", "code", {"value": {"type": "coding", "system": "http://loinc.org",
                                     "code": "1234-5", "display": "Some code"},
                           "exactly": False}),
        ("fixed", "status", {"value": {"type": "code", "code": "final"}, "exactly": True}),
        ("only", "effective[x]", {"types": ["Period"], "targets": []}),
        ("only", "device", {"types": ["Reference"], "targets": ["A", "B"]}),
        ("card", "effectivePeriod", {"min": 1, "max": "1"}),
        ("ms", "effectivePeriod", {}),
        ("card", "effectivePeriod.start", {"min": 1, "max": "*"}),
        ("discriminator", "component", {"discriminator": "code"}),
        ("contains", "component", {"slices": [
            {"name": "low", "min": 1, "max": "1", "ms": True},
            {"name": "high", "min": 0, "max": "1", "ms": False}]}),
        ("card", "component[low].valueQuantity", {"min": 1, "max": "1"}),
        ("ms", "component[low].valueQuantity", {}),
        ("fixed", "component[low].valueQuantity", {
            "value": {"type": "quantity", "system": "http://unitsofmeasure.org", "code": "%",
                      "unit": "%"}, "exactly": False}),
        ("obeys", "", {"invariants": ["inv-1"]}),
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ('"a \\"quoted\\" text"', {"type": "string", "value": 'a "quoted" text'}),
    ("30 'mg/dL' \"mg/dl\"", {"type": "quantity", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL", "value": 30, "unit": "mg/dl"}),
    ("$sv#700585005", {"type": "coding", "system": "http://snomed.info/sct",
                       "version": "http://snomed.info/sct/1/version/2", "code": "700585005"}),
    ("#<", {"type": "code", "code": "<"}),
    ("60000", {"type": "number", "value": 60000}),
    ("2.5", {"type": "number", "value": 2.5}),
    ("false", {"type": "boolean", "value": False}),
    ("Reference(Example-X)", {"type": "reference", "target": "Example-X"}),
    ("SomeInline", {"type": "name", "name": "SomeInline"}),
])
def test_reader_values(text: str, expected: dict[str, Any]) -> None:
    aliases = {"$sv": "http://snomed.info/sct|http://snomed.info/sct/1/version/2"}
    assert fsh.parse_value(text, aliases) == expected


def test_reader_errors_name_the_place(tmp_path: Path) -> None:
    with pytest.raises(fsh.FshError, match=r"x\.fsh:3: unknown rule set 'Nope'"):
        read_one(tmp_path, "Profile: P\nParent: Observation\n* insert Nope\n")
    with pytest.raises(fsh.FshError, match=r"x\.fsh:3: not a FSH value"):
        read_one(tmp_path, "Profile: P\nParent: Observation\n* code = (((\n")
    with pytest.raises(fsh.FshError, match=r"x\.fsh:1: unexpected text"):
        read_one(tmp_path, "stray words\nProfile: P\n")


# --- the spec's own examples ----------------------------------------------------------------------

@needs_reference
def test_the_spec_examples_parse_and_conform() -> None:
    examples = example_instances(HDDT_FSH, CGM_FSH)
    profiles = {p for e in examples.values() for p in e.get("meta", {}).get("profile", [])}
    assert {BG, CGM, PHD, METRIC, SD + "hddt-cgm-summary"} <= profiles
    for name, resource in examples.items():
        validate(resource)
        assert check_resource(resource) == [], name
    bundle = examples["example-cgm-summary-bundle"]
    assert len(bundle["entry"]) == 9
    tir = bundle["entry"][3]["resource"]
    assert tir["meta"]["profile"] == [TIR]
    assert [c["valueQuantity"]["value"] for c in tir["component"]] == [3, 8, 65, 20, 4]


@needs_reference
def test_broken_spec_examples_fail_with_the_specific_violation() -> None:
    examples = example_instances(HDDT_FSH, CGM_FSH)
    cgm = copy.deepcopy(examples["Example-CGM-Series-1"])
    del cgm["effectivePeriod"]["end"]
    assert check_resource(cgm) == [
        "HddtContinuousGlucoseMeasurement: Observation.effectivePeriod.end: 0 found, "
        "cardinality 1..1"]
    bundle = copy.deepcopy(examples["example-cgm-summary-bundle"])
    del bundle["entry"][3]["resource"]["component"][1]
    assert check_resource(bundle) == [
        "CGMSummaryTimesInRanges: Bundle.entry[3].resource.component[timeInLow]: 0 found, "
        "cardinality 1..1"]


# --- hand-made resources (no reference folder needed) -------------------------------------------

def bg() -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "bg-1", "meta": {"profile": [BG]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "41653-7"}]},
        "effectiveDateTime": "2027-07-01T08:30:00Z",
        "valueQuantity": {"value": 112, "unit": "mg/dl", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
        "device": {"reference": "DeviceMetric/m-1"},
    }


def cgm() -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "cgm-1", "meta": {"profile": [CGM]},
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "effectivePeriod": {"start": "2027-07-01T08:00:00Z", "end": "2027-07-01T09:00:00Z"},
        "valueSampledData": {
            "origin": {"value": 0, "unit": "mg/dl", "system": "http://unitsofmeasure.org",
                       "code": "mg/dL"},
            "period": 300000, "dimensions": 1, "lowerLimit": 40, "upperLimit": 400,
            "data": "101 104 L 99"},
        "device": {"reference": "https://bridge.example/fhir/Device/d-1"},
    }


def device() -> dict[str, Any]:
    return {
        "resourceType": "Device", "id": "d-1", "meta": {"profile": [PHD]},
        "status": "unknown", "serialNumber": "CE5C518AD6",
        "deviceName": [{"name": "Virtual CGM", "type": "user-friendly-name"}],
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "700585005"}]},
    }


def metric() -> dict[str, Any]:
    return {
        "resourceType": "DeviceMetric", "id": "m-1", "meta": {"profile": [METRIC]},
        "type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "160212"}]},
        "unit": {"coding": [{"system": "http://unitsofmeasure.org", "code": "mg/dL"}]},
        "source": {"reference": "Device/d-1"}, "category": "measurement",
        "calibration": [{"type": "gain", "state": "calibrated"}],
    }


@pytest.mark.parametrize("make", [bg, cgm, device, metric])
def test_hand_made_resources_conform(make: Any) -> None:
    resource = make()
    validate(resource)
    assert check_resource(resource) == []


def broken(make: Any, change: Any) -> dict[str, Any]:
    resource = make()
    change(resource)
    return dict(resource)


@pytest.mark.parametrize(("resource", "violation"), [
    (broken(bg, lambda r: r["code"]["coding"][0].update(code="99504-3")),
     "HddtBloodGlucoseMeasurement: Observation.code: [('http://loinc.org', '99504-3')] not "
     "in value set https://gematik.de/fhir/hddt/ValueSet/hddt-miv-blood-glucose-measurement "
     "(required binding)"),
    (broken(bg, lambda r: r["code"]["coding"][0].update(system="http://snomed.info/sct")),
     "not in value set https://gematik.de/fhir/hddt/ValueSet/hddt-miv-blood-glucose"),
    (broken(bg, lambda r: r.pop("device")),
     "HddtBloodGlucoseMeasurement: Observation.device: 0 found, cardinality 1..1"),
    (broken(bg, lambda r: r.update(device={"reference": "Patient/p-1"})),
     "HddtBloodGlucoseMeasurement: Observation.device: reference to Patient not allowed "
     "(only Device or DeviceMetric)"),
    (broken(bg, lambda r: r["valueQuantity"].update(system="http://example.org/units")),
     "HddtBloodGlucoseMeasurement: Observation.valueQuantity.system: fixed value "
     "'http://unitsofmeasure.org' expected, found \"http://example.org/units\""),
    (broken(bg, lambda r: r["valueQuantity"].pop("value")),
     "HddtBloodGlucoseMeasurement: Observation.valueQuantity.value: 0 found, cardinality 1..1"),
    (broken(bg, lambda r: r.update(effectivePeriod={"start": "2027-07-01"})
            or r.pop("effectiveDateTime")),
     "HddtBloodGlucoseMeasurement: Observation.effectivePeriod: type Period not allowed "
     "(only dateTime)"),
    (broken(bg, lambda r: r.pop("effectiveDateTime")),
     "HddtBloodGlucoseMeasurement: Observation.effective[x]: 0 found, cardinality 1..1"),
    (broken(cgm, lambda r: r["effectivePeriod"].pop("start")),
     "HddtContinuousGlucoseMeasurement: Observation.effectivePeriod.start: 0 found, "
     "cardinality 1..1"),
    (broken(cgm, lambda r: r["valueSampledData"]["origin"].pop("code")),
     "HddtContinuousGlucoseMeasurement: Observation.valueSampledData.origin.code: 0 found, "
     "cardinality 1..1"),
    (broken(cgm, lambda r: r["valueSampledData"].pop("data")),
     "HddtContinuousGlucoseMeasurement: Observation.valueSampledData.data: 0 found, "
     "cardinality 1..*"),
    (broken(cgm, lambda r: r.update(valueQuantity={"value": 1})
            or r.pop("valueSampledData")),
     "HddtContinuousGlucoseMeasurement: Observation.valueQuantity: type Quantity not allowed "
     "(only SampledData)"),
    (broken(device, lambda r: r["type"]["coding"][0].update(code="334990002")),
     "HddtPersonalHealthDevice: Device.type: [('http://snomed.info/sct', '334990002')] not in "
     "value set https://gematik.de/fhir/hddt/ValueSet/hddt-device-type (required binding)"),
    (broken(metric, lambda r: r.pop("source")),
     "HddtSensorTypeAndCalibrationStatus: DeviceMetric.source: 0 found, cardinality 1..*"),
    (broken(metric, lambda r: r.update(source={"reference": "DeviceMetric/m-2"})),
     "HddtSensorTypeAndCalibrationStatus: DeviceMetric.source: reference to DeviceMetric not "
     "allowed (only Device)"),
    (broken(metric, lambda r: r["calibration"][0].pop("state")),
     "HddtSensorTypeAndCalibrationStatus: DeviceMetric.calibration[0].state: 0 found, "
     "cardinality 1..1"),
    (broken(metric, lambda r: r.update(resourceType="Device")),
     "HddtSensorTypeAndCalibrationStatus: Device: resourceType 'Device', the profile "
     "constrains DeviceMetric"),
])
def test_broken_copies_fail_with_the_specific_violation(resource: dict[str, Any],
                                                        violation: str) -> None:
    found = check_resource(resource)
    assert any(violation in v for v in found), found


def test_hl7_times_in_ranges_slices_and_patterns() -> None:
    codes = ["104642-4", "104641-6", "97510-2", "104640-8", "104639-0"]
    tir: dict[str, Any] = {
        "resourceType": "Observation", "meta": {"profile": [TIR]}, "status": "final",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "106793-3"}]},
        "effectivePeriod": {"start": "2027-07-01", "end": "2027-07-07"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": c}]},
             "valueQuantity": {"value": 20, "unit": "%", "system": "http://unitsofmeasure.org",
                               "code": "%"}} for c in codes],
    }
    validate(tir)
    assert check_resource(tir) == []
    wrong_unit = copy.deepcopy(tir)
    wrong_unit["component"][2]["valueQuantity"]["code"] = "1"
    assert check_resource(wrong_unit) == [
        "CGMSummaryTimesInRanges: Observation.component[2].valueQuantity: pattern "
        '{"code": "%", "system": "http://unitsofmeasure.org", "unit": "%"} expected, found '
        '{"code": "1", "system": "http://unitsofmeasure.org", "unit": "%", "value": 20}']
    twice = copy.deepcopy(tir)
    twice["component"].append(copy.deepcopy(twice["component"][0]))
    assert check_resource(twice) == [
        "CGMSummaryTimesInRanges: Observation.component[timeInVeryLow]: 2 found, "
        "cardinality 1..1"]
    absent = copy.deepcopy(tir)
    absent["component"][0].pop("valueQuantity")
    assert check_resource(absent) == [
        "CGMSummaryTimesInRanges: Observation.component[0].valueQuantity: 0 found, "
        "cardinality 1..1"]
    absent["component"][0]["dataAbsentReason"] = {"coding": [{"code": "unknown"}]}
    assert check_resource(absent) == []  # measurement-cgm.md: no value, a dataAbsentReason
    wrong_code = copy.deepcopy(tir)
    wrong_code["code"]["coding"][0]["code"] = "106793-4"
    assert any("Observation.code: pattern" in v for v in check_resource(wrong_code))


def test_profile_selection() -> None:
    plain = bg()
    del plain["meta"]
    assert check_resource(plain) == []  # claims no profile: nothing to check
    plain.pop("device")
    assert check_resource(plain, profile=BG) == [
        "HddtBloodGlucoseMeasurement: Observation.device: 0 found, cardinality 1..1"]
    unknown = bg()
    unknown["meta"]["profile"] = ["https://example.org/StructureDefinition/other"]
    assert check_resource(unknown) == []
    with pytest.raises(KeyError, match="not in the constraint table"):
        check_resource(bg(), profile="https://example.org/StructureDefinition/other")
