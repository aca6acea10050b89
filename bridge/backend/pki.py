"""The sandbox PKI for the broker's mutual TLS: one CA, the broker's server certificate and one
client certificate per identity.

The broker takes the client certificate's Common Name as the MQTT user name
(``use_identity_as_username``), and the ACL grants rights by that name: a gateway's CN is its
gateway id and it may publish only under ``hddt/v1/gw/<its id>/``; the CN ``ingest`` may only
read. The CA is therefore the real access control, so it issues only names that are valid
gateway ids (``[A-Za-z0-9._-]``, 1-64): a CN holding ``/``, ``+`` or ``#`` would otherwise widen
the ACL pattern into another gateway's topics, and the role names are never a gateway's.

Layout of the output folder (keys are written with mode 0600, the folder with 0700)::

    ca.pem ca.key                   the sandbox CA (keep ca.key off the broker in production)
    broker.pem broker.key           server certificate, SAN localhost, 127.0.0.1, ::1 + extras
    ingest.pem ingest.key           client certificate, CN "ingest"
    monitor.pem monitor.key         client certificate, CN "monitor" (reads $SYS counters)
    gateways/<id>.pem <id>.key      client certificate per gateway, CN = gateway id

Issuing is idempotent: files that exist are kept and reused (a new gateway is signed by the
existing CA); ``force=True`` starts over with a new CA. Command line:
``hddt-bridge backend pki --out DIR --gateway gw-1 --gateway gw-2``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.errors import BridgeError
from bridge.messages import PayloadError, check_id

#: The client identity of the ingest workers (the ACL's ``user ingest``).
INGEST_CN = "ingest"
#: The client identity that may read the broker's ``$SYS`` counters (``user monitor``).
MONITOR_CN = "monitor"
#: Names a gateway can never have: they belong to other roles in the ACL.
RESERVED_IDS = frozenset({INGEST_CN, MONITOR_CN})
CA_CN = "hddt-bridge sandbox CA"
#: Deliberately not a valid gateway id (it has a space), so the broker's own certificate can
#: never stand in for a gateway under the ``%u`` ACL patterns.
BROKER_CN = "hddt-bridge broker"
#: Names the broker certificate always carries: clients on the same machine connect by them.
DEFAULT_BROKER_NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock differences between machines


class PkiError(BridgeError):
    """The PKI folder is inconsistent, or a name cannot be issued."""


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class SandboxPki:
    """What the PKI folder holds after :func:`issue_sandbox_pki`.

    ``created`` lists the files this call wrote (empty when everything already existed).
    """

    directory: Path
    ca: CertPair
    broker: CertPair
    ingest: CertPair
    monitor: CertPair
    gateways: Mapping[str, CertPair]
    created: tuple[Path, ...] = ()

    def gateway(self, gateway_id: str) -> CertPair:
        try:
            return self.gateways[gateway_id]
        except KeyError:
            raise PkiError(f"no certificate for gateway {gateway_id!r} in "
                           f"{self.directory}") from None


def gateway_pair(directory: Path, gateway_id: str) -> CertPair:
    return CertPair(directory / "gateways" / f"{gateway_id}.pem",
                    directory / "gateways" / f"{gateway_id}.key")


def _pairs(directory: Path) -> tuple[CertPair, CertPair, CertPair, CertPair]:
    return (CertPair(directory / "ca.pem", directory / "ca.key"),
            CertPair(directory / "broker.pem", directory / "broker.key"),
            CertPair(directory / "ingest.pem", directory / "ingest.key"),
            CertPair(directory / "monitor.pem", directory / "monitor.key"))


def check_gateway_id(gateway_id: str) -> str:
    """A gateway id the CA may put in a CN: the contract's id syntax, and not a role name."""
    try:
        check_id(gateway_id, "gateway id")
    except PayloadError as exc:
        raise PkiError(exc.detail) from None
    if gateway_id in RESERVED_IDS:
        raise PkiError(f"gateway id {gateway_id!r} is reserved for another role")
    return gateway_id


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() for c in name) or "/" in name:
                raise PkiError(f"{name!r} is neither a host name nor an IP address") from None
            out.append(x509.DNSName(name))
    return out


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Write beside the target and rename, so a reader never sees half a file and a key file
    # never exists, even for an instant, with wider permissions than 0600.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(pair: CertPair, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    pair.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(pair.key, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), 0o600)
    _write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificate {path}: {exc}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC private key")
    return key


