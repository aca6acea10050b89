"""Content negotiation and serialization (FHIR R4 http.html "Content Types and encodings").

Resources are plain dicts in the FHIR JSON form. JSON is written with :mod:`json` (orjson
when it happens to be installed); XML through the fhir.resources R4B models, which emit
the elements in the order of the StructureDefinitions. ``_format`` overrides ``Accept``;
a ``fhirVersion`` media-type parameter other than 4.0 is answered 406 (error-codes.md).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from bridge.hddt import outcome

_orjson: Any
try:  # pragma: no cover - depends on the environment
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover
    _orjson = None


class Format(StrEnum):
    JSON = "json"
    XML = "xml"

    @property
    def media_type(self) -> str:
        return "application/fhir+json" if self is Format.JSON else "application/fhir+xml"


_MEDIA: Mapping[str, Format] = {
    "application/fhir+json": Format.JSON, "application/json": Format.JSON,
    "application/json+fhir": Format.JSON, "json": Format.JSON,
    "application/fhir+xml": Format.XML, "application/xml": Format.XML,
    "application/xml+fhir": Format.XML, "text/xml": Format.XML, "xml": Format.XML,
}
_WILDCARDS = frozenset({"*/*", "application/*"})
_FHIR_VERSIONS = frozenset({"4.0", "4.0.1"})


def _media_ranges(header: str) -> list[tuple[str, float, dict[str, str]]]:
    out: list[tuple[str, float, dict[str, str]]] = []
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        out.append((media, q, params))
    return out


def _check_version(params: Mapping[str, str]) -> None:
    version = params.get("fhirversion")
    if version is not None and version not in _FHIR_VERSIONS:
        raise outcome.fhir_version_not_supported()


def negotiate(format_param: str | None, accept: str | None) -> Format:
    """The response format for ``_format`` and the ``Accept`` header, or a 406 FhirError."""
    if format_param is not None:
        media = format_param.strip().lower()
        fields = _media_ranges(media)
        if not fields or fields[0][0] not in _MEDIA:
            raise outcome.format_not_supported()
        _check_version(fields[0][2])
        return _MEDIA[fields[0][0]]
    if not accept or not accept.strip():
        return Format.JSON
    best: tuple[float, int, Format] | None = None
    for index, (media, q, params) in enumerate(_media_ranges(accept)):
        _check_version(params)
        if q <= 0:
            continue
        found = Format.JSON if media in _WILDCARDS else _MEDIA.get(media)
        if found is None:
            continue
        rank = (q, -index, found)
        if best is None or rank[:2] > best[:2]:
            best = rank
    if best is None:
        raise outcome.format_not_supported()
    return best[2]


def request_body_format(content_type: str | None) -> Format:
    """The format of a request body (Parameters of an operation), or a 415 FhirError."""
    ranges = _media_ranges(content_type or "")
    if not ranges or ranges[0][0] not in _MEDIA:
        raise outcome.content_type_not_supported()
    if ranges[0][2].get("fhirversion", "4.0") not in _FHIR_VERSIONS:
        raise outcome.fhir_version_not_supported()
    return _MEDIA[ranges[0][0]]


def dumps_json(resource: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    if _orjson is not None and not pretty:
        return bytes(_orjson.dumps(resource))
    if pretty:
        return json.dumps(resource, indent=2, ensure_ascii=False).encode()
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_xml(resource: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    """FHIR XML of ``resource`` through its R4B model (element order, primitives, xhtml)."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - XML only

    model = get_fhir_model_class(str(resource["resourceType"])).model_validate(dict(resource))
    xml: Any = model.model_dump_xml(pretty_print=pretty)  # bytes (typed str upstream)
    return xml if isinstance(xml, bytes) else str(xml).encode()


def serialize(resource: Mapping[str, Any], fmt: Format, *, pretty: bool = False) -> bytes:
    return dumps_json(resource, pretty=pretty) if fmt is Format.JSON else dumps_xml(
        resource, pretty=pretty)


def parse_body(body: bytes, fmt: Format) -> dict[str, Any]:
    """A request body (JSON or XML) as a FHIR JSON dict, or a 400 FhirError."""
    if fmt is Format.JSON:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise outcome.bad_request(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise outcome.bad_request("The request body is not a FHIR resource")
        return doc
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - XML only

    try:
        model = get_fhir_model_class("Parameters").model_validate_xml(body)
    except Exception as exc:  # lxml or pydantic: both mean a body we cannot read
        raise outcome.bad_request(f"The request body is not a FHIR Parameters resource in "
                                  f"XML: {str(exc).splitlines()[0][:200]}") from None
    parsed: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return parsed
