"""The TLS client certificate of a connection, handed to the application.

HDDT security-and-privacy.md (c): the TLS layer only determines the client's certificate; it
"MUST then be passed on to the application layer", where it is compared with the directory
entry of the ``client_id``. The ASGI TLS extension carries it:
``scope["extensions"]["tls"]["client_cert_chain"]`` (PEM strings, leaf first), read by
:func:`bridge.hddt.access.client_certificate_chain`.

Two ways to fill it:

* :class:`ClientCertH11Protocol`: uvicorn's HTTP/1.1 protocol (h11), which terminates TLS
  itself but does not publish the peer certificate; this subclass reads the verified
  certificate from the connection's SSL object once per connection and adds the extension
  to every request on it. uvicorn runs with ``ssl_cert_reqs=CERT_OPTIONAL`` so that a client
  without certificate still reaches the portal, while the OAuth and FHIR endpoints refuse it.
* :class:`TrustedProxyMiddleware` (opt in): behind a reverse proxy that terminates TLS and
  verifies the client certificate, the proxy forwards it URL-encoded in a header (nginx
  ``$ssl_client_escaped_cert``). The header is believed only from the configured proxy
  addresses and is removed from requests of anyone else, so a client cannot claim a
  certificate by sending the header itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


def peer_certificate_pem(transport: asyncio.BaseTransport) -> str | None:
    """The verified client certificate of a TLS transport, PEM, or None."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if not der else ssl.DER_cert_to_PEM_cert(der)


def with_tls_extension(scope: Scope, chain: list[str]) -> Scope:
    """A copy of ``scope`` whose TLS extension names ``chain`` (other extensions kept)."""
    extensions = dict(scope.get("extensions") or {})
    tls = dict(extensions.get("tls") or {})
    tls["client_cert_chain"] = list(chain)
    extensions["tls"] = tls
    return {**scope, "extensions": extensions}


class _WithClientCert:
    """The application, seeing one connection's client certificate on every request."""

    def __init__(self, app: ASGIApp, chain: list[str]) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = with_tls_extension(scope, self.chain)
        await self.app(scope, receive, send)


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol publishing the TLS client certificate (``http=`` this class)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        pem = peer_certificate_pem(transport)
        # Every request of this connection runs the wrapped application; the chain is empty
        # for a connection without client certificate.
        self.app = _WithClientCert(self.app, [pem] if pem else [])


ProxyNetworks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def proxy_networks(proxies: Iterable[str]) -> ProxyNetworks:
    """The trusted reverse proxies (``[api] trusted_proxies``: addresses or networks)."""
    return [ipaddress.ip_network(p, strict=False) for p in proxies]


def from_trusted_proxy(scope: Scope, networks: ProxyNetworks) -> bool:
    """Whether the request's peer is one of the trusted reverse proxies."""
    client: Any = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


class TrustedProxyMiddleware:
    """Takes the client certificate from ``header`` when the request comes from a trusted
    proxy address (IP or network); strips the header from everyone else's requests."""

    def __init__(self, app: ASGIApp, *, proxies: Iterable[str], header: str) -> None:
        self.app = app
        self.networks = proxy_networks(proxies)
        self.header = header.lower().encode("latin-1")

    def trusted(self, scope: Scope) -> bool:
        return from_trusted_proxy(scope, self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope["headers"] if k == self.header]
        headers = [(k, v) for k, v in scope["headers"] if k != self.header]
        scope = {**scope, "headers": headers}
        if self.trusted(scope):
            pem = unquote(values[0].decode("latin-1")) if len(values) == 1 else ""
            chain = [pem] if "BEGIN CERTIFICATE" in pem else []
            scope = with_tls_extension(scope, chain)
        await self.app(scope, receive, send)