def _new_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(CA_CN)).issuer_name(_name(CA_CN))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _new_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *,
              server_names: Iterable[str] | None, now: dt.datetime
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    server = server_names is not None
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE)
               .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server_names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(server_names)),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            | set(san.get_values_for_type(x509.DNSName)))


def issue_sandbox_pki(directory: Path, gateways: Iterable[str] = (), *,
                      broker_names: Iterable[str] = (), force: bool = False) -> SandboxPki:
    """Create (or complete) the sandbox PKI in ``directory`` and return where everything is.

    Existing files are kept: a missing certificate is signed by the existing CA, so adding a
    gateway later is the same call with one more id. A broker certificate that lacks one of
    ``broker_names`` is refused rather than silently replaced; ``force=True`` issues
    everything anew, CA included (every certificate issued before stops working).
    """
    gateway_ids = [check_gateway_id(g) for g in dict.fromkeys(gateways)]
    names = [*DEFAULT_BROKER_NAMES, *broker_names]
    _san(names)  # refuse a bad name before anything is written
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, broker, ingest, monitor = _pairs(directory)
    now = dt.datetime.now(dt.UTC)
    created: list[Path] = []

    def exists(pair: CertPair) -> bool:
        if pair.cert.exists() != pair.key.exists():
            raise PkiError(f"{pair.cert.name} and {pair.key.name} must both exist or both be "
                           f"missing in {directory}; remove the other or use --force")
        return pair.cert.exists()

    if force or not exists(ca):
        leaves = [broker, ingest, monitor, *(gateway_pair(directory, g) for g in gateway_ids)]
        if not force and any(p.cert.exists() or p.key.exists() for p in leaves):
            raise PkiError(f"{directory} has certificates but no CA; use --force to start "
                           "over with a new CA")
        ca_key, ca_cert = _new_ca(now)
        _save(ca, ca_key, ca_cert)
        created += [ca.cert, ca.key]
    else:
        ca_key, ca_cert = _load_key(ca.key), load_cert(ca.cert)
        if ca_key.public_key() != ca_cert.public_key():
            raise PkiError(f"{ca.key} does not belong to {ca.cert}")

    def leaf(pair: CertPair, cn: str, server_names: list[str] | None) -> None:
        if not force and exists(pair):
            cert = load_cert(pair.cert)
            if not _issued_by(cert, ca_cert):
                raise PkiError(f"{pair.cert} was not issued by {ca.cert}; use --force to "
                               "issue everything anew")
            missing = set(server_names or ()) - _san_names(cert)
            if server_names is not None and missing:
                raise PkiError(f"{pair.cert} does not name {sorted(missing)}; delete it (and "
                               f"{pair.key.name}) to issue it again with these names")
            return
        key, cert = _new_leaf(ca_key, ca_cert, cn, server_names=server_names, now=now)
        _save(pair, key, cert)
        created.extend([pair.cert, pair.key])

    # Normalise IP spellings ("::1" vs "0:0::1") the way the certificate will show them.
    normalised = []
    for n in dict.fromkeys(names):
        try:
            normalised.append(str(ipaddress.ip_address(n)))
        except ValueError:
            normalised.append(n)
    leaf(broker, BROKER_CN, normalised)
    leaf(ingest, INGEST_CN, None)
    leaf(monitor, MONITOR_CN, None)
    for g in gateway_ids:
        leaf(gateway_pair(directory, g), g, None)
    return load_pki(directory, created=tuple(created))


def load_pki(directory: Path, *, created: tuple[Path, ...] = ()) -> SandboxPki:
    """The PKI already in ``directory`` (every gateway certificate found in ``gateways/``)."""
    ca, broker, ingest, monitor = _pairs(directory)
    for pair in (ca, broker, ingest, monitor):
        if not (pair.cert.exists() and pair.key.exists()):
            raise PkiError(f"{directory} holds no complete sandbox PKI ({pair.cert.name} or "
                           f"{pair.key.name} missing); run `hddt-bridge backend pki --out "
                           f"{directory}`")
    gateways: dict[str, CertPair] = {}
    gw_dir = directory / "gateways"
    if gw_dir.is_dir():
        for cert in sorted(gw_dir.glob("*.pem")):
            pair = gateway_pair(directory, cert.stem)
            if pair.key.exists():
                gateways[cert.stem] = pair
    return SandboxPki(directory, ca, broker, ingest, monitor, gateways, created)


def common_name(cert: x509.Certificate) -> str:
    """The CN the broker will use as the MQTT user name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PkiError("certificate must have exactly one Common Name")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")
