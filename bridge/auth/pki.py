"""The sandbox PKI of the HDDT interface: a CA, the server certificate of the FHIR resource
server and authorization server host, and one TLS client certificate per DiGA.

HDDT security-and-privacy.md: the Device Data Recorder's server certificate names its FQDN
(here: localhost, 127.0.0.1, ::1 and any extra names); a DiGA client certificate carries the
key usages ``digitalSignature`` and ``clientAuth`` and is valid for at least 365 and at most
398 days. In production the server certificate comes from a publicly trusted CA and each
DiGA makes its own client certificate; the directory (:mod:`bridge.auth.directory`) then
holds exactly that certificate. This sandbox CA only stands in for both.

Layout (keys 0600, folders 0700)::

    ca.pem ca.key                 the sandbox CA (trust anchor of DiGA clients in the sandbox)
    server.pem server.key         server certificate (SAN: localhost, 127.0.0.1, ::1, extras)
    digas/<DiGA-ID>.pem .key      client certificate of urn:diga:bfarm:<DiGA-ID>

Issuing is idempotent like :func:`bridge.backend.pki.issue_sandbox_pki`: existing files are
kept, a new DiGA is signed by the existing CA; ``force=True`` starts over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.backend.pki import (
    DEFAULT_BROKER_NAMES,
    CertPair,
    PkiError,
    _issued_by,
    _load_key,
    _new_ca,
    _new_leaf,
    _san,
    _san_names,
    _save,
    load_cert,
)

#: HDDT security-and-privacy.md: a DiGA client certificate is valid 365 to 398 days.
DIGA_CERT_DAYS = 397
#: ``urn:diga:bfarm:`` + the five-digit DiGA-ID (HDDT pairing.md "Client Registration").
CLIENT_ID_PATTERN = re.compile(r"urn:diga:bfarm:(\d{5})")
#: Names the server certificate always carries.
DEFAULT_SERVER_NAMES = DEFAULT_BROKER_NAMES
SERVER_CN = "hddt-bridge HDDT server"
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class HddtPki:
    """What the folder holds after :func:`issue_hddt_pki` (``created``: files this call wrote)."""

    directory: Path
    ca: CertPair
    server: CertPair
    digas: Mapping[str, CertPair]
    created: tuple[Path, ...] = ()

    def diga(self, client_id: str) -> CertPair:
        """The client certificate of ``client_id`` (:class:`PkiError` when there is none)."""
        try:
            return self.digas[client_id]
        except KeyError:
            raise PkiError(f"no certificate for {client_id!r} in {self.directory}") from None


def diga_id(client_id: str) -> str:
    """The five digits of a ``urn:diga:bfarm:NNNNN`` client id (:class:`PkiError` if malformed)."""
    match = CLIENT_ID_PATTERN.fullmatch(client_id)
    if match is None:
        raise PkiError(f"client id {client_id!r} is not urn:diga:bfarm: followed by five digits")
    return match.group(1)


def diga_pair(directory: Path, client_id: str) -> CertPair:
    number = diga_id(client_id)
    return CertPair(directory / "digas" / f"{number}.pem", directory / "digas" / f"{number}.key")


def certificate_sha256(pem: str | bytes) -> str:
    """SHA-256 of a PEM certificate's DER bytes, lower-case hex (:class:`PkiError` if not PEM)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_client_certificate(issuer_key: ec.EllipticCurvePrivateKey | None,
                           issuer: x509.Certificate | None, client_id: str, *,
                           now: dt.datetime | None = None, days: int = DIGA_CERT_DAYS
                           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A DiGA client key and certificate (CN = ``client_id``), signed by ``issuer`` or, when
    ``issuer`` is None, self-signed (HDDT allows self-signed DiGA certificates)."""
    diga_id(client_id)
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id)])
    signer = issuer_key or key
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer is not None else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE)
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer_key is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def _normalised(names: Iterable[str]) -> list[str]:
    out = []
    for n in dict.fromkeys(names):
        try:
            out.append(str(ipaddress.ip_address(n)))
        except ValueError:
            out.append(n)
    return out


def issue_hddt_pki(directory: Path, digas: Iterable[str] = (), *,
                   server_names: Iterable[str] = (), force: bool = False) -> HddtPki:
    """Create (or complete) the sandbox PKI in ``directory``; ``digas`` are client ids."""
    client_ids = list(dict.fromkeys(digas))
    for client_id in client_ids:
        diga_id(client_id)
    names = _normalised([*DEFAULT_SERVER_NAMES, *server_names])
    _san(names)  # refuse a bad name before anything is written
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = CertPair(directory / "ca.pem", directory / "ca.key")
    server = CertPair(directory / "server.pem", directory / "server.key")
    now = dt.datetime.now(dt.UTC)
    created: list[Path] = []

    def exists(pair: CertPair) -> bool:
        if pair.cert.exists() != pair.key.exists():
            raise PkiError(f"{pair.cert.name} and {pair.key.name} must both exist or both be "
                           f"missing in {directory}; remove the other or use --force")
        return pair.cert.exists()

    if force or not exists(ca):
        ca_key, ca_cert = _new_ca(now)
        _save(ca, ca_key, ca_cert)
        created += [ca.cert, ca.key]
        force = True  # everything signed by an earlier CA is void now
    else:
        ca_key, ca_cert = _load_key(ca.key), load_cert(ca.cert)
        if ca_key.public_key() != ca_cert.public_key():
            raise PkiError(f"{ca.key} does not belong to {ca.cert}")

    def kept(pair: CertPair) -> bool:
        if force or not exists(pair):
            return False
        if not _issued_by(load_cert(pair.cert), ca_cert):
            raise PkiError(f"{pair.cert} was not issued by {ca.cert}; use --force to issue "
                           "everything anew")
        return True

    if kept(server):
        missing = set(names) - _san_names(load_cert(server.cert))
        if missing:
            raise PkiError(f"{server.cert} does not name {sorted(missing)}; delete it (and "
                           f"{server.key.name}) to issue it again with these names")
    else:
        key, cert = _new_leaf(ca_key, ca_cert, SERVER_CN, server_names=names, now=now)
        _save(server, key, cert)
        created += [server.cert, server.key]
    for client_id in client_ids:
        pair = diga_pair(directory, client_id)
        if kept(pair):
            continue
        key, cert = new_client_certificate(ca_key, ca_cert, client_id, now=now)
        _save(pair, key, cert)
        created += [pair.cert, pair.key]
    return load_hddt_pki(directory, created=tuple(created))


def load_hddt_pki(directory: Path, *, created: tuple[Path, ...] = ()) -> HddtPki:
    """The PKI already in ``directory`` (every DiGA certificate found in ``digas/``)."""
    ca = CertPair(directory / "ca.pem", directory / "ca.key")
    server = CertPair(directory / "server.pem", directory / "server.key")
    for pair in (ca, server):
        if not (pair.cert.exists() and pair.key.exists()):
            raise PkiError(f"{directory} holds no complete HDDT sandbox PKI ({pair.cert.name} "
                           f"or {pair.key.name} missing); run `hddt-bridge auth pki --out "
                           f"{directory}`")
    digas: dict[str, CertPair] = {}
    folder = directory / "digas"
    if folder.is_dir():
        for cert in sorted(folder.glob("*.pem")):
            client_id = f"urn:diga:bfarm:{cert.stem}"
            if CLIENT_ID_PATTERN.fullmatch(client_id) and cert.with_suffix(".key").exists():
                digas[client_id] = diga_pair(directory, client_id)
    return HddtPki(directory, ca, server, digas, created)
