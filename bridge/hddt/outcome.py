"""OperationOutcome bodies and the FHIR errors of the resource server (error-codes.md).

Each error the resource server answers is a :class:`FhirError` carrying its HTTP status,
issue code and diagnostics; the constructors below give the exact texts of the spec's
"Resource Server Errors" table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge.hddt.errors import HddtError

#: Media types the server speaks (error-codes.md 406/415 diagnostics).
SUPPORTED_FORMATS_TEXT = "application/fhir+json, application/fhir+xml"


def issue(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    """One OperationOutcome issue."""
    return {"severity": severity, "code": code, "diagnostics": diagnostics}


def operation_outcome(issues: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome resource (plain dict)."""
    return {"resourceType": "OperationOutcome", "issue": [dict(i) for i in issues]}


class FhirError(HddtError):
    """An error answered as an OperationOutcome with ``status``."""

    def __init__(self, status: int, code: str, diagnostics: str, *,
                 headers: Mapping[str, str] | None = None,
                 extra: Sequence[Mapping[str, Any]] = ()) -> None:
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = dict(headers or {})
        self.extra = list(extra)
        super().__init__(f"{status} {code}: {diagnostics}")

    def outcome(self) -> dict[str, Any]:
        return operation_outcome([issue("error", self.code, self.diagnostics), *self.extra])


def unknown_parameter(name: str, supported: Sequence[str]) -> FhirError:
    """400: a search parameter the server does not know; the supported ones follow as a
    second, informational issue so the first keeps the spec's exact text."""
    return FhirError(400, "processing", f"Unknown search parameter {name}", extra=[
        issue("information", "informational",
              "Supported search parameters: " + ", ".join(supported))])


def invalid_date(value: str, why: str = "") -> FhirError:
    text = f"Invalid date/time format or date range: {value}"
    return FhirError(400, "processing", text + (f" ({why})" if why else ""))


def invalid_include(value: str) -> FhirError:
    return FhirError(400, "processing", f"Invalid _include parameter value: {value}")


def invalid_parameter(name: str, value: str, why: str) -> FhirError:
    """400 for a malformed value of a known parameter (FHIR search rules)."""
    return FhirError(400, "processing", f"Invalid value of search parameter {name}: "
                                        f"{value!r} ({why})")


def patient_parameter(name: str) -> FhirError:
    """400: the patient comes from the access token only (retrieving-data.md)."""
    return FhirError(400, "processing",
                     f"Search parameter {name} is not allowed: the patient is given by the "
                     "access token")


def not_known(reference: str) -> FhirError:
    return FhirError(404, "processing", f"Resource {reference} is not known")


def version_not_valid(version: str, reference: str) -> FhirError:
    return FhirError(404, "processing", f"Version {version} is not valid for resource "
                                        f"{reference}.")


def expired(reference: str, status: int) -> FhirError:
    """A read of data older than the Historic-Data-Period: 404 (observation page) or 410
    (error-codes "Resource was deleted"), as configured."""
    if status == 410:
        return FhirError(410, "processing", "Resource was deleted")
    return FhirError(404, "processing", f"Resource {reference} is not known: it lies outside "
                                        "the historic data period of this service")


def format_not_supported() -> FhirError:
    return FhirError(406, "not-supported",
                     f"Requested format not supported. Supported formats: "
                     f"{SUPPORTED_FORMATS_TEXT}")


def fhir_version_not_supported() -> FhirError:
    return FhirError(406, "not-supported",
                     "FHIR version not supported. This server supports FHIR R4 (version 4.0.1)")


def content_type_not_supported() -> FhirError:
    return FhirError(415, "not-supported",
                     f"Content-Type not supported. Supported formats: {SUPPORTED_FORMATS_TEXT}")


def throttled(retry_after_s: int) -> FhirError:
    return FhirError(429, "throttled",
                     "Rate limit exceeded. Please retry after the specified time.",
                     headers={"Retry-After": str(max(1, retry_after_s))})


def method_not_allowed(method: str, path: str) -> FhirError:
    """405: the HDDT interface is read-only."""
    return FhirError(405, "not-supported",
                     f"{method} {path} is not allowed: this interface is read-only",
                     headers={"Allow": "GET"})


def server_failure(reason: str) -> FhirError:
    return FhirError(500, "exception", reason)


def bad_request(diagnostics: str) -> FhirError:
    return FhirError(400, "processing", diagnostics)


def code_not_in_value_set(code: str, value_sets: Sequence[str]) -> dict[str, Any]:
    """The warning put in a Bundle for a requested code outside the granted MIVs."""
    return issue("warning", "processing", f"Code {code} not in ValueSet {' or '.join(value_sets)}")


HISTORIC_RANGE_WARNING = issue(
    "warning", "processing",
    "Search includes a time range which is outside the historical time range of this service. "
    "Potentially no matches found.")
