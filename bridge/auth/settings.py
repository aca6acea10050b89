"""Settings of the authorization server and its secrets (signing key, Pairing ID salt,
portal session key), kept as files in one state folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.auth.errors import AuthError

#: pairing.md "Refresh Tokens": a lifetime of 30 days.
REFRESH_TOKEN_LIFETIME_S = 30 * 24 * 3600
#: The same header name nginx's ``$ssl_client_escaped_cert`` is usually forwarded under.
DEFAULT_PROXY_CERT_HEADER = "x-ssl-client-cert"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How the authorization server is reached and what it issues.

    ``issuer`` is the base URL of the authorization server (``https://host:port``, no trailing
    slash); ``audience`` the FHIR base URL the access tokens are for.
    """

    issuer: str
    audience: str
    #: Folder of the signing key, the Pairing ID salt and the portal session key.
    state_dir: Path
    #: pairing.md: "defined by the provider" (availability versus security).
    access_token_lifetime_s: int = 600
    #: RFC 9126 example: 90 s between PAR and the patient arriving at /authorize (here more,
    #: since a patient logs in on the way).
    par_lifetime_s: int = 600
    #: RFC 6749 section 4.1.2: codes expire shortly (10 minutes at most).
    code_lifetime_s: int = 60
    #: A portal login lasts this long.
    session_lifetime_s: int = 1800
    #: Portal login throttling (:mod:`bridge.auth.accounts`): this many failed logins for one
    #: login name within ``login_failure_window_s`` refuse further attempts for it (429) until
    #: the oldest of them is that old.
    login_max_failures: int = 5
    login_failure_window_s: int = 900
    #: The same for all login names tried from one client address (0: no such limit). Higher
    #: than the per-name limit, since patients may share an address (a carrier's NAT).
    login_max_failures_per_address: int = 50
    service_documentation: str | None = None
    #: Client addresses of reverse proxies whose forwarded client certificate is believed.
    trusted_proxies: tuple[str, ...] = ()
    proxy_cert_header: str = DEFAULT_PROXY_CERT_HEADER
    #: Portal cookies carry Secure (off only for plain-HTTP unit tests).
    secure_cookies: bool = True

    @property
    def documentation_url(self) -> str:
        return self.service_documentation or f"{self.issuer}/portal/client-registration"


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # A concurrent first start may have written it meanwhile: keep the first one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _secret(path: Path, make: bytes) -> bytes:
    if not path.exists():
        _write_secret(path, make)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class AuthSecrets:
    """The server's secrets, created on first use."""

    signing_key: ec.EllipticCurvePrivateKey
    pairing_salt: bytes
    session_key: bytes

    @classmethod
    def load(cls, state_dir: Path) -> AuthSecrets:
        new_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        pem = _secret(state_dir / "signing-key.pem", new_key)
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as exc:
            raise AuthError(f"{state_dir / 'signing-key.pem'}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthError(f"{state_dir / 'signing-key.pem'} is not an EC P-256 key")
        # pairing.md: a salt of sufficient length, e.g. 128 bits; 256 here.
        salt = _secret(state_dir / "pairing-salt", secrets.token_bytes(32))
        session = _secret(state_dir / "session-key", secrets.token_bytes(32))
        if len(salt) < 16 or len(session) < 16:
            raise AuthError(f"{state_dir}: pairing-salt and session-key need 16 bytes or more")
        return cls(key, salt, session)
