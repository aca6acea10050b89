"""A small FHIR Shorthand (FSH) reader: the rule forms the HDDT and HL7 CGM profiles use.

Not a SUSHI replacement. It reads entity headers (``Profile``, ``Instance``, ``RuleSet``,
``Alias`` …), rules with indented sub-paths, ``insert`` of rule sets, multi-line strings and
``contains`` lists spread over lines, and turns each rule into a :class:`Rule`:

* ``* path 1..1 MS`` → ``card`` (and ``ms``), ``* path MS`` → ``ms``
* ``* path from <ValueSet> (required)`` → ``binding``
* ``* path only T or Reference(A or B)`` → ``only``
* ``* path = <value> (exactly)`` → ``fixed`` (in a profile) or an assignment (in an instance)
* ``* path contains a 1..1 MS and b 0..1`` → ``contains`` (slices)
* ``* ^slicing.discriminator.path = "code"`` → ``discriminator``
* ``* obeys inv`` → ``obeys`` (FHIRPath invariants are recorded, not evaluated)

Other caret rules (``^short``, ``^status`` …) are metadata and are dropped. Values keep
their FSH kind (:func:`parse_value`); :func:`build_instances` turns ``Instance`` entities
into FHIR JSON the way SUSHI does for the cases the HDDT examples need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.hddt.errors import HddtError

UCUM = "http://unitsofmeasure.org"

_ENTITY_KEYWORDS = ("Profile", "Instance", "RuleSet", "ValueSet", "CodeSystem", "Extension",
                    "Invariant", "Alias", "Logical", "Resource", "Mapping")
_META_KEYWORDS = ("Parent", "Id", "Title", "Description", "InstanceOf", "Usage", "Severity",
                  "Expression", "XPath", "Source", "Target", "Context", "Characteristics")
_HEADER_RE = re.compile(r"^([A-Z][A-Za-z]*):\s*(.*)$")
_RULE_RE = re.compile(r"^(\s*)\*\s?(.*)$")
_CARD_RE = re.compile(r"^(\d*)\.\.(\d+|\*)?$")


class FshError(HddtError):
    """FSH text the reader cannot make sense of; ``where`` is ``file:line``."""

    def __init__(self, message: str, where: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}")


@dataclass(slots=True)
class Rule:
    """One rule: ``kind`` and the rule's fields; ``where`` is ``file:line``."""

    kind: str
    path: str
    where: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Entity:
    """A FSH entity: its keyword, name, header fields and rules (in order)."""

    keyword: str
    name: str
    where: str
    meta: dict[str, str] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    #: Raw rule lines with their indentation level (kept for RuleSet insertion).
    lines: list[tuple[int, str, str]] = field(default_factory=list)


# --- lines --------------------------------------------------------------------------------

def _strip_comment(line: str) -> str:
    """``line`` without a ``//`` comment (one outside quotes, at the start or after a space:
    URLs keep their ``//``)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif (not quoted and line.startswith("//", i)
              and (i == 0 or line[i - 1] in " \t")):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(text: str, source: str) -> Iterator[tuple[str, str]]:
    """(``file:line``, line) with multi-line strings and continued rules joined."""
    pending: tuple[str, str] | None = None
    raw = text.splitlines()
    i = 0
    while i < len(raw):
        where = f"{source}:{i + 1}"
        line = raw[i]
        i += 1
        if line.count('"""') % 2 == 1:  # a multi-line string starts here: read to its end
            parts = [line]
            while i < len(raw):
                parts.append(raw[i])
                i += 1
                if '"""' in raw[i - 1]:
                    break
            line = " ".join(p.strip() if n else p for n, p in enumerate(parts))
        line = _strip_comment(line)
        if not line.strip():
            continue
        starts_rule = _RULE_RE.match(line) is not None
        header = _HEADER_RE.match(line)
        if starts_rule or (header and header.group(1) in _ENTITY_KEYWORDS + _META_KEYWORDS):
            if pending is not None:
                yield pending
            pending = (where, line)
        elif pending is not None:  # continuation of a rule ("contains a and\n b")
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            raise FshError(f"unexpected text {line.strip()!r}", where)
    if pending is not None:
        yield pending


