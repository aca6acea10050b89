"""Patient logins of the maker's portal (HDDT leaves patient authentication to the Device
Data Recorder; security-and-privacy.md "Identification and Authentication of the Patient").

Passwords are kept as scrypt hashes with a per-account random salt
(``scrypt$<n>$<r>$<p>$<salt>$<hash>``, base64); checking takes constant time whether or not
the user name exists.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.auth.errors import AccountError
from bridge.auth.tables import portal_accounts
from bridge.backend.registry import get_patient
from bridge.backend.store import audit

#: scrypt cost (RFC 7914): 2**14 x 8 x 1 takes about 16 MiB and some tens of milliseconds.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LEN = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt),
                                n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


# Checked against when the user name is unknown, so that the answer takes as long.
_DUMMY_HASH = hash_password("not a password", salt=b"\x00" * 16)


def add_account(conn: Connection, username: str, password: str, *, patient_id: str,
                actor: str) -> None:
    """Create the portal login of ``patient_id`` (:class:`AccountError` when refused)."""
    if not username or len(username) > 128 or username != username.strip():
        raise AccountError("a user name has 1 to 128 characters without surrounding spaces")
    if len(password) < MIN_PASSWORD_LEN:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LEN} characters")
    if get_patient(conn, patient_id) is None:
        raise AccountError(f"patient {patient_id!r} is not provisioned")
    taken = conn.execute(sa.select(portal_accounts.c.username).where(
        portal_accounts.c.username == username)).first()
    if taken is not None:
        raise AccountError(f"user name {username!r} is taken")
    conn.execute(portal_accounts.insert().values(
        username=username, password_hash=hash_password(password), patient_id=patient_id,
        created_at=dt.datetime.now(dt.UTC)))
    audit(conn, actor=actor, action="portal-account-created", subject_type="patient",
          subject_id=patient_id, patient_id=patient_id)


def authenticate(conn: Connection, username: str, password: str) -> str | None:
    """The patient id of a correct login, else None."""
    row = conn.execute(sa.select(portal_accounts).where(
        portal_accounts.c.username == username)).first()
    if row is None:
        verify_password(_DUMMY_HASH, password)
        return None
    return str(row.patient_id) if verify_password(row.password_hash, password) else None
