"""The DiGA client's errors: one root, each carrying what the server or the file said."""

from __future__ import annotations

from bridge.errors import BridgeError


class DigaError(BridgeError):
    """Root of every error the DiGA reference client raises on purpose."""


class ConnectionFileError(DigaError):
    """The connection file (or a file it names) is missing or malformed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StateFileError(DigaError):
    """A pairing state file cannot be read or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DiscoveryError(DigaError):
    """The authorization server metadata (RFC 8414) is missing something HDDT requires."""

    def __init__(self, issuer: str, reason: str) -> None:
        self.issuer = issuer
        self.reason = reason
        super().__init__(f"authorization server {issuer}: {reason}")


class OAuthError(DigaError):
    """An OAuth 2.0 error response (RFC 6749 §5.2, RFC 9126, RFC 7009) from an endpoint.

    ``error`` is the RFC error code (``invalid_client``, ``invalid_grant``, ``invalid_scope``,
    …), ``description`` the server's ``error_description``.
    """

    def __init__(self, endpoint: str, status: int, error: str, description: str = "") -> None:
        self.endpoint = endpoint
        self.status = status
        self.error = error
        self.description = description
        detail = f": {description}" if description else ""
        super().__init__(f"{endpoint} answered {status} {error}{detail}")


class AuthorizationDenied(DigaError):
    """The authorization endpoint redirected back with an error (RFC 6749 §4.1.2.1), e.g.
    ``access_denied`` when the patient declined the consent."""

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        self.description = description
        detail = f": {description}" if description else ""
        super().__init__(f"authorization refused: {error}{detail}")


class PairingFlowError(DigaError):
    """The browser part of the pairing went somewhere the client did not expect: a state
    mismatch, a redirect to a foreign origin, a page without the expected form."""

    def __init__(self, reason: str, url: str = "") -> None:
        self.reason = reason
        self.url = url
        where = f" (at {url})" if url else ""
        super().__init__(f"pairing: {reason}{where}")


class FormError(DigaError):
    """An HTML page of the portal does not hold the form the client looks for."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotPaired(DigaError):
    """The pairing has no usable tokens (never completed, unpaired, or revoked)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"pairing {name!r}: {reason}")


class PairingRevoked(NotPaired):
    """The Device Data Recorder refused the refresh token with ``invalid_grant``: the patient
    or the system ended the pairing (pairing.md, "Unpairing by the patient")."""


class FhirError(DigaError):
    """The FHIR resource server answered with an error status.

    ``diagnostics`` holds the OperationOutcome's ``issue.diagnostics`` (or the OAuth
    ``error_description`` of a 401/403), ``error`` the ``WWW-Authenticate`` error code.
    """

    def __init__(self, url: str, status: int, diagnostics: str = "", error: str = "") -> None:
        self.url = url
        self.status = status
        self.diagnostics = diagnostics
        self.error = error
        parts = [p for p in (error, diagnostics) if p]
        detail = f": {' - '.join(parts)}" if parts else ""
        super().__init__(f"{url} answered {status}{detail}")


class BundleError(DigaError):
    """A FHIR response that is not the Bundle or Observation the specification promises."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