def read_entities(files: Iterable[Path]) -> list[Entity]:
    """Every entity of the given ``.fsh`` files, in file order."""
    entities: list[Entity] = []
    for path in files:
        current: Entity | None = None
        for where, line in _logical_lines(path.read_text(encoding="utf-8"), path.name):
            header = _HEADER_RE.match(line)
            rule = _RULE_RE.match(line)
            if rule is None and header is not None:
                key, value = header.group(1), header.group(2).strip()
                if key in _ENTITY_KEYWORDS:
                    current = Entity(key, value, where)
                    entities.append(current)
                elif current is None:
                    raise FshError(f"{key}: outside an entity", where)
                else:
                    current.meta[key] = value
                continue
            assert rule is not None
            if current is None:
                raise FshError("rule outside an entity", where)
            indent = len(rule.group(1).replace("\t", "  "))
            current.lines.append((indent // 2, rule.group(2).strip(), where))
    return entities


# --- values -------------------------------------------------------------------------------

_QUANTITY_RE = re.compile(r"^(?:(-?\d+(?:\.\d+)?)\s+)?'([^']*)'(?:\s+\"((?:[^\"\\]|\\.)*)\")?$")
_CODE_RE = re.compile(r"^(\S*)#(\S+)(?:\s+\"((?:[^\"\\]|\\.)*)\")?$")
_STRING_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"$')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_value(text: str, aliases: Mapping[str, str]) -> dict[str, Any]:
    """A FSH value as ``{"type": …}``: code, coding, quantity, string, number, boolean,
    reference or name (an instance or inline CodeableConcept)."""
    text = text.strip()
    if text.startswith('"""') and text.endswith('"""') and len(text) >= 6:
        return {"type": "string", "value": text[3:-3].strip()}
    m = _STRING_RE.match(text)
    if m:
        return {"type": "string", "value": _unescape(m.group(1))}
    m = _QUANTITY_RE.match(text)
    if m:
        out: dict[str, Any] = {"type": "quantity", "system": UCUM, "code": m.group(2)}
        if m.group(1) is not None:
            out["value"] = _number(m.group(1))
        if m.group(3) is not None:
            out["unit"] = _unescape(m.group(3))
        return out
    m = _CODE_RE.match(text)
    if m:
        system = aliases.get(m.group(1), m.group(1))
        if not system:
            return {"type": "code", "code": m.group(2)}
        coding: dict[str, Any] = {"type": "coding", "code": m.group(2)}
        system, _, version = system.partition("|")
        coding["system"] = system
        if version:
            coding["version"] = version
        if m.group(3) is not None:
            coding["display"] = _unescape(m.group(3))
        return coding
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return {"type": "number", "value": _number(text)}
    if text in ("true", "false"):
        return {"type": "boolean", "value": text == "true"}
    m = re.fullmatch(r"Reference\((.+)\)", text)
    if m:
        return {"type": "reference", "target": m.group(1).strip()}
    m = re.fullmatch(r"Canonical\((.+)\)", text)
    if m:
        return {"type": "canonical", "target": m.group(1).strip()}
    if text in aliases:  # an alias used as a value ($term-version)
        return {"type": "string", "value": aliases[text]}
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        return {"type": "name", "name": text}
    raise ValueError(f"not a FSH value: {text!r}")


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


# --- rules --------------------------------------------------------------------------------

def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}.{path}"


_FLAGS = {"MS", "SU", "?!", "N", "TU", "D"}


def expand_rules(entity: Entity, rule_sets: Mapping[str, Entity],
                 aliases: Mapping[str, str]) -> list[Rule]:
    """The entity's rules with indentation resolved and rule sets inserted."""
    out: list[Rule] = []
    _expand(entity.lines, "", rule_sets, aliases, out, depth=0)
    return out


def _expand(lines: Sequence[tuple[int, str, str]], base: str,
            rule_sets: Mapping[str, Entity], aliases: Mapping[str, str],
            out: list[Rule], *, depth: int) -> None:
    if depth > 10:
        raise FshError("rule sets nest too deeply", lines[0][2] if lines else "?")
    context: dict[int, str] = {-1: base}
    for level, text, where in lines:
        prefix = context.get(level - 1, base)
        path, rule = _split_rule(text)
        full = _join(prefix, path) if not path.startswith("^") else prefix
        context[level] = full
        for deeper in [k for k in context if k > level]:
            del context[deeper]
        if rule is None:
            continue
        if rule.startswith("insert "):
            name = rule.split(None, 1)[1].strip()
            if name not in rule_sets:
                raise FshError(f"unknown rule set {name!r}", where)
            _expand(rule_sets[name].lines, full, rule_sets, aliases, out, depth=depth + 1)
            continue
        out.extend(_parse_rule(full, path, rule, where, aliases))


def _split_rule(text: str) -> tuple[str, str | None]:
    """(path, rest) of a rule line; rest None for a bare path (a context for sub-rules)."""
    if text.startswith("insert ") or text.startswith("obeys "):
        return "", text
    if text.startswith("^"):
        return "^", text
    head, _, rest = text.partition(" ")
    rest = rest.strip()
    return head, (rest or None)


def _parse_rule(full: str, path: str, rule: str, where: str,
                aliases: Mapping[str, str]) -> list[Rule]:
    if path == "^" or rule.startswith("^"):
        caret = rule if rule.startswith("^") else "^" + rule
        m = re.match(r"^\^slicing\.discriminator(?:\[[^\]]*\])?\.path\s*=\s*\"([^\"]*)\"",
                     caret)
        if m:
            return [Rule("discriminator", full, where, {"discriminator": m.group(1)})]
        return []  # metadata (short, definition, status …)
    if rule.startswith("obeys "):
        return [Rule("obeys", full, where,
                     {"invariants": [s.strip() for s in rule[6:].split(" and ")]})]
    if rule.startswith("->"):
        return []  # mapping
    if rule.startswith("contains "):
        slices = []
        for part in re.split(r"\s+and\s+", rule[len("contains "):].strip()):
            words = part.split()
            name = words[0]
            named = words.index("named") if "named" in words else -1
            if named >= 0:  # "url named name 0..1": an extension slice
                name = words[named + 1]
                words = words[named + 1:]
            card = next((w for w in words[1:] if _CARD_RE.match(w)), None)
            lo, hi = _card(card) if card else (0, "*")
            slices.append({"name": name, "min": lo, "max": hi, "ms": "MS" in words})
        return [Rule("contains", full, where, {"slices": slices})]
    if rule.startswith("from "):
        m = re.match(r"^from\s+(\S+)(?:\s+\((\w+)\))?$", rule)
        if not m:
            raise FshError(f"cannot read binding {rule!r}", where)
        vs = aliases.get(m.group(1), m.group(1))
        return [Rule("binding", full, where,
                     {"value_set": vs, "strength": m.group(2) or "required"})]
    if rule.startswith("only "):
        types: list[str] = []
        targets: list[str] = []
        body = rule[5:].strip()
        for ref in re.finditer(r"Reference\(([^)]*)\)", body):
            targets += [aliases.get(t.strip(), t.strip()) for t in ref.group(1).split(" or ")]
            types.append("Reference")
        body = re.sub(r"Reference\([^)]*\)", "", body)
        types += [aliases.get(t.strip(), t.strip())
                  for t in body.split(" or ") if t.strip()]
        return [Rule("only", full, where, {"types": types, "targets": targets})]
    if rule.startswith("="):
        value = rule[1:].strip()
        exactly = value.endswith("(exactly)")
        if exactly:
            value = value[: -len("(exactly)")].strip()
        try:
            parsed = parse_value(value, aliases)
        except ValueError as exc:
            raise FshError(str(exc), where) from None
        return [Rule("fixed", full, where, {"value": parsed, "exactly": exactly})]
    words = rule.split()
    rules: list[Rule] = []
    if words and _CARD_RE.match(words[0]):
        lo, hi = _card(words[0])
        rules.append(Rule("card", full, where, {"min": lo, "max": hi}))
        words = words[1:]
    if words and all(w in _FLAGS for w in words):
        if "MS" in words:
            rules.append(Rule("ms", full, where))
        return rules
    if not words:
        return rules
    raise FshError(f"rule form not understood: {path} {rule}", where)


def _card(text: str) -> tuple[int, str]:
    m = _CARD_RE.match(text)
    assert m is not None
    return (int(m.group(1) or 0), m.group(2) or "*")


def read_aliases(entities: Iterable[Entity]) -> dict[str, str]:
    """``$alias`` → URL (the first definition wins, as duplicates in the sources agree)."""
    out: dict[str, str] = {}
    for e in entities:
        if e.keyword == "Alias":
            name, _, url = e.name.partition("=")
            out.setdefault(name.strip(), url.strip())
    return out


# --- instances ----------------------------------------------------------------------------

#: Elements that are arrays in the resources the examples use (FHIR R4).
ARRAY_ELEMENTS = frozenset({
    "category", "note", "component", "identifier", "hasMember", "interpretation",
    "derivedFrom", "coding", "deviceName", "calibration", "entry", "profile", "contact",
    "telecom", "address", "line", "extension", "given", "property", "capability",
    "payloadType", "issue", "valueCode", "valueQuantity", "include", "concept", "link",
    "referenceRange",
})
#: CodeableConcept elements per resource type (a ``system#code`` there becomes ``coding``).
CODEABLE = {
    "Observation": {"code", "category", "method", "dataAbsentReason", "interpretation",
                    "component.code", "valueCodeableConcept"},
    "Device": {"type"},
    "DeviceMetric": {"type", "unit"},
    "DeviceDefinition": {"type", "property.type", "property.valueCode", "capability.type"},
    "Organization": {"type"},
    "Endpoint": {"payloadType"},
    "OperationOutcome": {"issue.details"},
}
#: Arrays only in some resources (DeviceDefinition.property.valueCode, .valueQuantity).
_ARRAY_ONLY_IN = {"valueCode": "DeviceDefinition", "valueQuantity": "DeviceDefinition"}
#: … and elements that are single in some (DeviceMetric.category is one code).
_NOT_ARRAY_IN = {"category": ("DeviceMetric",)}

_SEGMENT_RE = re.compile(r"^([A-Za-z0-9_]+)(?:\[([^\]]+)\])?$")
SLICE_KEY = "__slice__"


def split_path(path: str) -> list[tuple[str, str | None]]:
    """``a.b[x].c[slice]`` → [("a", None), ("b", "x"), ("c", "slice")]."""
    out: list[tuple[str, str | None]] = []
    for segment in re.split(r"\.(?![^\[]*\])", path):
        m = _SEGMENT_RE.match(segment)
        if m is None:
            raise ValueError(f"cannot read path segment {segment!r} of {path!r}")
        out.append((m.group(1), m.group(2)))
    return out


def is_array(name: str, resource_type: str) -> bool:
    """Whether ``name`` is an array element in ``resource_type`` (for instance building)."""
    if name in _ARRAY_ONLY_IN:
        return _ARRAY_ONLY_IN[name] == resource_type
    if resource_type in _NOT_ARRAY_IN.get(name, ()):
        return False
    return name in ARRAY_ELEMENTS


def assign(resource: dict[str, Any], path: str, value: Any, resource_type: str) -> None:
    """Set ``value`` at the FSH ``path`` of ``resource`` (indices ``[0]``, ``[+]``,
    ``[=]`` and slice names; merge when both old and new are objects)."""
    node: Any = resource
    parts = split_path(path)
    for n, (name, index) in enumerate(parts):
        last = n == len(parts) - 1
        if is_array(name, resource_type) or (index is not None and index != "x"):
            items = node.setdefault(name, [])
            if index in (None, "0") and not items:
                items.append({})
            if index is None or index.isdigit():
                pos = int(index or 0)
                while len(items) <= pos:
                    items.append({})
            elif index == "+":
                items.append({})
                pos = len(items) - 1
            elif index == "=":
                pos = len(items) - 1
            else:  # a slice name
                found = [i for i, it in enumerate(items)
                         if isinstance(it, dict) and it.get(SLICE_KEY) == index]
                if found:
                    pos = found[0]
                else:
                    items.append({SLICE_KEY: index})
                    pos = len(items) - 1
            if last:
                items[pos] = _merge(items[pos], value)
            else:
                node = items[pos]
        elif last:
            node[name] = _merge(node.get(name), value)
        else:
            node = node.setdefault(name, {})


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for k, v in new.items():
            merged[k] = _merge(merged.get(k), v)
        return merged
    return new


def strip_slice_tags(node: Any) -> Any:
    """``node`` without the reader's slice markers."""
    if isinstance(node, dict):
        return {k: strip_slice_tags(v) for k, v in node.items() if k != SLICE_KEY}
    if isinstance(node, list):
        return [strip_slice_tags(v) for v in node]
    return node


def value_json(value: Mapping[str, Any], path: str, resource_type: str,
               resolve_name: Any = None) -> Any:
    """The FHIR JSON of a parsed FSH value assigned at ``path`` of a ``resource_type``."""
    kind = value["type"]
    plain = re.sub(r"\[[^\]]*\]", "", path)
    if kind == "code":
        if plain in CODEABLE.get(resource_type, set()):
            return {"coding": [{"code": value["code"]}]}
        return value["code"]
    if kind == "coding":
        coding = {k: value[k] for k in ("system", "version", "code", "display") if k in value}
        if plain in CODEABLE.get(resource_type, set()) or plain.endswith(".valueCodeableConcept"):
            return {"coding": [coding]}
        return coding
    if kind == "quantity":
        return {k: value[k] for k in ("value", "unit", "system", "code") if k in value}
    if kind in ("string", "number", "boolean"):
        return value["value"]
    if kind in ("reference", "name", "canonical") and resolve_name is not None:
        return resolve_name(value, path)
    raise ValueError(f"cannot place {kind} value at {path}")
