"""A private Mosquitto 2 broker for one test: own port, config, persistence and log.

Never the shared broker on 1883: each instance binds free ports on 127.0.0.1 and keeps its
files in a directory the test owns. ``stop``/``start`` simulate an outage (persistence is
written on a clean stop, so queued messages for persistent sessions survive), ``kill`` a
broker crash. With ``tls`` a second listener requires client certificates (mutual TLS) and
takes the certificate's CN as the user name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
    None)


def mosquitto_available() -> bool:
    return MOSQUITTO is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """Server side of the TLS listener: CA for client certificates, broker cert and key."""

    ca: Path
    cert: Path
    key: Path


class Mosquitto:
    """One private broker. Use as a context manager, or call :meth:`start`/:meth:`close`."""

    def __init__(self, workdir: Path, *, tls: BrokerTls | None = None,
                 extra_config: str = "") -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.tls = tls
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            # Never silently drop queued messages for a test subscriber (default 1000).
            "max_queued_messages 0",
            "max_inflight_messages 20",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Running as root, Mosquitto would switch to the 'mosquitto' user and then fail
            # to read this directory; stay the user who runs the tests.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {tls.ca}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        self.conf.write_text("\n".join(lines) + "\n" + extra_config, encoding="utf-8")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.running:
            return
        assert MOSQUITTO is not None
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        for port in ports:
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: "
                                       f"{err} {self.log_text()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"mosquitto did not listen on {port}: "
                                           f"{self.log_text()}") from None
                    time.sleep(0.02)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self) -> None:
        """Clean stop (SIGTERM): sessions and queued messages are saved to disk."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Crash (SIGKILL): whatever changed since the last save is lost."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")
        return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a real subscriber that stands in for the backend --------------------------------------

class Subscriber:
    """A paho client with a persistent session that records every message it gets.

    ``keys`` holds each record's idempotency key once (the backend's unique key), while
    ``deliveries`` counts every copy that arrived (QoS 1 may deliver a copy twice). Retained
    status messages are kept by topic in ``status``. paho reconnects on its own, so the
    subscriber rides out a broker outage and then receives what the broker queued for it.
    """

    def __init__(self, port: int, client_id: str = "test-backend") -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.keys: set[str] = set()
        self.deliveries = 0
        self.batches = 0
        self.status: dict[str, bytes] = {}
        self.status_log: list[tuple[str, bytes]] = []
        self.errors: list[str] = []
        self.port = port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        # Fractions of a second keep outage tests short (paho sleeps whatever it is given).
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: object, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        from bridge.messages import RECORDS_FILTER, STATUS_FILTERS

        self.client.subscribe([(RECORDS_FILTER, 1)] + [(f, 1) for f in STATUS_FILTERS])
        self._subscribed.set()

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        from bridge.messages import PayloadError, RecordsMessage, parse_topic

        topic: str = message.topic  # type: ignore[attr-defined]
        payload: bytes = message.payload  # type: ignore[attr-defined]
        with self._lock:
            try:
                kind = parse_topic(topic).kind
                if kind == "records":
                    batch = RecordsMessage.from_bytes(payload)
                    self.batches += 1
                    for record in batch.records:
                        self.deliveries += 1
                        self.keys.add(record.idempotency_key())
                else:
                    self.status[topic] = payload
                    self.status_log.append((topic, payload))
            except PayloadError as exc:
                self.errors.append(f"{topic}: {exc}")

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise RuntimeError("subscriber did not connect")
        time.sleep(0.1)  # let the SUBACK arrive before the first publish
        return self

    def snapshot(self) -> tuple[set[str], int]:
        with self._lock:
            return set(self.keys), self.deliveries

    def wait_for_keys(self, expected: set[str], timeout_s: float = 20.0) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            keys, _ = self.snapshot()
            if expected <= keys:
                return keys
            time.sleep(0.05)
        keys, _ = self.snapshot()
        return keys

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- certificates for the mutual-TLS tests ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pki:
    """A throw-away CA with one broker certificate (localhost, 127.0.0.1) and one gateway
    client certificate; plus a client certificate from a CA the broker does not trust."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    @property
    def broker(self) -> BrokerTls:
        return BrokerTls(self.ca, self.server_cert, self.server_key)


def make_pki(directory: Path, client_cn: str = "gw-test") -> Pki:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
             server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("hddt-bridge test CA")
    server_key, server_cert = leaf(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = leaf(ca_key, ca_cert, client_cn, server=False)
    rogue_ca_key, rogue_ca = make_ca("somebody else's CA")
    rogue_key, rogue_cert = leaf(rogue_ca_key, rogue_ca, client_cn, server=False)
    return Pki(ca=write_cert(ca_cert, directory / "ca.pem"),
               server_cert=write_cert(server_cert, directory / "broker.pem"),
               server_key=write_key(server_key, directory / "broker.key"),
               client_cert=write_cert(client_cert, directory / "gateway.pem"),
               client_key=write_key(client_key, directory / "gateway.key"),
               rogue_cert=write_cert(rogue_cert, directory / "rogue.pem"),
               rogue_key=write_key(rogue_key, directory / "rogue.key"))
