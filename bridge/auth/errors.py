"""The one exception root of :mod:`bridge.auth` and the OAuth error it answers with."""

from __future__ import annotations

from bridge.errors import BridgeError


class AuthError(BridgeError):
    """Root of every error the authorization server, portal and directory raise on purpose."""


class DirectoryError(AuthError):
    """A DiGA client registration is malformed or refers to an unknown client."""


class AccountError(AuthError):
    """A portal account cannot be created (unknown patient, taken user name, weak password)."""


class OAuthError(AuthError):
    """An OAuth 2.0 error response: HTTP ``status``, ``error`` code and ``description``.

    The texts of the DiGA-VZ rows are those of HDDT error-codes.md ("Specification-Specific
    Error Handling Requirements"); see :mod:`bridge.auth.server`.
    """

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{status} {error}: {description}")

    def body(self) -> dict[str, str]:
        """The JSON error body (RFC 6749 section 5.2)."""
        return {"error": self.error, "error_description": self.description}
