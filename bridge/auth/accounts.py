"""Patient logins of the maker's portal (HDDT leaves patient authentication to the Device
Data Recorder; security-and-privacy.md "Identification and Authentication of the Patient").

Passwords are kept as scrypt hashes with a per-account random salt
(``scrypt$<n>$<r>$<p>$<salt>$<hash>``, base64); checking takes constant time whether or not
the user name exists.

Logins are throttled (:func:`throttled_login`; HDDT leaves patient authentication to the
Device Data Recorder, security-and-privacy.md "Limits of security performance", so the
limits are the maker's own): failed logins are rows of ``portal_login_failures`` in the
store, so a lockout holds across restarts and for every server process on the same database.
A login name (known or not: the answer must not tell which) with ``max_failures`` failures
in the window, or a client address with ``max_failures_per_address``, is refused without
checking the password until enough of those failures are older than the window; a correct
login clears the name's failures.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import math
import os
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.auth.errors import AccountError
from bridge.auth.settings import AuthSettings
from bridge.auth.tables import portal_accounts, portal_login_failures
from bridge.backend.registry import get_patient
from bridge.backend.store import Store, audit

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


# --- throttling ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoginLimits:
    """How many failed logins are allowed within ``window``: per login name, and per client
    address (0: no per-address limit)."""

    max_failures: int = 5
    window: dt.timedelta = dt.timedelta(minutes=15)
    max_failures_per_address: int = 50

    @classmethod
    def of(cls, settings: AuthSettings) -> LoginLimits:
        return cls(settings.login_max_failures,
                   dt.timedelta(seconds=settings.login_failure_window_s),
                   settings.login_max_failures_per_address)


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """Too many failed logins: no password was checked; try again in ``retry_after_s``."""

    retry_after_s: int


def login_key(username: str) -> str:
    """What ``portal_login_failures`` keeps of a login name: its SHA-256, hex."""
    return hashlib.sha256(username.encode("utf-8")).hexdigest()


def _locked_for(conn: Connection, column: sa.ColumnElement[str], value: str, *, limit: int,
                attempt_id: int, limits: LoginLimits,
                now: dt.datetime) -> dt.timedelta | None:
    """How long ``value`` stays locked, None if it is not: it is locked while ``limit``
    other failures (or attempts still running) lie in the window, until the ``limit``-th
    newest of them leaves it."""
    if limit <= 0:
        return None
    t = portal_login_failures
    newest: list[dt.datetime] = list(conn.execute(
        sa.select(t.c.failed_at)
        .where(column == value, t.c.failed_at > now - limits.window, t.c.id != attempt_id)
        .order_by(t.c.failed_at.desc()).limit(limit)).scalars())
    if len(newest) < limit:
        return None
    return newest[-1] + limits.window - now


def throttled_login(store: Store, username: str, password: str, *, client_address: str,
                    limits: LoginLimits,
                    now: dt.datetime | None = None) -> str | LoginRefused | None:
    """The patient id of a correct login, None for a wrong one, :class:`LoginRefused` while
    the login name or the client address is locked.

    The attempt is recorded (and committed) as a failure before anything is counted, and
    cleared again if refused or correct. Concurrent attempts, in this process or another,
    thus each see the others: at most ``max_failures`` passwords are checked per window and
    name, however many requests arrive at once.
    """
    now = now or dt.datetime.now(dt.UTC)
    t = portal_login_failures
    key = login_key(username)
    address = client_address[:45]
    with store.begin() as conn:
        # Rows past the window count for nothing any more.
        conn.execute(t.delete().where(t.c.failed_at <= now - limits.window))
        inserted = conn.execute(t.insert().values(login_sha256=key, client_address=address,
                                                  failed_at=now))
        row_id = inserted.inserted_primary_key
        assert row_id is not None
        attempt_id = int(row_id[0])
    with store.read() as conn:
        waits = [w for w in (
            _locked_for(conn, t.c.login_sha256, key, limit=limits.max_failures,
                        attempt_id=attempt_id, limits=limits, now=now),
            _locked_for(conn, t.c.client_address, address,
                        limit=limits.max_failures_per_address, attempt_id=attempt_id,
                        limits=limits, now=now)) if w is not None]
    if waits:
        with store.begin() as conn:
            conn.execute(t.delete().where(t.c.id == attempt_id))
        return LoginRefused(max(1, math.ceil(max(waits).total_seconds())))
    with store.read() as conn:
        patient_id = authenticate(conn, username, password)
    if patient_id is not None:
        with store.begin() as conn:
            conn.execute(t.delete().where(t.c.login_sha256 == key))
    elif limits.max_failures > 0:
        _audit_lock(store, key, username, limits, now)
    return patient_id


def _audit_lock(store: Store, key: str, username: str, limits: LoginLimits,
                now: dt.datetime) -> None:
    """The failure that locks an existing account goes into the patient's audit trail, so
    that the portal's audit page shows that someone guessed at the password (once per lock:
    refused attempts are not failures and do not lock it again)."""
    t = portal_login_failures
    with store.begin() as conn:
        failures = conn.execute(sa.select(sa.func.count()).select_from(t).where(
            t.c.login_sha256 == key, t.c.failed_at > now - limits.window)).scalar_one()
        if failures != limits.max_failures:
            return
        account = conn.execute(sa.select(portal_accounts.c.patient_id).where(
            portal_accounts.c.username == username)).first()
        if account is None:
            return  # an unknown name: nobody to tell
        patient_id = str(account.patient_id)
        audit(conn, actor="portal", action="portal-login-locked", subject_type="patient",
              subject_id=patient_id, patient_id=patient_id, at=now,
              detail={"failures": int(failures),
                      "window_s": int(limits.window.total_seconds())})
