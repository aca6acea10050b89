"""Optional HTTP Basic authentication for the dashboard (RFC 7617).

The password is kept only as a salted PBKDF2-HMAC-SHA256 hash in the form
``pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>``; make one with
``python -m bridge.dashboard.auth`` (it asks for the password). Basic auth sends the
password with every request, so it is only acceptable over TLS, and it is a second fence: the
dashboard still belongs behind the maker's own access control.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
import threading
from dataclasses import dataclass

from bridge.dashboard import DashboardError

SCHEME = "pbkdf2-sha256"
#: OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
DEFAULT_ITERATIONS = 600_000
_MIN_ITERATIONS = 1_000


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The storable hash of ``password``."""
    if iterations < _MIN_ITERATIONS:
        raise DashboardError(f"at least {_MIN_ITERATIONS} PBKDF2 iterations, got {iterations}")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return (f"{SCHEME}${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed hash from :func:`hash_password`."""

    iterations: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 4 or parts[0] != SCHEME:
            raise DashboardError(f"password hash must look like '{SCHEME}$<iterations>$<salt>"
                                 f"$<hash>' (make one with python -m bridge.dashboard.auth)")
        try:
            iterations = int(parts[1])
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
        except (ValueError, binascii.Error):
            raise DashboardError("password hash: iterations must be a number, salt and hash "
                                 "base64") from None
        if iterations < _MIN_ITERATIONS or len(digest) != 32 or not salt:
            raise DashboardError(f"password hash: at least {_MIN_ITERATIONS} iterations, a "
                                 "salt and a 32-byte SHA-256 hash")
        return cls(iterations, salt, digest)

    def matches(self, password: str) -> bool:
        candidate = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), self.salt,
                                        self.iterations)
        return hmac.compare_digest(candidate, self.digest)


class BasicAuth:
    """The one dashboard user: ``username`` and the hash of the password.

    PBKDF2 is slow on purpose (a fraction of a second on a Pi), so a header that matched once
    is remembered by its SHA-256 (at most :attr:`CACHE_SIZE` of them) and not hashed again on
    every page view.
    """

    CACHE_SIZE = 16

    def __init__(self, username: str, password_hash: str) -> None:
        if not username or ":" in username:
            raise DashboardError("basic auth user name: not empty, no ':' (RFC 7617 §2)")
        self.username = username
        self._hash = PasswordHash.parse(password_hash)
        self._accepted: dict[bytes, None] = {}
        # Checks run in the server's thread pool.
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` header carries this user and password."""
        if authorization is None:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        fingerprint = hashlib.sha256(authorization.encode("utf-8", "replace")).digest()
        with self._lock:
            if fingerprint in self._accepted:
                return True
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        if not sep:
            return False
        # Both compared always, so the timing does not tell which one was wrong.
        name_ok = hmac.compare_digest(username.encode(), self.username.encode())
        password_ok = self._hash.matches(password)
        if name_ok and password_ok:
            with self._lock:
                if len(self._accepted) >= self.CACHE_SIZE:
                    self._accepted.pop(next(iter(self._accepted)))
                self._accepted[fingerprint] = None
            return True
        return False


def main() -> int:
    """Print the hash of a password read from the terminal (or one line of stdin)."""
    if sys.stdin.isatty():
        password = getpass.getpass("dashboard password: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
