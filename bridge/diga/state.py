"""One JSON state file per pairing: tokens, their expiry, and the polling cursors.

pairing.md, step 5 "Complete Pairing": the DiGA backend records its side of the pairing (the
Pairing ID, the granted scopes) and from then on holds a refresh token worth 30 days of
access. The file therefore holds secrets: it is created with mode 0600 in a folder of mode
0700, refused when others may read it, and replaced atomically (write a temporary file in the
same folder, fsync, rename), so a crash leaves the old or the new state, never half of one.
A rotated refresh token is saved before it is used (the old one is dead from that moment).

Operations on one pairing take an exclusive lock (``<name>.lock``): two concurrent refreshes
would present the same refresh token twice, which the authorization server treats as replay
and answers by revoking the whole grant (RFC 9700 §4.14.2).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.diga.errors import StateFileError
from bridge.diga.polling import (
    ChunkMark,
    ContinuousCursor,
    DedicatedCursor,
    iso,
    parse_datetime,
)

FORMAT_VERSION = 1
#: pairing.md "Refresh Tokens": 30 days.
REFRESH_TOKEN_LIFETIME = dt.timedelta(days=30)

#: A pairing name becomes a file name: keep it to a safe alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

PENDING = "pending"
PAIRED = "paired"
UNPAIRED = "unpaired"
REVOKED = "revoked"


@dataclass(slots=True)
class PendingAuthorization:
    """A pairing started (PAR sent) but not completed: what the redirect must match."""

    state: str
    code_verifier: str
    request_uri: str
    authorize_url: str
    redirect_uri: str
    scope: str
    expires_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """As JSON."""
        return {"state": self.state, "code_verifier": self.code_verifier,
                "request_uri": self.request_uri, "authorize_url": self.authorize_url,
                "redirect_uri": self.redirect_uri, "scope": self.scope,
                "expires_at": iso(self.expires_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingAuthorization:
        """From :meth:`to_json`."""
        return cls(state=str(data["state"]), code_verifier=str(data["code_verifier"]),
                   request_uri=str(data["request_uri"]),
                   authorize_url=str(data["authorize_url"]),
                   redirect_uri=str(data["redirect_uri"]), scope=str(data["scope"]),
                   expires_at=parse_datetime(data["expires_at"]))


@dataclass(slots=True)
class PairingState:
    """The DiGA's record of one pairing with one Device Data Recorder."""

    name: str
    client_id: str
    issuer: str
    fhir_base_url: str
    status: str = PENDING
    pending: PendingAuthorization | None = None
    #: The Pairing ID (the token response's ``sub``).
    pairing_id: str | None = None
    #: Granted scopes, space-separated, as the token response stated them.
    scope: str = ""
    access_token: str | None = None
    access_token_expires_at: dt.datetime | None = None
    refresh_token: str | None = None
    refresh_token_expires_at: dt.datetime | None = None
    paired_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    #: Why the pairing ended (unpaired by the DiGA, or the recorder refused the refresh token).
    ended_reason: str = ""
    blood_glucose: DedicatedCursor = field(default_factory=DedicatedCursor)
    cgm: ContinuousCursor = field(default_factory=ContinuousCursor)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scopes as a set."""
        return frozenset(self.scope.split())

    def store_tokens(self, response: Mapping[str, Any], now: dt.datetime) -> None:
        """Keep the tokens of a token response (code exchange or refresh).

        Rotation: the response's refresh token replaces the old one; a server that does not
        rotate may omit it (RFC 6749 §6), then the old one stays.
        """
        self.access_token = str(response["access_token"])
        self.access_token_expires_at = now + dt.timedelta(seconds=int(response["expires_in"]))
        if response.get("refresh_token"):
            self.refresh_token = str(response["refresh_token"])
            self.refresh_token_expires_at = now + REFRESH_TOKEN_LIFETIME
        if response.get("scope"):
            self.scope = str(response["scope"])
        if response.get("sub"):
            self.pairing_id = str(response["sub"])

    def end(self, status: str, reason: str, now: dt.datetime) -> None:
        """Forget the tokens: the pairing is over (the cursors stay, for the record)."""
        self.status = status
        self.ended_reason = reason
        self.ended_at = now
        self.access_token = self.refresh_token = None
        self.access_token_expires_at = self.refresh_token_expires_at = None
        self.pending = None

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON (the file format)."""
        def when(value: dt.datetime | None) -> str | None:
            return None if value is None else iso(value)

        return {
            "format": FORMAT_VERSION, "name": self.name, "client_id": self.client_id,
            "issuer": self.issuer, "fhir_base_url": self.fhir_base_url,
            "status": self.status,
            "pending": None if self.pending is None else self.pending.to_json(),
            "pairing_id": self.pairing_id, "scope": self.scope,
            "access_token": self.access_token,
            "access_token_expires_at": when(self.access_token_expires_at),
            "refresh_token": self.refresh_token,
            "refresh_token_expires_at": when(self.refresh_token_expires_at),
            "paired_at": when(self.paired_at), "ended_at": when(self.ended_at),
            "ended_reason": self.ended_reason,
            "cursors": {"blood_glucose": self.blood_glucose.to_json(),
                        "cgm": {"search_from": when(self.cgm.search_from),
                                "chunks": {cid: mark.to_json()
                                           for cid, mark in self.cgm.chunks.items()}}},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PairingState:
        """Read :meth:`to_json` output (KeyError/ValueError/TypeError on a broken file)."""
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown state format {data.get('format')!r}")

        def when(key: str) -> dt.datetime | None:
            value = data.get(key)
            return None if value is None else parse_datetime(value)

        cursors = data.get("cursors") or {}
        cgm_data = cursors.get("cgm") or {}
        search_from = cgm_data.get("search_from")
        cgm = ContinuousCursor(
            search_from=None if search_from is None else parse_datetime(search_from),
            chunks={str(cid): ChunkMark.from_json(mark)
                    for cid, mark in (cgm_data.get("chunks") or {}).items()})
        pending = data.get("pending")
        return cls(
            name=str(data["name"]), client_id=str(data["client_id"]),
            issuer=str(data["issuer"]), fhir_base_url=str(data["fhir_base_url"]),
            status=str(data["status"]),
            pending=None if pending is None else PendingAuthorization.from_json(pending),
            pairing_id=data.get("pairing_id"), scope=str(data.get("scope", "")),
            access_token=data.get("access_token"),
            access_token_expires_at=when("access_token_expires_at"),
            refresh_token=data.get("refresh_token"),
            refresh_token_expires_at=when("refresh_token_expires_at"),
            paired_at=when("paired_at"), ended_at=when("ended_at"),
            ended_reason=str(data.get("ended_reason", "")),
            blood_glucose=DedicatedCursor.from_json(cursors.get("blood_glucose")),
            cgm=cgm)


class PairingStore:
    """A folder of pairing state files, one ``<name>.json`` per pairing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        """The state file of pairing ``name``."""
        check_name(name)
        return self.folder / f"{name}.json"

    def names(self) -> list[str]:
        """The pairings in the folder."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if _NAME.fullmatch(p.stem))

    def exists(self, name: str) -> bool:
        """Whether pairing ``name`` has a state file."""
        return self.path(name).is_file()

    def load(self, name: str) -> PairingState:
        """Read a pairing's state; refuses a file others may read (it holds tokens)."""
        path = self.path(name)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise StateFileError(str(path), f"no pairing named {name!r}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateFileError(str(path), f"holds tokens but has mode "
                                            f"{stat.S_IMODE(mode):04o}; make it 0600")
        try:
            return PairingState.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateFileError(str(path), f"cannot read: {exc}") from None
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise StateFileError(str(path), f"not a pairing state: {exc!r}") from None

    def save(self, state: PairingState) -> Path:
        """Write a pairing's state atomically with mode 0600."""
        path = self.path(state.name)
        self._ensure_folder()
        payload = json.dumps(state.to_json(), indent=2, sort_keys=True).encode("utf-8")
        # mkstemp creates the file with mode 0600 in the same folder (same file system, so
        # the rename below is atomic).
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{state.name}.",
                                         suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_folder(self.folder)
        return path

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the pairing's exclusive lock (blocks while another process holds it)."""
        lock_path = self.path(name).with_suffix(".lock")
        self._ensure_folder()
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateFileError(str(self.folder), f"cannot create: {exc}") from None


def check_name(name: str) -> str:
    """``name`` if it is a valid pairing name (letters, digits, ``._-``, up to 64)."""
    if not _NAME.fullmatch(name):
        raise StateFileError(name, "a pairing name is 1-64 letters, digits, '.', '_' or '-' "
                                   "and starts with a letter or digit")
    return name


def _fsync_folder(folder: Path) -> None:
    # Make the rename itself durable (POSIX: the directory entry lives in the folder).
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
