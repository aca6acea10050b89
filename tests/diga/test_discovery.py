"""Authorization server metadata: what the DiGA checks before pairing (RFC 8414, HDDT)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.diga.client import ServerMetadata
from bridge.diga.errors import DiscoveryError

ISSUER = "https://ddr.example"


def _metadata() -> dict[str, Any]:
    return {"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize",
            "token_endpoint": f"{ISSUER}/token", "revocation_endpoint": f"{ISSUER}/revoke",
            "pushed_authorization_request_endpoint": f"{ISSUER}/par",
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
            "require_pushed_authorization_requests": True,
            "tls_client_certificate_bound_access_tokens": False,
            "scopes_supported": ["patient/Device.rs"]}


def test_accepts_hddt_metadata() -> None:
    meta = ServerMetadata.from_json(ISSUER + "/", _metadata())
    assert meta.pushed_authorization_request_endpoint == f"{ISSUER}/par"
    assert meta.scopes_supported == ("patient/Device.rs",)


@pytest.mark.parametrize("key,value,message", [
    ("issuer", "https://other.example", "names issuer"),
    ("require_pushed_authorization_requests", False, "require_pushed_authorization_requests"),
    ("code_challenge_methods_supported", ["plain"], "does not list 'S256'"),
    ("token_endpoint_auth_methods_supported", ["client_secret_basic"], "tls_client_auth"),
    ("tls_client_certificate_bound_access_tokens", True, "bound_access_tokens"),
    ("token_endpoint", "http://ddr.example/token", "token_endpoint is missing or not"),
])
def test_refuses_what_hddt_forbids(key: str, value: Any, message: str) -> None:
    data = _metadata()
    data[key] = value
    with pytest.raises(DiscoveryError, match=message):
        ServerMetadata.from_json(ISSUER, data)
