"""PKCE (RFC 7636): the code verifier and its S256 challenge.

HDDT requires PKCE with ``S256`` for every pairing (pairing.md, RFC table; PAR endpoint
parameters ``code_challenge`` and ``code_challenge_method=S256``). The verifier stays in the
DiGA backend; only the challenge travels in the pushed authorization request, and the verifier
is shown once, at the token endpoint, proving that the code exchange comes from the party that
started the flow.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from bridge.diga.errors import DigaError

#: RFC 7636 §4.1: 43 to 128 characters of ALPHA / DIGIT / "-" / "." / "_" / "~".
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def make_verifier(entropy_bytes: int = 32) -> str:
    """A fresh high-entropy code verifier: base64url of ``entropy_bytes`` random octets
    (RFC 7636 §4.1 recommends 32 octets, giving 43 characters)."""
    if not 32 <= entropy_bytes <= 96:
        raise DigaError(f"PKCE verifier entropy must be 32 to 96 bytes, not {entropy_bytes}")
    return _b64url(secrets.token_bytes(entropy_bytes))


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 §4.2)."""
    if not _VERIFIER.fullmatch(verifier):
        raise DigaError("a PKCE code verifier is 43-128 characters of A-Z a-z 0-9 - . _ ~")
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def make_state() -> str:
    """An unguessable ``state`` value binding the redirect to this pairing attempt
    (RFC 6749 §10.12)."""
    return secrets.token_urlsafe(24)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
