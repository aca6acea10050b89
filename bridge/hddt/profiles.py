"""HDDT profile constraints, derived from the FSH sources, and a checker for resources.

The table (``profile_constraints.json`` beside this module) is generated from the HDDT FSH
folder (and the HL7 CGM IG FSH the CGM summary builds on) by::

    python -m bridge.hddt.profiles --generate <hddt input/fsh> [--hl7-cgm <cgm input/fsh>]

and committed, so the checker works without the reference sources; a test regenerates it from
the sources when they are present and asserts that nothing changed.

:func:`check_resource` returns the violations of a resource (a JSON dict) against the
profiles it claims in ``meta.profile`` (or one given explicitly): cardinalities, fixed and
pattern values, required bindings to the value sets the FSH defines (LOINC and SNOMED codes
listed in ``fsh/terminologies``), ``only`` type and reference-target constraints, slices
with a value discriminator, and — for the HddtCgmSummary Bundle — each entry against the
profile it must conform to. Not evaluated (listed per profile under ``unchecked``): FHIRPath
invariants (``obeys``), bindings to value sets outside the FSH (e.g. UCUM units, checked for
presence only) and slices whose discriminator needs ``resolve()``.

One documented relaxation, from the HDDT page measurement-cgm.md ("Operation
$hddt-cgm-summary", Specifications): a CGM summary Observation the recorder cannot fill
carries ``dataAbsentReason`` instead of ``value[x]``; so for the HL7 CGM profiles a missing
``value…`` is not a violation where its element has a ``dataAbsentReason``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.hddt import fsh

TABLE_PATH = Path(__file__).with_name("profile_constraints.json")

HDDT_CANONICAL = "https://gematik.de/fhir/hddt"
HL7_CGM_CANONICAL = "http://hl7.org/fhir/uv/cgm"

#: The HDDT profiles the table covers (the glucose MIVs, devices and the CGM summary).
HDDT_PROFILES = ("HddtBloodGlucoseMeasurement", "HddtContinuousGlucoseMeasurement",
                 "HddtPersonalHealthDevice", "HddtSensorTypeAndCalibrationStatus",
                 "HddtCgmSummary")
#: The HL7 CGM IG profiles an HddtCgmSummary Bundle may hold.
HL7_CGM_PROFILES = ("CGMSummaryObservation", "CGMSummaryMeanGlucoseMassPerVolume",
                    "CGMSummaryMeanGlucoseMolesPerVolume", "CGMSummaryTimesInRanges",
                    "CGMSummaryGMI", "CGMSummaryCoefficientOfVariation",
                    "CGMSummaryDaysOfWear", "CGMSummarySensorActivePercentage")

_BASE_TYPES = frozenset({"Observation", "Device", "DeviceMetric", "Bundle", "Patient",
                         "DiagnosticReport", "ServiceRequest", "DeviceDefinition"})


# --- generation ---------------------------------------------------------------------------

def _fsh_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.fsh"))


def _source_label(folder: Path) -> str:
    """A machine-independent label for a source folder: its repository folder name and
    the commit it was taken from, when the reference copy records one."""
    for parent in [folder, *folder.parents]:
        commit = parent / "SOURCE-COMMIT"
        if commit.is_file():
            return f"{parent.name} @ {commit.read_text(encoding='utf-8').split()[0][:12]}"
    return folder.name


def _inline_codeable(entity: fsh.Entity, aliases: Mapping[str, str]) -> dict[str, Any]:
    resource: dict[str, Any] = {}
    for rule in fsh.expand_rules(entity, {}, aliases):
        if rule.kind == "fixed":
            fsh.assign(resource, rule.path,
                       fsh.value_json(rule.data["value"], rule.path, "CodeableConcept"),
                       "CodeableConcept")
    return {"type": "codeableconcept", "coding": resource.get("coding", [])}


def _value_set(entity: fsh.Entity, aliases: Mapping[str, str]
               ) -> tuple[str, list[list[str]]]:
    resource: dict[str, Any] = {}
    for rule in fsh.expand_rules(entity, {}, aliases):
        if rule.kind == "fixed" and rule.path.startswith(("id", "compose")):
            value = rule.data["value"]
            raw = value.get("code") if value["type"] == "code" else value.get("value")
            fsh.assign(resource, rule.path, raw, "ValueSet")
    vs_id = resource.get("id", entity.name)
    codes = []
    for include in resource.get("compose", {}).get("include", []):
        system = aliases.get(include.get("system", ""), include.get("system", ""))
        for concept in include.get("concept", []):
            codes.append([system, str(concept["code"])])
    return f"{HDDT_CANONICAL}/ValueSet/{vs_id}", codes


def generate_table(hddt_fsh: Path, hl7_cgm_fsh: Path | None = None) -> dict[str, Any]:
    """The constraint table from the HDDT FSH folder (and the HL7 CGM IG FSH folder)."""
    sources: list[tuple[Path, str, tuple[str, ...]]] = [
        (hddt_fsh, HDDT_CANONICAL, HDDT_PROFILES)]
    if hl7_cgm_fsh is not None:
        sources.append((hl7_cgm_fsh, HL7_CGM_CANONICAL, HL7_CGM_PROFILES))
    per_source = [(fsh.read_entities(_fsh_files(folder)), canonical, wanted, folder)
                  for folder, canonical, wanted in sources]
    aliases: dict[str, str] = {}
    for entities, *_ in per_source:
        for name, url in fsh.read_aliases(entities).items():
            aliases.setdefault(name, url)
    urls: dict[str, tuple[str, str]] = {}  # profile name -> (url, base type)
    for entities, canonical, _wanted, _folder in per_source:
        profiles = {e.name: e for e in entities if e.keyword == "Profile"}
        for e in profiles.values():
            parent = e.meta.get("Parent", "")
            while parent in profiles:
                parent = profiles[parent].meta.get("Parent", "")
            urls[e.name] = (f"{canonical}/StructureDefinition/{e.meta.get('Id', e.name)}",
                            parent)
    table: dict[str, Any] = {
        "generated_from": [_source_label(folder) for *_, folder in per_source],
        "profiles": {}, "value_sets": {},
    }
    for entities, _canonical, wanted, _folder in per_source:
        rule_sets = {e.name: e for e in entities if e.keyword == "RuleSet"}
        inline = {e.name: e for e in entities
                  if e.keyword == "Instance" and e.meta.get("InstanceOf") == "CodeableConcept"}
        for e in entities:
            if e.keyword == "Instance" and e.meta.get("InstanceOf") in (
                    "$shareable-vs", "ValueSet"):
                url, codes = _value_set(e, aliases)
                table["value_sets"][url] = codes
        for e in entities:
            if e.keyword != "Profile" or e.name not in wanted:
                continue
            rules = []
            for rule in fsh.expand_rules(e, rule_sets, aliases):
                data = dict(rule.data)
                if rule.kind == "fixed" and data["value"]["type"] == "name":
                    name = data["value"]["name"]
                    if name not in inline:
                        raise fsh.FshError(f"unknown value {name!r}", rule.where)
                    data["value"] = _inline_codeable(inline[name], aliases)
                if rule.kind == "only":
                    data["types"] = [urls[t][0] if t in urls else t for t in data["types"]]
                    data["targets"] = [urls[t][0] if t in urls else t
                                       for t in data["targets"]]
                rules.append({"kind": rule.kind, "path": rule.path, **data})
            url, base = urls[e.name]
            table["profiles"][url] = {"name": e.name, "type": base, "rules": rules}
    # Keep the value sets the profiles bind to, and the base types of the profiles they
    # name (for reference-target and entry checks).
    bound = {r["value_set"] for p in table["profiles"].values() for r in p["rules"]
             if r["kind"] == "binding"}
    table["value_sets"] = {u: c for u, c in table["value_sets"].items() if u in bound}
    named = set(table["profiles"]) | {
        t for p in table["profiles"].values() for r in p["rules"] if r["kind"] == "only"
        for t in [*r["types"], *r["targets"]]}
    table["profile_types"] = {url: base for url, base in sorted(urls.values()) if url in named}
    return table


def write_table(table: Mapping[str, Any], path: Path = TABLE_PATH) -> None:
    """Write ``table`` as stable, diff-friendly JSON."""
    path.write_text(json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


@functools.cache
def load_table(path: Path = TABLE_PATH) -> dict[str, Any]:
    """The committed constraint table."""
    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return table


# --- checking -----------------------------------------------------------------------------

Node = tuple[str, Any]  # (location label, JSON value)


def _children(label: str, node: Any, name: str, index: str | None,
              member: Callable[[str, Any], bool] | None) -> list[Node]:
    if not isinstance(node, dict):
        return []
    if index == "x":
        keys = [k for k in node if k.startswith(name) and len(k) > len(name)
                and k[len(name)].isupper()]
        out: list[Node] = []
        for k in keys:
            out.extend(_flatten(f"{label}.{k}", node[k]))
        return out
    if name not in node:
        return []
    items = _flatten(f"{label}.{name}", node[name])
    if index is None:
        return items
    if index.isdigit():
        return items[int(index):int(index) + 1]
    return [(lbl, item) for lbl, item in items if member is not None and member(index, item)]


def _flatten(label: str, value: Any) -> list[Node]:
    if isinstance(value, list):
        return [(f"{label}[{i}]", v) for i, v in enumerate(value)]
    return [(label, value)]


def _matches(node: Any, pattern: Mapping[str, Any]) -> bool:
    kind = pattern["type"]
    if kind in ("string", "number", "boolean"):
        return bool(node == pattern["value"])
    if kind == "code":
        if isinstance(node, str):
            return bool(node == pattern["code"])
        if isinstance(node, dict) and "coding" in node:
            return any(c.get("code") == pattern["code"] for c in node["coding"])
        return isinstance(node, dict) and bool(node.get("code") == pattern["code"])
    if kind == "coding":
        if isinstance(node, str):
            return bool(node == pattern["code"])
        codings = node.get("coding", []) if isinstance(node, dict) and "coding" in node \
            else [node]
        return any(isinstance(c, dict) and c.get("system") == pattern.get("system")
                   and c.get("code") == pattern["code"] for c in codings)
    if kind == "codeableconcept":
        have = node.get("coding", []) if isinstance(node, dict) else []
        return all(any(c.get("system") == p.get("system") and c.get("code") == p.get("code")
                       for c in have) for p in pattern["coding"])
    if kind == "quantity":
        return isinstance(node, dict) and all(
            node.get(k) == pattern[k] for k in ("system", "code", "unit", "value")
            if k in pattern)
    return False


def _show(pattern: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in pattern.items() if k != "type"}
    if set(shown) == {"value"}:
        return repr(shown["value"])
    if set(shown) == {"code"}:
        return repr(shown["code"])
    return json.dumps(shown, sort_keys=True)


def _codes(node: Any) -> list[tuple[str | None, str]]:
    if isinstance(node, str):
        return [(None, node)]
    if isinstance(node, dict) and "coding" in node:
        return [(c.get("system"), str(c.get("code"))) for c in node["coding"]
                if isinstance(c, dict)]
    if isinstance(node, dict) and "code" in node:
        return [(node.get("system"), str(node["code"]))]
    return []


def _reference_type(reference: str) -> str | None:
    if reference.startswith(("urn:", "#")):
        return None
    parts = [p for p in reference.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


class _Checker:
    def __init__(self, table: Mapping[str, Any]) -> None:
        self.table = table

    def check(self, resource: Mapping[str, Any], profile_url: str, label: str) -> list[str]:
        profile = self.table["profiles"][profile_url]
        name = profile["name"]
        rules: list[dict[str, Any]] = profile["rules"]
        out: list[str] = []
        if resource.get("resourceType") != profile["type"]:
            return [f"{name}: {label}: resourceType {resource.get('resourceType')!r}, "
                    f"the profile constrains {profile['type']}"]
        discriminators = {r["path"]: r["discriminator"] for r in rules
                          if r["kind"] == "discriminator"}
        slice_patterns: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
        unresolvable: set[str] = set()
        for r in rules:
            if r["kind"] != "contains":
                continue
            disc = discriminators.get(r["path"])
            for s in r["slices"]:
                key = f"{r['path']}[{s['name']}]"
                if disc is None or "resolve()" in disc:
                    unresolvable.add(key)
                    continue
                slice_patterns[(r["path"], s["name"])] = [
                    (disc, f["value"]) for f in rules
                    if f["kind"] == "fixed" and f["path"] == f"{key}.{disc}"]

        def member_of(base: str) -> Callable[[str, Any], bool]:
            def member(slice_name: str, item: Any) -> bool:
                patterns = slice_patterns.get((base, slice_name))
                if not patterns:
                    return False
                for disc, pattern in patterns:
                    found = self.resolve(("", item), disc, lambda *_: False)
                    if not any(_matches(v, pattern) for _, v in found):
                        return False
                return True
            return member

        waive_values = profile_url.startswith(HL7_CGM_CANONICAL + "/")
        root = (label, resource)
        for r in rules:
            path = r["path"]
            if any(path.startswith(u) for u in unresolvable):
                continue
            member = self._member_factory(path, member_of)
            kind = r["kind"]
            if kind == "card":
                parent_path, _, last = path.rpartition(".")
                parents = (self.resolve(root, parent_path, member) if parent_path else [root])
                seg_name, seg_index = fsh.split_path(last)[0]
                for plabel, pnode in parents:
                    if not isinstance(pnode, dict):
                        continue
                    count = len(_children(plabel, pnode, seg_name, seg_index,
                                          self._member_factory(path, member_of)))
                    hi = r["max"]
                    if count < r["min"] and waive_values and seg_name.startswith("value") \
                            and "dataAbsentReason" in pnode:
                        continue
                    if count < r["min"] or (hi != "*" and count > int(hi)):
                        out.append(f"{name}: {plabel}.{last}: {count} found, cardinality "
                                   f"{r['min']}..{hi}")
            elif kind == "contains":
                parent_path, _, last = path.rpartition(".")
                parents = (self.resolve(root, parent_path, member) if parent_path else [root])
                for s in r["slices"]:
                    if f"{path}[{s['name']}]" in unresolvable:
                        continue
                    for plabel, pnode in parents:
                        count = len(_children(plabel, pnode, last.split("[")[0], s["name"],
                                              member_of(path)))
                        hi = s["max"]
                        if count < s["min"] or (hi != "*" and count > int(hi)):
                            out.append(f"{name}: {plabel}.{last}[{s['name']}]: {count} found,"
                                       f" cardinality {s['min']}..{hi}")
            elif kind == "fixed":
                for nlabel, node in self.resolve(root, path, member):
                    if not _matches(node, r["value"]):
                        what = "fixed value" if r["exactly"] else "pattern"
                        out.append(f"{name}: {nlabel}: {what} {_show(r['value'])} expected, "
                                   f"found {json.dumps(node, sort_keys=True)}")
            elif kind == "binding":
                codes = self.table["value_sets"].get(r["value_set"])
                for nlabel, node in self.resolve(root, path, member):
                    have = _codes(node)
                    if not have or not all(c for _, c in have):
                        out.append(f"{name}: {nlabel}: no code for the binding to "
                                   f"{r['value_set']}")
                    elif codes is not None and r["strength"] == "required" and not any(
                            (s is None and any(c == vc for _, vc in codes))
                            or [s, c] in codes for s, c in have):
                        out.append(f"{name}: {nlabel}: {have} not in value set "
                                   f"{r['value_set']} (required binding)")
            elif kind == "only":
                out.extend(self._check_only(name, root, r, member))
        return out

    @staticmethod
    def _member_factory(path: str, member_of: Callable[[str], Callable[[str, Any], bool]]
                        ) -> Callable[[str, Any], bool]:
        # Slice membership needs the sliced element's path: the part before the first "[".
        segments = re.split(r"\.(?![^\[]*\])", path)
        bases = {}
        for n, seg in enumerate(segments):
            if "[" in seg and not seg.endswith("[x]"):
                base = ".".join([*segments[:n], seg.split("[")[0]])
                bases[seg.split("[")[1].rstrip("]")] = member_of(base)

        def member(slice_name: str, item: Any) -> bool:
            check = bases.get(slice_name)
            return check is not None and check(slice_name, item)
        return member

    def _check_only(self, name: str, root: Node, rule: Mapping[str, Any],
                    member: Callable[[str, Any], bool]) -> list[str]:
        out: list[str] = []
        path: str = rule["path"]
        types: list[str] = rule["types"]
        targets: list[str] = rule["targets"]
        parent_path, _, last = path.rpartition(".")
        seg_name, seg_index = fsh.split_path(last)[0]
        if seg_index == "x":
            parents = self.resolve(root, parent_path, member) if parent_path else [root]
            for plabel, pnode in parents:
                if not isinstance(pnode, dict):
                    continue
                for key in pnode:
                    if key.startswith(seg_name) and len(key) > len(seg_name) \
                            and key[len(seg_name)].isupper():
                        suffix = key[len(seg_name):]
                        if not any(t.lower() == suffix.lower() for t in types):
                            out.append(f"{name}: {plabel}.{key}: type {suffix} not allowed "
                                       f"(only {' or '.join(types)})")
        nodes = self.resolve(root, path, member)
        if targets:
            allowed = {self.table["profile_types"].get(t, t) for t in targets}
            for nlabel, node in nodes:
                ref = node.get("reference") if isinstance(node, dict) else None
                kind = _reference_type(ref) if isinstance(ref, str) else None
                if kind is not None and kind not in allowed:
                    out.append(f"{name}: {nlabel}: reference to {kind} not allowed "
                               f"(only {' or '.join(sorted(allowed))})")
        profile_types = [t for t in types if t.startswith("http") or t in self.table[
            "profile_types"]]
        if profile_types and seg_index != "x":
            for nlabel, node in nodes:
                out.extend(self._conforms_to_one(nlabel, node, profile_types, name))
        return out

    def _conforms_to_one(self, label: str, node: Any, allowed: Sequence[str],
                         name: str) -> list[str]:
        if not isinstance(node, dict):
            return [f"{name}: {label}: not a resource"]
        declared = list(node.get("meta", {}).get("profile", []))
        known = [u for u in allowed if u in self.table["profiles"]]
        claimed = [u for u in declared if u in allowed]
        if claimed:
            problems: list[str] = []
            for url in claimed:
                if url in self.table["profiles"]:
                    problems.extend(self.check(node, url, label))
            return problems
        if declared:
            return [f"{name}: {label}: claims {declared}, allowed are only "
                    f"{list(allowed)}"]
        candidates = [u for u in known
                      if self.table["profiles"][u]["type"] == node.get("resourceType")]
        for url in candidates:
            if not self.check(node, url, label):
                return []
        return [f"{name}: {label}: a {node.get('resourceType')} that conforms to none of "
                f"{list(allowed)}"]

    def resolve(self, root: Node, path: str, member: Callable[[str, Any], bool]
                ) -> list[Node]:
        nodes = [root]
        for seg_name, seg_index in fsh.split_path(path):
            nodes = [child for label, node in nodes
                     for child in _children(label, node, seg_name, seg_index, member)]
        return nodes


def check_resource(resource: Mapping[str, Any], *, profile: str | None = None,
                   table: Mapping[str, Any] | None = None) -> list[str]:
    """Violations of ``resource`` against ``profile``, or against each profile of the table
    it claims in ``meta.profile``; empty when it conforms (or claims none the table knows).

    Each violation reads ``<Profile>: <location>: <what is wrong>``, e.g.
    ``HddtCgmSummary: Bundle.type: fixed value 'collection' expected, found "searchset"``.
    """
    table = load_table() if table is None else table
    if profile is not None:
        if profile not in table["profiles"]:
            raise KeyError(f"profile {profile} is not in the constraint table")
        urls = [profile]
    else:
        urls = [u for u in resource.get("meta", {}).get("profile", [])
                if u in table["profiles"]]
    checker = _Checker(table)
    label = str(resource.get("resourceType", "Resource"))
    return [v for url in urls for v in checker.check(resource, url, label)]


def unchecked(table: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Per profile, the constraints the checker does not evaluate (see the module doc)."""
    table = load_table() if table is None else table
    out: dict[str, list[str]] = {}
    for profile in table["profiles"].values():
        items = []
        for r in profile["rules"]:
            if r["kind"] == "obeys":
                items.append(f"{r['path'] or '(resource)'} obeys {', '.join(r['invariants'])}")
            elif r["kind"] == "binding" and r["value_set"] not in table["value_sets"]:
                items.append(f"{r['path']} from {r['value_set']} (codes not listed in the FSH)")
            elif r["kind"] == "discriminator" and "resolve()" in r["discriminator"]:
                items.append(f"{r['path']} slices (discriminator {r['discriminator']})")
        out[profile["name"]] = items
    return out


