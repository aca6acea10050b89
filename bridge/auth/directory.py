"""The DiGA directory stand-in: which DiGAs are registered clients (HDDT pairing.md "Client
Registration", security-and-privacy.md "Identification and Authentication of the DiGA").

In production the entries originate from the BfArM DiGA-VZ and are synchronised with it; here
they are rows of ``diga_clients``, kept by ``hddt-bridge auth diga add|list|deactivate`` or
loaded from a TOML/JSON file (:func:`load_directory_file`). Each entry holds the client id
``urn:diga:bfarm:<DiGA-ID>``, the exact redirect URIs, the SMART scopes the DiGA may request,
an active flag and the TLS client certificate the DiGA presents (compared by SHA-256 of its
DER bytes: "exactly the same certificate as registered").

Deactivating a DiGA also revokes every pairing it holds (pairing.md "DiGA loses authorization
for interface").
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.auth.errors import DirectoryError
from bridge.auth.pki import CLIENT_ID_PATTERN, certificate_sha256
from bridge.auth.scopes import is_valid_scope
from bridge.auth.tables import diga_clients
from bridge.backend.pki import PkiError
from bridge.backend.store import audit


@dataclass(frozen=True, slots=True)
class DigaClient:
    """One registered DiGA."""

    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    active: bool
    certificate_pem: str
    certificate_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "name": self.name,
                "redirect_uris": list(self.redirect_uris), "scopes": list(self.scopes),
                "active": self.active, "certificate_sha256": self.certificate_sha256}


def check_client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise DirectoryError(f"client id {client_id!r} is not urn:diga:bfarm: followed by the "
                             "five-digit DiGA-ID")
    return client_id


def check_redirect_uri(uri: str) -> str:
    """An absolute URI without fragment (RFC 3986 section 4.3; RFC 6749 section 3.1.2)."""
    parts = urlsplit(uri) if isinstance(uri, str) else None
    if parts is None or not parts.scheme or parts.fragment or uri != uri.strip():
        raise DirectoryError(f"redirect URI {uri!r} must be an absolute URI without fragment")
    if parts.scheme.lower() in ("javascript", "data", "file", "vbscript"):
        raise DirectoryError(f"redirect URI scheme {parts.scheme!r} is not allowed")
    if parts.scheme.lower() in ("http", "https") and not parts.netloc:
        raise DirectoryError(f"redirect URI {uri!r} has no host")
    return uri


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(scopes))
    if not out:
        raise DirectoryError("a DiGA needs at least one scope")
    bad = [s for s in out if not isinstance(s, str) or not is_valid_scope(s)]
    if bad:
        raise DirectoryError(f"not a supported SMART scope: {bad[0]!r}")
    return out


def _fingerprint(pem: str) -> str:
    try:
        return certificate_sha256(pem)
    except PkiError as exc:
        raise DirectoryError(f"client certificate: {exc}") from None


def _client(row: Any) -> DigaClient:
    return DigaClient(client_id=row.client_id, name=row.name,
                      redirect_uris=tuple(row.redirect_uris), scopes=tuple(row.scopes),
                      active=bool(row.active), certificate_pem=row.certificate_pem,
                      certificate_sha256=row.certificate_sha256)


def get_client(conn: Connection, client_id: str) -> DigaClient | None:
    row = conn.execute(sa.select(diga_clients).where(
        diga_clients.c.client_id == client_id)).first()
    return None if row is None else _client(row)


def client_by_certificate(conn: Connection, sha256: str) -> DigaClient | None:
    row = conn.execute(sa.select(diga_clients).where(
        diga_clients.c.certificate_sha256 == sha256)).first()
    return None if row is None else _client(row)


def list_clients(conn: Connection) -> list[DigaClient]:
    return [_client(r) for r in conn.execute(
        sa.select(diga_clients).order_by(diga_clients.c.client_id))]


def _refuse_taken_certificate(conn: Connection, sha256: str, client_id: str) -> None:
    other = client_by_certificate(conn, sha256)
    if other is not None and other.client_id != client_id:
        raise DirectoryError(f"this certificate is already registered for {other.client_id}; "
                             "a certificate identifies exactly one DiGA")


def register_client(conn: Connection, client_id: str, *, name: str,
                    redirect_uris: Sequence[str], scopes: Iterable[str], certificate_pem: str,
                    actor: str, active: bool = True) -> DigaClient:
    """Add a DiGA (:class:`DirectoryError` when it exists or an attribute is malformed)."""
    check_client_id(client_id)
    if not name or len(name) > 200:
        raise DirectoryError("a DiGA needs a name of 1 to 200 characters")
    uris = tuple(check_redirect_uri(u) for u in dict.fromkeys(redirect_uris))
    if not uris:
        raise DirectoryError("a DiGA needs at least one redirect URI")
    allowed = check_scopes(scopes)
    sha256 = _fingerprint(certificate_pem)
    if get_client(conn, client_id) is not None:
        raise DirectoryError(f"{client_id} is already registered; use update")
    _refuse_taken_certificate(conn, sha256, client_id)
    now = dt.datetime.now(dt.UTC)
    conn.execute(diga_clients.insert().values(
        client_id=client_id, name=name, redirect_uris=list(uris), scopes=list(allowed),
        active=active, certificate_pem=certificate_pem, certificate_sha256=sha256,
        created_at=now, updated_at=now))
    audit(conn, actor=actor, action="diga-registered", subject_type="diga",
          subject_id=client_id, detail={"certificate_sha256": sha256, "scopes": list(allowed)})
    return DigaClient(client_id, name, uris, allowed, active, certificate_pem, sha256)


def update_client(conn: Connection, client_id: str, *, actor: str, name: str | None = None,
                  redirect_uris: Sequence[str] | None = None,
                  scopes: Iterable[str] | None = None, certificate_pem: str | None = None,
                  active: bool | None = None) -> DigaClient:
    """Change a registration; attributes left None stay. Deactivation revokes its pairings."""
    current = get_client(conn, client_id)
    if current is None:
        raise DirectoryError(f"{client_id} is not registered")
    values: dict[str, Any] = {}
    if name is not None:
        if not name or len(name) > 200:
            raise DirectoryError("a DiGA needs a name of 1 to 200 characters")
        values["name"] = name
    if redirect_uris is not None:
        uris = [check_redirect_uri(u) for u in dict.fromkeys(redirect_uris)]
        if not uris:
            raise DirectoryError("a DiGA needs at least one redirect URI")
        values["redirect_uris"] = uris
    if scopes is not None:
        values["scopes"] = list(check_scopes(scopes))
    if certificate_pem is not None:
        sha256 = _fingerprint(certificate_pem)
        _refuse_taken_certificate(conn, sha256, client_id)
        values.update(certificate_pem=certificate_pem, certificate_sha256=sha256)
    if active is not None:
        values["active"] = active
    if not values:
        return current
    values["updated_at"] = dt.datetime.now(dt.UTC)
    conn.execute(diga_clients.update().where(diga_clients.c.client_id == client_id)
                 .values(**values))
    audit(conn, actor=actor, action="diga-updated", subject_type="diga", subject_id=client_id,
          detail={k: v for k, v in values.items()
                  if k not in ("certificate_pem", "updated_at")})
    if active is False and current.active:
        from bridge.auth.pairing import revoke_client_pairings  # noqa: PLC0415 (cycle)

        revoke_client_pairings(conn, client_id, by="directory", actor=actor)
    updated = get_client(conn, client_id)
    assert updated is not None
    return updated


def deactivate_client(conn: Connection, client_id: str, *, actor: str) -> DigaClient:
    """Mark a DiGA inactive (retired from the DiGA-VZ) and revoke all its pairings."""
    return update_client(conn, client_id, actor=actor, active=False)


def _entries(data: Any, source: str) -> list[Mapping[str, Any]]:
    entries = data.get("diga") if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise DirectoryError(f"{source}: expected a list of DiGA entries ([[diga]] tables in "
                             "TOML, a JSON list or {\"diga\": [...]})")
    return entries


def load_directory_file(conn: Connection, path: Path, *, actor: str) -> list[DigaClient]:
    """Register or update every DiGA listed in a TOML (``[[diga]]``) or JSON file.

    Each entry: ``client_id``, ``name``, ``redirect_uris``, ``scopes``, ``active`` (default
    true) and ``certificate`` (a PEM file, relative to the file) or ``certificate_pem``.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise DirectoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise DirectoryError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: "
                             f"{exc}") from None
    out: list[DigaClient] = []
    for i, entry in enumerate(_entries(data, str(path))):
        where = f"{path}: entry {i + 1}"
        try:
            pem = entry.get("certificate_pem")
            if pem is None and "certificate" in entry:
                cert_path = Path(str(entry["certificate"]))
                cert_path = cert_path if cert_path.is_absolute() else path.parent / cert_path
                pem = cert_path.read_text(encoding="ascii")
            if not isinstance(pem, str):
                raise DirectoryError("needs certificate (a PEM file) or certificate_pem")
            client_id = str(entry.get("client_id", ""))
            fields: dict[str, Any] = {
                "name": entry.get("name"), "redirect_uris": list(entry.get("redirect_uris", [])),
                "scopes": list(entry.get("scopes", [])), "certificate_pem": pem,
                "active": bool(entry.get("active", True))}
            if get_client(conn, check_client_id(client_id)) is None:
                out.append(register_client(conn, client_id, actor=actor, **fields))
            else:
                out.append(update_client(conn, client_id, actor=actor, **fields))
        except (DirectoryError, OSError) as exc:
            raise DirectoryError(f"{where}: {exc}") from None
    return out
