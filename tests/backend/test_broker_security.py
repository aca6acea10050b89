"""The sandbox PKI, and the shipped Mosquitto configuration and ACL enforced by a real
Mosquitto with real certificates from that PKI.

Mosquitto 2.0 checks the ACL when a message is published (write) and again for each
subscriber it would be delivered to (read); it does not refuse a SUBSCRIBE itself. So "may
not read" is asserted as "never receives", whatever the SUBACK said.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.backend import broker_cli
from bridge.backend.pki import (
    CertPair,
    PkiError,
    SandboxPki,
    common_name,
    issue_sandbox_pki,
    load_cert,
    load_pki,
)
from bridge.edge.outbox import Outbox
from bridge.edge.uplink import TlsSettings, Uplink, UplinkSettings
from bridge.messages import (
    RECORDS_FILTER,
    RecordsMessage,
    device_status_topic,
    gateway_status_topic,
    records_topic,
)
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind
from tests.backend.mosquitto_instance import (
    CONFIG_DIR,
    ShippedMosquitto,
    client_tls,
    mosquitto_available,
    render_config,
)

needs_mosquitto = pytest.mark.skipif(not mosquitto_available(),
                                     reason="mosquitto not installed")

T0 = dt.datetime(2027, 2, 1, 7, 0, tzinfo=dt.UTC)
METER = DeviceInfo(device_id="meter-1", kind=DeviceKind.BLOOD_GLUCOSE_METER)
NOT_AUTHORIZED = 0x87
#: How long to wait for a message that must NOT arrive (delivery on loopback takes ~1 ms).
QUIET_S = 0.4


@dataclass
class Probe:
    """A paho client over mutual TLS that records what happens to it."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    #: Live messages (topic, payload); retained copies of earlier tests' status are left out.
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    retained: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)
    subacks: list[list[int]] = field(default_factory=list)
    suback_event: threading.Event = field(default_factory=threading.Event)
    connect_reason: int | None = None
    connect_failed: bool = False

    def topics(self) -> list[str]:
        return [t for t, _ in list(self.messages)]

    def wait_for(self, topic: str, timeout_s: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, payload in list(self.messages):
                if t == topic:
                    return payload
            time.sleep(0.01)
        raise AssertionError(f"nothing arrived on {topic}; got {self.topics()}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0 on MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.acked:
            if not self.acked.wait_for(lambda: info.mid in self.pubacks, timeout=5):
                raise AssertionError(f"no PUBACK for {topic}")
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        self.suback_event.clear()
        self.client.subscribe(topic, qos=1)
        assert self.suback_event.wait(5), "no SUBACK"
        return self.subacks[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def probe(pki: SandboxPki, pair: CertPair | None, port: int, client_id: str, *,
          v5: bool = True, clean: bool = True, ca: Path | None = None,
          expect_connect: bool = True) -> Probe:
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         clean_session=None if v5 else clean)
    client.tls_set_context(client_tls(ca or pki.ca.cert, pair))
    p = Probe(client)

    def on_connect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                   props: Properties | None) -> None:
        p.connect_reason = rc.value
        if rc.value == 0:
            p.connected.set()

    def on_disconnect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                      props: Properties | None) -> None:
        p.disconnected.set()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode,
                   props: Properties | None) -> None:
        with p.acked:
            p.pubacks[mid] = rc.value
            p.acked.notify_all()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode],
                     props: Properties | None) -> None:
        p.subacks.append([r.value for r in rcs])
        p.suback_event.set()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        (p.retained if m.retain else p.messages).append((m.topic, m.payload))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    kwargs: dict[str, object] = {}
    if v5:
        kwargs["clean_start"] = clean
        if not clean:
            props = Properties(mqtt.PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            kwargs["properties"] = props
    try:
        client.connect("127.0.0.1", port, keepalive=30, **kwargs)  # type: ignore[arg-type]
    except OSError:
        if expect_connect:
            raise
        p.connect_failed = True
        return p
    client.loop_start()
    if expect_connect:
        assert p.connected.wait(5), f"{client_id} did not connect (reason {p.connect_reason})"
    return p


def refused(pki: SandboxPki, pair: CertPair | None, port: int, *,
            ca: Path | None = None) -> bool:
    """True when the broker does not let this client in (no CONNACK success)."""
    p = probe(pki, pair, port, "refused-probe", ca=ca, expect_connect=False)
    try:
        deadline = time.monotonic() + 3
        while not (p.connected.is_set() or p.disconnected.is_set() or p.connect_failed):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return not p.connected.is_set()
    finally:
        p.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SandboxPki:
    return issue_sandbox_pki(tmp_path_factory.mktemp("pki"), ["gw-a", "gw-b"])


@pytest.fixture(scope="module")
def broker(pki: SandboxPki, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ShippedMosquitto]:
    with ShippedMosquitto(tmp_path_factory.mktemp("mq"), pki) as mq:
        yield mq


@pytest.fixture
def ingest(pki: SandboxPki, broker: ShippedMosquitto) -> Iterator[Probe]:
    """The backend's reader, as the ingest workers subscribe: a shared subscription."""
    p = probe(pki, pki.ingest, broker.ingest_port, "ingest-probe")
    assert p.subscribe(f"$share/ingest/{RECORDS_FILTER}") == [1]
    assert p.subscribe("hddt/v1/gw/+/status") == [1]
    assert p.subscribe("hddt/v1/gw/+/devices/+/status") == [1]
    yield p
    p.close()


def batch(gateway_id: str, n: int = 5) -> RecordsMessage:
    records = tuple(BloodGlucoseReading(device_id="meter-1",
                                        time=T0 + dt.timedelta(minutes=i), sequence=i,
                                        glucose_mg_dl=90.0 + i) for i in range(n))
    return RecordsMessage(gateway_id, METER, records)


# --- the sandbox PKI ---------------------------------------------------------------------------

def test_pki_layout_modes_and_certificates(tmp_path: Path) -> None:
    pki = issue_sandbox_pki(tmp_path / "pki", ["gw-a", "pi-home-0001"],
                            broker_names=["mqtt.example-maker.de", "10.0.0.5"])
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    pairs = [pki.ca, pki.broker, pki.ingest, pki.monitor, *pki.gateways.values()]
    for pair in pairs:
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600, pair.key
        assert stat.S_IMODE(pair.cert.stat().st_mode) == 0o644, pair.cert
    assert set(pki.created) == {p for pair in pairs for p in (pair.cert, pair.key)}
    ca = load_cert(pki.ca.cert)
    for pair, cn in ((pki.ingest, "ingest"), (pki.monitor, "monitor"),
                     (pki.gateway("gw-a"), "gw-a"),
                     (pki.gateway("pi-home-0001"), "pi-home-0001")):
        cert = load_cert(pair.cert)
        cert.verify_directly_issued_by(ca)
        assert common_name(cert) == cn
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    broker = load_cert(pki.broker.cert)
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "mqtt.example-maker.de"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.0.0.5"}
    with pytest.raises(PkiError, match="no certificate for gateway"):
        pki.gateway("gw-z")


def test_pki_is_idempotent_and_grows_with_the_same_ca(tmp_path: Path) -> None:
    first = issue_sandbox_pki(tmp_path, ["gw-a"])
    ca_bytes = first.ca.cert.read_bytes()
    gw_bytes = first.gateway("gw-a").cert.read_bytes()
    again = issue_sandbox_pki(tmp_path, ["gw-a"])
    assert again.created == ()
    more = issue_sandbox_pki(tmp_path, ["gw-b"])
    assert set(more.created) == {more.gateway("gw-b").cert, more.gateway("gw-b").key}
    assert more.ca.cert.read_bytes() == ca_bytes
    assert more.gateway("gw-a").cert.read_bytes() == gw_bytes
    load_cert(more.gateway("gw-b").cert).verify_directly_issued_by(load_cert(more.ca.cert))
    assert sorted(load_pki(tmp_path).gateways) == ["gw-a", "gw-b"]
    # A broker name the existing certificate lacks is refused, not silently ignored.
    with pytest.raises(PkiError, match="does not name"):
        issue_sandbox_pki(tmp_path, broker_names=["broker.example"])
    # --force: a new CA, and everything issued anew.
    forced = issue_sandbox_pki(tmp_path, ["gw-a"], broker_names=["broker.example"],
                               force=True)
    assert forced.ca.cert.read_bytes() != ca_bytes
    load_cert(forced.gateway("gw-a").cert).verify_directly_issued_by(
        load_cert(forced.ca.cert))


@pytest.mark.parametrize("bad", ["ingest", "monitor", "a/b", "gw+", "#", "", "x" * 65,
                                 "gw a"])
def test_pki_issues_only_valid_gateway_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PkiError):
        issue_sandbox_pki(tmp_path, [bad])
    assert not (tmp_path / "ca.pem").exists()  # refused before anything was written


