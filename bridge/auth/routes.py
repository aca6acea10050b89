"""HTTP routes of the authorization server: metadata, ``/par``, ``/token``, ``/revoke``,
``/jwks`` (``/authorize`` is in :mod:`bridge.auth.portal`, where the patient is)."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridge.auth.errors import OAuthError
from bridge.auth.server import (
    HddtAuthorizationServer,
    HddtRequest,
    audit_refusal,
    oauth_error_response,
    oauth_request,
    run_endpoint,
)


def auth_routes(server: HddtAuthorizationServer) -> list[BaseRoute]:
    """The routes, to mount at the issuer's root."""
    settings = server.settings

    async def metadata(request: Request) -> Response:
        return JSONResponse(server.metadata())

    async def jwks(request: Request) -> Response:
        return JSONResponse(server.signer.jwks())

    async def par(request: Request) -> Response:
        req = await oauth_request(request, settings)

        def work() -> Response:
            try:
                body = server.push_authorization_request(req)
            except OAuthError as exc:
                return oauth_error_response(exc)
            # RFC 9126 section 2.2: 201 Created.
            return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})

        return await _refusals_audited(server, "par", req, work)

    async def token(request: Request) -> Response:
        req = await oauth_request(request, settings)
        return await _refusals_audited(server, "token", req,
                                       lambda: server.create_token_response(req))

    async def revoke(request: Request) -> Response:
        req = await oauth_request(request, settings)

        def work() -> Response:
            response: Response = server.create_endpoint_response("revocation", req)
            if response.status_code == 200:
                # Revocation endpoint page: no content on success.
                return Response(status_code=200, headers={"Cache-Control": "no-store"})
            return response

        return await _refusals_audited(server, "revoke", req, work)

    return [
        Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
        Route("/jwks", jwks, methods=["GET"]),
        Route("/par", par, methods=["POST"]),
        Route("/token", token, methods=["POST"]),
        Route("/revoke", revoke, methods=["POST"]),
    ]


async def _refusals_audited(server: HddtAuthorizationServer, endpoint: str, req: HddtRequest,
                            work: Callable[[], Response]) -> Response:
    response: Response = await run_endpoint(server, work)
    if response.status_code >= 400:
        try:
            body = json.loads(bytes(response.body))
        except ValueError:
            body = None
        await run_endpoint(server, lambda: audit_refusal(endpoint, req,
                                                         response.status_code, body))
    return response
