"""Who is asking: the access grant behind a request to the HDDT resource server.

The seam between the authorization server (:mod:`bridge.auth`) and the FHIR resource server
(:mod:`bridge.hddt`). The resource server never reads a patient from the request; it asks an
:class:`AccessResolver` for the :class:`AccessGrant` of the request's credentials and serves
only that grant's patient, filtered by its SMART scopes (HDDT "SMART Scopes": Observation is
the anchor; Device and DeviceMetric only through an authorized Observation).

Resolvers:

* :class:`bridge.auth.tokens.JwtAccessResolver` (the real one): validates the signed access
  token (issuer, audience, expiry, not-before), looks the pairing up (consent active, not
  revoked or expired) and checks that the client certificate presented on this connection
  belongs to the token's client.
* :class:`StaticAccessResolver`: fixed bearer strings mapped to grants, for embedding the
  resource server without an authorization server (unit tests of the FHIR layer).

The client certificate of the connection reaches the application in the ASGI TLS extension,
``scope["extensions"]["tls"]["client_cert_chain"]`` (PEM strings, leaf first): put there by
the project's uvicorn protocol when the server terminates TLS itself, or by the trusted-proxy
middleware from the proxy's forwarded-certificate header (see docs/security.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import HTTPConnection

from bridge.errors import BridgeError

# --- scopes (HDDT "SMART Scopes", smart-scopes.md) ---------------------------------------------

#: MIV value sets published by gematik (the ``code:in`` of an Observation scope).
MIV_BLOOD_GLUCOSE = "https://gematik.de/fhir/hddt/ValueSet/hddt-miv-blood-glucose-measurement"
MIV_CONTINUOUS_GLUCOSE = (
    "https://gematik.de/fhir/hddt/ValueSet/hddt-miv-continuous-glucose-measurement")
#: Project-defined value set for pump insulin delivery: NOT an HDDT v1 MIV (docs/hddt-api.md).
PROJECT_INSULIN_DELIVERY = (
    "https://hddt-bridge.github.io/fhir/ValueSet/hddt-bridge-insulin-delivery")

NORMATIVE_MIVS: frozenset[str] = frozenset({MIV_BLOOD_GLUCOSE, MIV_CONTINUOUS_GLUCOSE})
KNOWN_VALUE_SETS: frozenset[str] = NORMATIVE_MIVS | {PROJECT_INSULIN_DELIVERY}

SCOPE_DEVICE = "patient/Device.rs"
SCOPE_DEVICE_METRIC = "patient/DeviceMetric.rs"
_OBSERVATION_SCOPE_PREFIX = "patient/Observation.rs?code:in="


def observation_scope(value_set: str) -> str:
    """The SMART scope that grants read and search of Observations coded in ``value_set``."""
    return _OBSERVATION_SCOPE_PREFIX + value_set


def observation_value_set(scope: str) -> str | None:
    """The value set of an Observation scope, or None when ``scope`` is not one."""
    if scope.startswith(_OBSERVATION_SCOPE_PREFIX):
        value_set = scope[len(_OBSERVATION_SCOPE_PREFIX):]
        return value_set or None
    return None


# --- the grant -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What one request may see: one patient, through one pairing, with these scopes."""

    #: The pairing id: the access token's ``sub``; the key of the audit log.
    pairing_id: str
    #: The backend's patient id behind the pairing (never exposed to the DiGA).
    patient_id: str
    #: The DiGA's client id (``urn:diga:bfarm:`` + 5 digits).
    client_id: str
    #: Granted SMART scopes, exactly as consented.
    scopes: frozenset[str]
    #: When the access token expires (None for static grants).
    expires_at: dt.datetime | None = None
    #: The token's ``jti`` (None for static grants).
    token_id: str | None = None

    @property
    def value_sets(self) -> frozenset[str]:
        """Value sets of the granted Observation scopes (the implicit ``code`` filter)."""
        found = (observation_value_set(s) for s in self.scopes)
        return frozenset(v for v in found if v is not None)

    def may_read(self, resource_type: str) -> bool:
        """Whether the scopes admit ``resource_type`` at all (Device/DeviceMetric also need an
        authorized Observation that references them; the resource server checks that)."""
        if resource_type == "Observation":
            return bool(self.value_sets)
        if resource_type == "Device":
            return SCOPE_DEVICE in self.scopes
        if resource_type == "DeviceMetric":
            return SCOPE_DEVICE_METRIC in self.scopes
        return False


class AccessDenied(BridgeError):
    """The request's credentials give no access (HDDT error-codes.md, resource server rows).

    Rendered by the resource server as ``status`` with the header
    ``WWW-Authenticate: Bearer error="<error>", error_description="<description>"`` and the
    JSON body ``{"error": …, "error_description": …}``. ``error`` is an RFC 6750 code:
    ``invalid_token`` (401: missing, not a signed JWT, wrong issuer, expired, not yet valid,
    revoked pairing or consent, client certificate not the token's client) or
    ``insufficient_scope`` (403). A read of a resource outside the grant is not an
    AccessDenied: the resource server answers 404 as for a resource that does not exist.
    """

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{status} {error}: {description}")


class AccessResolver(Protocol):
    """Turns a request's credentials into its grant, or raises :class:`AccessDenied`."""

    async def resolve(self, connection: HTTPConnection) -> AccessGrant: ...


@dataclass(slots=True)
class StaticAccessResolver:
    """Fixed bearer strings → grants. For embedding the FHIR layer without token issuing."""

    grants: Mapping[str, AccessGrant] = field(default_factory=dict)

    async def resolve(self, connection: HTTPConnection) -> AccessGrant:
        token = bearer_token(connection)
        grant = self.grants.get(token)
        if grant is None:
            raise AccessDenied(401, "invalid_token", "The access token is not valid")
        return grant


def bearer_token(connection: HTTPConnection) -> str:
    """The ``Authorization: Bearer`` credential, or :class:`AccessDenied` (401)."""
    header = connection.headers.get("authorization")
    if not header:
        raise AccessDenied(401, "invalid_token", "No access token (Authorization: Bearer)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AccessDenied(401, "invalid_token", "The Authorization header is not a Bearer token")
    return token.strip()


def client_certificate_chain(connection: HTTPConnection) -> list[str]:
    """PEM certificates the client presented on this connection (leaf first), or []."""
    extensions = connection.scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return [str(pem) for pem in chain]