def test_pki_refuses_an_inconsistent_folder(tmp_path: Path) -> None:
    pki = issue_sandbox_pki(tmp_path, ["gw-a"])
    pki.ca.key.unlink()
    with pytest.raises(PkiError, match="both exist"):
        issue_sandbox_pki(tmp_path, ["gw-a"])
    pki.ca.cert.unlink()
    with pytest.raises(PkiError, match="no CA"):
        issue_sandbox_pki(tmp_path, ["gw-a"])
    other = issue_sandbox_pki(tmp_path / "other", [])
    for pair in (pki.ca,):
        pair.cert.write_bytes(other.ca.cert.read_bytes())
        pair.key.write_bytes(other.ca.key.read_bytes())
    with pytest.raises(PkiError, match="not issued by"):
        issue_sandbox_pki(tmp_path, ["gw-a"])


def test_cli_joins_the_backend_command(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    backend = sub.add_parser("backend")
    nested = backend.add_subparsers(dest="backend_command")
    nested.add_parser("run")  # as if the ingest commands had registered first
    broker_cli.register(sub)
    args = parser.parse_args(["backend", "pki", "--out", str(tmp_path / "pki"),
                              "--gateway", "gw-1", "--gateway", "gw-2"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert f"created {tmp_path / 'pki' / 'gateways' / 'gw-2.key'}" in out
    assert broker_cli.main(["pki", "--out", str(tmp_path / "pki")]) == 0
    assert "created" not in capsys.readouterr().out
    assert broker_cli.main(["pki", "--out", str(tmp_path / "pki"), "--gateway", "ingest"]) == 1
    assert "reserved" in capsys.readouterr().err
    # Alone, register creates the backend command itself.
    fresh = argparse.ArgumentParser()
    broker_cli.register(fresh.add_subparsers(dest="command"))
    assert fresh.parse_args(["backend", "broker", "--port", "0"]).port == 0


def test_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# demo\ngw-1:secret\n\ningest:x:y\n", encoding="utf-8")
    assert broker_cli.read_users(users) == {"gw-1": "secret", "ingest": "x:y"}
    users.write_text("no-colon\n", encoding="utf-8")
    with pytest.raises(Exception, match="name:password"):
        broker_cli.read_users(users)


# --- the shipped Mosquitto configuration ---------------------------------------------------------

def test_only_the_machine_specific_lines_are_rewritten() -> None:
    shipped = (CONFIG_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    rendered = render_config(shipped, ports=(1, 2), paths={"cafile": "X", "user": "u"})
    changed = [(a, b) for a, b in zip(shipped.splitlines(), rendered.splitlines(), strict=True)
               if a != b]
    assert all(a.split()[0] == b.split()[0] for a, b in changed)
    assert {a.split()[0] for a, _ in changed} == {"listener", "cafile", "user"}


@needs_mosquitto
def test_gateway_uplink_delivers_to_ingest_over_mutual_tls(
        pki: SandboxPki, broker: ShippedMosquitto, ingest: Probe, tmp_path: Path) -> None:
    # The edge agent's own uplink, with gateway A's certificate, as it runs in the field.
    records = [BloodGlucoseReading(device_id="meter-1", time=T0 + dt.timedelta(minutes=i),
                                   sequence=i, glucose_mg_dl=100.0) for i in range(30)]
    gw = pki.gateway("gw-a")
    settings = UplinkSettings(host="127.0.0.1", port=broker.gateway_port, protocol="5",
                              tls=TlsSettings(ca=pki.ca.cert, cert=gw.cert, key=gw.key),
                              batch_size=10, publish_timeout_s=3, connect_timeout_s=3,
                              reconnect_min_s=0.05, reconnect_max_s=0.2, idle_poll_s=0.1)
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        outbox.put_sync("meter", records, {}, info=METER)
        uplink = Uplink(settings, "gw-a", outbox)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            deadline = time.monotonic() + 15
            while outbox.stats().queued and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10)

        asyncio.run(run())
        assert outbox.stats().queued == 0
    keys: set[str] = set()
    deadline = time.monotonic() + 5
    while len(keys) < 30 and time.monotonic() < deadline:
        keys = {r.idempotency_key() for t, p in list(ingest.messages)
                if t == records_topic("gw-a") for r in RecordsMessage.from_bytes(p).records}
        time.sleep(0.02)
    assert keys == {r.idempotency_key() for r in records}
    ingest.wait_for(gateway_status_topic("gw-a"))
    # The broker knew the gateway by its certificate and named its session after it, whatever
    # client id the agent asked for.
    assert "as gw-a (p5, c1, k60, u'gw-a')" in broker.log_text()


@needs_mosquitto
def test_gateway_cannot_publish_as_another_gateway(
        pki: SandboxPki, broker: ShippedMosquitto, ingest: Probe) -> None:
    gw_a = probe(pki, pki.gateway("gw-a"), broker.gateway_port, "gw-a")
    try:
        # MQTT 5 says so: PUBACK reason 0x87 "Not authorized"; nothing is delivered.
        assert gw_a.publish(records_topic("gw-b"), batch("gw-b").to_bytes()) == NOT_AUTHORIZED
        assert gw_a.publish(device_status_topic("gw-b", "meter-1"), b"{}") == NOT_AUTHORIZED
        # Nor anything outside the contract's topics, even under its own id.
        assert gw_a.publish("hddt/v1/gw/gw-a/commands", b"{}") == NOT_AUTHORIZED
        assert gw_a.publish("hddt/v1/gw/gw-a", b"{}") == NOT_AUTHORIZED
        # Its own records go through (the control that the connection itself works).
        assert gw_a.publish(records_topic("gw-a"), batch("gw-a").to_bytes()) == 0
        ingest.wait_for(records_topic("gw-a"))
        time.sleep(QUIET_S)
        assert records_topic("gw-b") not in ingest.topics()
        assert device_status_topic("gw-b", "meter-1") not in ingest.topics()
    finally:
        gw_a.close()


@needs_mosquitto
def test_gateway_on_mqtt311_is_dropped_silently(
        pki: SandboxPki, broker: ShippedMosquitto, ingest: Probe) -> None:
    # MQTT 3.1.1 has no refusal code: the broker acknowledges and discards. Not delivered.
    gw_a = probe(pki, pki.gateway("gw-a"), broker.gateway_port, "gw-a", v5=False)
    try:
        assert gw_a.publish(records_topic("gw-b"), batch("gw-b").to_bytes()) == 0
        assert gw_a.publish(gateway_status_topic("gw-a"), b"{}") == 0
        ingest.wait_for(gateway_status_topic("gw-a"))
        time.sleep(QUIET_S)
        assert records_topic("gw-b") not in ingest.topics()
    finally:
        gw_a.close()


@needs_mosquitto
def test_certificate_from_another_ca_is_refused(
        pki: SandboxPki, broker: ShippedMosquitto, tmp_path: Path) -> None:
    # Same CN, same layout, but signed by a CA the broker does not trust.
    other = issue_sandbox_pki(tmp_path / "other-ca", ["gw-a"])
    assert refused(pki, other.gateway("gw-a"), broker.gateway_port)
    assert refused(pki, other.ingest, broker.ingest_port)
    assert "certificate verify failed" in broker.log_text()


@needs_mosquitto
def test_client_without_certificate_is_refused(pki: SandboxPki,
                                               broker: ShippedMosquitto) -> None:
    assert refused(pki, None, broker.gateway_port)
    assert refused(pki, None, broker.ingest_port)
    assert "peer did not return a certificate" in broker.log_text()


@needs_mosquitto
def test_ingest_cannot_publish(pki: SandboxPki, broker: ShippedMosquitto,
                               ingest: Probe) -> None:
    writer = probe(pki, pki.ingest, broker.ingest_port, "ingest-writer")
    try:
        for topic in (records_topic("gw-a"), records_topic("ingest"),
                      gateway_status_topic("gw-a"), "hddt/v1/backend/anything"):
            assert writer.publish(topic, batch("gw-a").to_bytes()) == NOT_AUTHORIZED, topic
        time.sleep(QUIET_S)
        assert ingest.topics() == []
    finally:
        writer.close()


@needs_mosquitto
def test_gateway_cannot_read_other_gateways_or_anything(
        pki: SandboxPki, broker: ShippedMosquitto, ingest: Probe) -> None:
    gw_a = probe(pki, pki.gateway("gw-a"), broker.gateway_port, "gw-a")
    gw_b = probe(pki, pki.gateway("gw-b"), broker.gateway_port, "gw-b")
    try:
        for topic in ("hddt/v1/gw/gw-b/#", "hddt/v1/gw/+/records", "#", "$SYS/#"):
            gw_a.subscribe(topic)
        assert gw_b.publish(records_topic("gw-b"), batch("gw-b").to_bytes()) == 0
        assert gw_b.publish(gateway_status_topic("gw-b"), b"{}", retain=True) == 0
        ingest.wait_for(records_topic("gw-b"))
        time.sleep(QUIET_S)
        assert gw_a.topics() == [] and gw_a.retained == []
    finally:
        gw_a.close()
        gw_b.close()


@needs_mosquitto
def test_gateway_cannot_take_over_the_ingest_session(
        pki: SandboxPki, broker: ShippedMosquitto, ingest: Probe) -> None:
    # On the gateway listener the session is named after the certificate, so asking for the
    # ingest worker's client id does not disconnect the worker.
    intruder = probe(pki, pki.gateway("gw-b"), broker.gateway_port, "ingest-probe")
    try:
        assert not ingest.disconnected.wait(QUIET_S)
        assert intruder.publish(records_topic("gw-b"), batch("gw-b").to_bytes()) == 0
        ingest.wait_for(records_topic("gw-b"))
    finally:
        intruder.close()


@needs_mosquitto
def test_monitor_reads_broker_counters_and_gateways_do_not(
        pki: SandboxPki, broker: ShippedMosquitto) -> None:
    monitor = probe(pki, pki.monitor, broker.ingest_port, "monitor")
    gw_a = probe(pki, pki.gateway("gw-a"), broker.gateway_port, "gw-a")
    try:
        gw_a.subscribe("$SYS/broker/version")
        monitor.subscribe("$SYS/broker/version")
        deadline = time.monotonic() + 5
        while not monitor.retained and time.monotonic() < deadline:
            time.sleep(0.01)
        # $SYS values are retained: the monitor gets the current one at once.
        assert monitor.retained[0][0] == "$SYS/broker/version"
        assert monitor.retained[0][1].startswith(b"mosquitto version 2")
        assert monitor.publish(records_topic("monitor"), b"{}") == NOT_AUTHORIZED
        time.sleep(QUIET_S)
        assert gw_a.topics() == [] and gw_a.retained == []
    finally:
        monitor.close()
        gw_a.close()


@needs_mosquitto
def test_queued_records_survive_a_broker_restart(pki: SandboxPki, tmp_path: Path) -> None:
    # persistence on: what waits for an offline ingest session is written on shutdown and
    # delivered after the restart.
    with ShippedMosquitto(tmp_path / "mq", pki) as mq:
        reader = probe(pki, pki.ingest, mq.ingest_port, "ingest-durable", clean=False)
        assert reader.subscribe(RECORDS_FILTER) == [1]
        reader.close()
        gw_a = probe(pki, pki.gateway("gw-a"), mq.gateway_port, "gw-a")
        sent = [batch("gw-a", n=3) for _ in range(20)]
        for message in sent:
            assert gw_a.publish(records_topic("gw-a"), message.to_bytes()) == 0
        gw_a.close()
        mq.stop()
        mq.start()
        reader = probe(pki, pki.ingest, mq.ingest_port, "ingest-durable", clean=False)
        try:
            deadline = time.monotonic() + 5
            while len(reader.messages) < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            got = {RecordsMessage.from_bytes(p).batch_id for _, p in list(reader.messages)}
            assert got == {m.batch_id for m in sent}
        finally:
            reader.close()
