"""The embedded demo broker (amqtt): QoS 1 through it with paho and aiomqtt on MQTT 3.1.1,
the production ACL's rules, its documented limits, clean shutdown and a clear port error."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bridge.backend.embedded_broker import (
    DEFAULT_PORT,
    EmbeddedBroker,
    EmbeddedBrokerError,
    gateway_may_publish,
    may,
)
from bridge.edge.outbox import Outbox
from bridge.edge.uplink import Uplink, UplinkSettings
from bridge.messages import (
    RECORDS_FILTER,
    STATUS_FILTERS,
    RecordsMessage,
    gateway_status_topic,
    records_topic,
)
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind

T0 = dt.datetime(2027, 2, 1, 7, 0, tzinfo=dt.UTC)
METER = DeviceInfo(device_id="meter-1", kind=DeviceKind.BLOOD_GLUCOSE_METER)


def readings(n: int, start: int = 0) -> list[BloodGlucoseReading]:
    return [BloodGlucoseReading(device_id="meter-1", time=T0 + dt.timedelta(minutes=i),
                                sequence=i, glucose_mg_dl=100.0 + i % 50)
            for i in range(start, start + n)]


class PahoClient:
    """A threaded paho client (MQTT 3.1.1) that records messages and PUBACKs."""

    def __init__(self, port: int, client_id: str, username: str | None, *,
                 password: str | None = None, clean: bool = True,
                 protocol: int = mqtt.MQTTv311) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol,  # type: ignore[arg-type]
                                  clean_session=clean if protocol != mqtt.MQTTv5 else None)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[list[int]] = []
        self.connack: int | None = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, c: object, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc.value
        if rc.value == 0:
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, c: object, u: object, f: object, rc: ReasonCode,
                       p: object) -> None:
        self.answered.set()

    def _on_message(self, c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload))

    def _on_subscribe(self, c: object, u: object, mid: int, rcs: list[ReasonCode],
                      p: object) -> None:
        self.subacks.append([r.value for r in rcs])

    def start(self, expect: bool = True) -> PahoClient:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        self.answered.wait(5)
        if expect:
            assert self.connected.is_set(), f"not connected: {self.connack}"
        return self

    def subscribe(self, topic: str) -> list[int]:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while len(self.subacks) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.subacks[-1]

    def publish_all(self, topic: str, payloads: list[bytes]) -> None:
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(5)
            assert info.is_published()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def in_thread(fn: Callable[[], object]) -> object:
    # paho's blocking calls must not stall the event loop the broker runs on.
    return await asyncio.to_thread(fn)


def run(body: Callable[[EmbeddedBroker], Awaitable[None]], **kw: object) -> None:
    async def main() -> None:
        async with EmbeddedBroker(port=0, **kw) as broker:  # type: ignore[arg-type]
            await asyncio.wait_for(body(broker), 30)

    asyncio.run(main())


def test_qos1_paho_to_paho_including_an_offline_authenticated_session() -> None:
    batches = [RecordsMessage("gw-a", METER, tuple(readings(10, 10 * i))).to_bytes()
               for i in range(30)]

    async def body(broker: EmbeddedBroker) -> None:
        ingest = await in_thread(lambda: PahoClient(broker.port, "ingest-1", "ingest",
                                                    clean=False).start())
        assert isinstance(ingest, PahoClient)
        assert await in_thread(lambda: ingest.subscribe(RECORDS_FILTER)) == [1]
        gw = await in_thread(lambda: PahoClient(broker.port, "hddt-gw-a", "gw-a").start())
        assert isinstance(gw, PahoClient)
        await in_thread(lambda: gw.publish_all(records_topic("gw-a"), batches[:15]))
        await wait_until(lambda: len(ingest.messages) == 15)
        # The ingest worker goes away; its session (with a user name, so not anonymous)
        # keeps what arrives meanwhile and hands it over on reconnect.
        await in_thread(ingest.stop)
        # Wait until the broker has seen the disconnect: amqtt loses a message it routes to a
        # connection that is closing (it does not requeue it), which Mosquitto does not.
        await wait_until(lambda: "ingest-1" not in broker.connected_clients())
        await in_thread(lambda: gw.publish_all(records_topic("gw-a"), batches[15:]))
        again = await in_thread(lambda: PahoClient(broker.port, "ingest-1", "ingest",
                                                   clean=False).start())
        assert isinstance(again, PahoClient)
        # At least once: every batch arrives; one in flight at the disconnect may come twice.
        await wait_until(lambda: {p for _, p in [*ingest.messages, *again.messages]}
                         == set(batches))
        assert len(again.messages) >= 15
        await in_thread(gw.stop)
        await in_thread(again.stop)

    run(body)


def test_qos1_with_aiomqtt_and_the_edge_uplink(tmp_path: Path) -> None:
    records = readings(120)

    async def body(broker: EmbeddedBroker) -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="ingest-1",
                                  username="ingest",
                                  protocol=aiomqtt.ProtocolVersion.V311) as ingest:
            await ingest.subscribe(RECORDS_FILTER, qos=1)
            await ingest.subscribe(STATUS_FILTERS[0], qos=1)
            # A plain aiomqtt publisher first ...
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-b",
                                      username="gw-b",
                                      protocol=aiomqtt.ProtocolVersion.V311) as gw:
                await gw.publish(records_topic("gw-b"), RecordsMessage(
                    "gw-b", METER, tuple(records[:5])).to_bytes(), qos=1)
            # ... then the edge agent's uplink, as the demo wires it (user name = gateway id).
            keys: set[str] = set()
            with Outbox(tmp_path / "outbox.sqlite") as outbox:
                outbox.put_sync("meter", records, {}, info=METER)
                uplink = Uplink(UplinkSettings(host="127.0.0.1", port=broker.port,
                                               protocol="3.1.1", username="gw-a",
                                               batch_size=25, idle_poll_s=0.1,
                                               reconnect_min_s=0.05, reconnect_max_s=0.2),
                                "gw-a", outbox)
                stop = asyncio.Event()
                task = asyncio.create_task(uplink.run(stop))
                status = False
                async for message in ingest.messages:
                    topic = str(message.topic)
                    assert isinstance(message.payload, bytes)
                    if topic == records_topic("gw-a"):
                        keys |= {r.idempotency_key() for r in
                                 RecordsMessage.from_bytes(message.payload).records}
                    status |= topic == gateway_status_topic("gw-a")
                    if len(keys) == len(records) and status:
                        break
                stop.set()
                await asyncio.wait_for(task, 10)
                assert outbox.stats().queued == 0
            assert keys == {r.idempotency_key() for r in records}

    run(body)


def test_production_acl_rules() -> None:
    async def body(broker: EmbeddedBroker) -> None:
        ingest = await in_thread(lambda: PahoClient(broker.port, "ingest-1", "ingest").start())
        gw_a = await in_thread(lambda: PahoClient(broker.port, "gw-a", "gw-a").start())
        gw_b = await in_thread(lambda: PahoClient(broker.port, "gw-b", "gw-b").start())
        assert isinstance(ingest, PahoClient) and isinstance(gw_a, PahoClient)
        assert isinstance(gw_b, PahoClient)
        assert await in_thread(lambda: ingest.subscribe(RECORDS_FILTER)) == [1]
        # Refused outright (SUBACK 0x80): shared subscriptions (amqtt has none), anything
        # beyond the contract for ingest, and any reading by a gateway.
        for client, topic in ((ingest, f"$share/ingest/{RECORDS_FILTER}"), (ingest, "#"),
                              (gw_a, "hddt/v1/gw/gw-b/records"), (gw_a, "#")):
            assert await in_thread(lambda c=client, t=topic: c.subscribe(t)) == [0x80]
        # Publishes outside one's own topics are acknowledged (3.1.1) and dropped.
        await in_thread(lambda: gw_a.publish_all(records_topic("gw-b"), [b"forged"]))
        await in_thread(lambda: ingest.publish_all(records_topic("gw-a"), [b"from ingest"]))
        await in_thread(lambda: gw_b.publish_all(records_topic("gw-b"), [b"genuine"]))
        await wait_until(lambda: len(ingest.messages) >= 1)
        await asyncio.sleep(0.2)
        assert ingest.messages == [(records_topic("gw-b"), b"genuine")]
        assert gw_a.messages == []
        for c in (ingest, gw_a, gw_b):
            await in_thread(c.stop)

    run(body)


def test_acl_functions() -> None:
    assert gateway_may_publish("gw-a", "hddt/v1/gw/gw-a/records")
    assert gateway_may_publish("gw-a", "hddt/v1/gw/gw-a/devices/cgm-1/status")
    assert not gateway_may_publish("gw-a", "hddt/v1/gw/gw-a/devices/cgm-1/status/x")
    assert not gateway_may_publish("gw-a", "hddt/v1/gw/gw-b/records")
    # A user name with a level separator must not reach into another gateway's topics.
    assert not gateway_may_publish("gw-b/devices/x", "hddt/v1/gw/gw-b/devices/x/status")
    assert may("ingest", "subscribe", "hddt/v1/gw/+/devices/+/status")
    assert may("ingest", "subscribe", "hddt/v1/gw/gw-a/records")
    assert not may("ingest", "subscribe", "hddt/v1/gw/#")
    assert not may("ingest", "publish", "hddt/v1/gw/ingest/records")
    assert not may("gw-a", "receive", "hddt/v1/gw/gw-a/records")
    assert not may(None, "publish", "hddt/v1/gw/gw-a/records")


def test_passwords_and_anonymous_sessions_are_refused() -> None:
    async def body(broker: EmbeddedBroker) -> None:
        for user, password in ((None, None), ("gw-a", "wrong"), ("nobody", "secret")):
            c = await in_thread(lambda u=user, pw=password: PahoClient(
                broker.port, "x", u, password=pw).start(expect=False))
            assert isinstance(c, PahoClient)
            assert not c.connected.is_set(), (user, password)
            await in_thread(c.stop)
        ok = await in_thread(lambda: PahoClient(broker.port, "gw-a", "gw-a",
                                                password="secret").start())
        assert isinstance(ok, PahoClient)
        await in_thread(ok.stop)

    run(body, users={"gw-a": "secret", "ingest": "other"})


def test_mqtt5_is_refused_with_unacceptable_protocol_version() -> None:
    # A minimal MQTT 5 CONNECT (protocol level 5, clean start, client id "x"); amqtt answers
    # with the 3.1.1 CONNACK return code 1 and closes: it speaks MQTT 3.1.1 only.
    connect = bytes.fromhex("10 0e 0004 4d515454 05 02 003c 00 0001 78")

    async def body(broker: EmbeddedBroker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(connect)
        answer = await asyncio.wait_for(reader.read(), 5)  # until the broker closes
        writer.close()
        await writer.wait_closed()
        assert answer == bytes.fromhex("20 02 00 01")

    run(body)


def test_port_conflict_is_a_clear_error() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(EmbeddedBrokerError, match=f"127.0.0.1:{port} is already in use"):
                await EmbeddedBroker(port=port).start()
        async with EmbeddedBroker(port=0) as first:
            with pytest.raises(EmbeddedBrokerError, match="already in use"):
                await EmbeddedBroker(port=first.port).start()

    asyncio.run(main())
    with pytest.raises(EmbeddedBrokerError, match="1883"):
        EmbeddedBroker(port=1883)
    assert DEFAULT_PORT == 18830
    assert EmbeddedBroker().url == "mqtt://127.0.0.1:18830"


def test_clean_shutdown_frees_the_port_and_leaves_no_tasks() -> None:
    async def main() -> None:
        broker = EmbeddedBroker(port=0)
        await broker.start()
        port = broker.port
        client = await in_thread(lambda: PahoClient(port, "gw-a", "gw-a").start())
        assert isinstance(client, PahoClient)
        await broker.stop()
        await broker.stop()  # idempotent
        assert not broker.running
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        # The port is free again: the same broker object starts there once more.
        await broker.start()
        assert broker.port == port
        await broker.stop()
        await in_thread(client.stop)

    asyncio.run(main())