# --- the spec's example instances -----------------------------------------------------------

def example_instances(hddt_fsh: Path, hl7_cgm_fsh: Path | None = None,
                      table: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The ``Instance`` entities of the HDDT examples as FHIR JSON, keyed by instance name.

    As SUSHI does for examples: ``meta.profile`` is set from ``InstanceOf``, and the
    profile's fixed values are filled in where the element is required or already present.
    Only Observation, Device, DeviceMetric and Bundle instances are built.
    """
    table = load_table() if table is None else table
    folders = [hddt_fsh] + ([hl7_cgm_fsh] if hl7_cgm_fsh is not None else [])
    entities = [e for folder in folders for e in fsh.read_entities(_fsh_files(folder))]
    aliases = fsh.read_aliases(entities)
    by_profile_name = {p["name"]: url for url, p in table["profiles"].items()}
    # HDDT instances win over same-named HL7 CGM IG examples (both define cgmSummaryExample …).
    instances = {e.name: e for e in reversed(entities) if e.keyword == "Instance"}
    hddt_examples = {e.name for e in fsh.read_entities(_fsh_files(hddt_fsh))
                     if e.keyword == "Instance"}

    def type_and_id(name: str) -> tuple[str, str] | None:
        entity = instances.get(name)
        if entity is None:
            return None
        of = entity.meta.get("InstanceOf", "")
        kind = table["profiles"][by_profile_name[of]]["type"] if of in by_profile_name else of
        ident = name.rsplit("/", maxsplit=1)[-1]
        for rule in fsh.expand_rules(entity, {}, aliases):
            if rule.kind == "fixed" and rule.path == "id":
                ident = str(rule.data["value"]["value"])
        return kind, ident

    built: dict[str, dict[str, Any]] = {}

    def build(name: str) -> dict[str, Any]:
        if name in built:
            return built[name]
        entity = instances[name]
        of = entity.meta.get("InstanceOf", "")
        profile_url = by_profile_name.get(of)
        found = type_and_id(name)
        assert found is not None
        kind, ident = found
        resource: dict[str, Any] = {"resourceType": kind, "id": ident}
        if profile_url is not None:
            resource["meta"] = {"profile": [profile_url]}

        def resolve_name(value: Mapping[str, Any], path: str) -> Any:
            target = value.get("target") or value.get("name") or ""
            if value["type"] == "name" and path.endswith("resource"):
                return build(target)
            ref = type_and_id(target)
            return {"reference": f"{ref[0]}/{ref[1]}" if ref else target}

        for rule in fsh.expand_rules(entity, {}, aliases):
            if rule.kind != "fixed" or rule.path in ("id",):
                continue
            fsh.assign(resource, rule.path,
                       fsh.value_json(rule.data["value"], rule.path, kind, resolve_name), kind)
        if profile_url is not None:
            _fill_fixed(resource, table["profiles"][profile_url]["rules"])
        resource = fsh.strip_slice_tags(resource)
        built[name] = resource
        return resource

    wanted = {"Observation", "Device", "DeviceMetric", "Bundle"}
    out = {}
    for name in sorted(hddt_examples):
        found = type_and_id(name)
        if found is not None and found[0] in wanted:
            out[name] = build(name)
    return out


def _pattern_json(pattern: Mapping[str, Any]) -> Any:
    kind = pattern["type"]
    if kind == "codeableconcept":
        return {"coding": [dict(c) for c in pattern["coding"]]}
    if kind == "quantity":
        return {k: pattern[k] for k in ("value", "unit", "system", "code") if k in pattern}
    if kind == "coding":
        return {k: pattern[k] for k in ("system", "code") if k in pattern}
    if kind == "code":
        return pattern["code"]
    return pattern["value"]


def _fill_fixed(resource: dict[str, Any], rules: Iterable[Mapping[str, Any]]) -> None:
    """SUSHI's filling of fixed values into an example: where the element exists, or is
    required by the profile (min >= 1), or is the always-required ``code``."""
    rules = list(rules)
    required = {r["path"] for r in rules if r["kind"] == "card" and r["min"] >= 1}
    for r in rules:
        if r["kind"] != "fixed":
            continue
        path = r["path"]
        parent_path, _, last = path.rpartition(".")
        if not _exists_tagged(resource, parent_path):
            continue
        if not (last == "code" or path in required or _exists_tagged(resource, path)):
            continue
        fsh.assign(resource, path, _pattern_json(r["value"]), resource["resourceType"])


def _exists_tagged(resource: Mapping[str, Any], path: str) -> bool:
    if not path:
        return True
    nodes: list[Any] = [resource]
    for name, index in fsh.split_path(path):
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict) or name not in node:
                continue
            value = node[name]
            items = value if isinstance(value, list) else [value]
            if index is not None and not index.isdigit() and index not in ("x", "+", "="):
                items = [i for i in items if isinstance(i, dict)
                         and i.get(fsh.SLICE_KEY) == index]
            nxt.extend(items)
        nodes = nxt
    return bool(nodes)


# --- command line -----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.hddt.profiles --generate <fsh folder> [--hl7-cgm <folder>]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bridge.hddt.profiles",
        description="Generate the HDDT profile constraint table from FSH sources.")
    parser.add_argument("--generate", metavar="FSH_FOLDER", type=Path, required=True,
                        help="the HDDT specification's input/fsh folder")
    parser.add_argument("--hl7-cgm", metavar="FSH_FOLDER", type=Path,
                        help="the HL7 CGM IG's input/fsh folder (default: beside the HDDT "
                             "sources as hl7-cgm-ig/input/fsh, when present)")
    parser.add_argument("--output", type=Path, default=TABLE_PATH,
                        help="where to write the table (default: the packaged table)")
    args = parser.parse_args(argv)
    hddt: Path = args.generate
    if not hddt.is_dir():
        parser.error(f"{hddt} is not a folder")
    cgm: Path | None = args.hl7_cgm
    if cgm is None:
        guess = hddt.resolve().parents[2] / "hl7-cgm-ig" / "input" / "fsh"
        cgm = guess if guess.is_dir() else None
    try:
        table = generate_table(hddt, cgm)
    except fsh.FshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_table(table, args.output)
    rules = sum(len(p["rules"]) for p in table["profiles"].values())
    print(f"{len(table['profiles'])} profiles, {rules} rules, "
          f"{len(table['value_sets'])} value sets -> {args.output.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
