"""HDDT authorization server, DiGA directory stand-in, patient portal and mutual TLS.

* :mod:`bridge.auth.server` OAuth 2.0 endpoints (PAR, authorize, token, revoke, metadata) on
  Authlib, client authentication ``tls_client_auth`` (HDDT pairing.md, authorization-server*.md);
* :mod:`bridge.auth.tokens` signed JWT access tokens, JWKS and the resource server's
  :class:`~bridge.auth.tokens.JwtAccessResolver`;
* :mod:`bridge.auth.portal` the patient portal (login, consent, pairings with revoke);
* :mod:`bridge.auth.directory`, :mod:`bridge.auth.accounts`, :mod:`bridge.auth.pairing` the
  rows behind them (:mod:`bridge.auth.tables`);
* :mod:`bridge.auth.tls` the client certificate of the TLS connection for the application;
  :mod:`bridge.auth.pki` the sandbox PKI.
"""

from bridge.auth.errors import AccountError, AuthError, DirectoryError, OAuthError

__all__ = ["AccountError", "AuthError", "DirectoryError", "OAuthError"]
