"""The broker side of the ingest tests: a private Mosquitto set up for ingest, a gateway
stand-in that publishes at QoS 1 and knows which messages the broker acknowledged, and
builders of v1 records messages.

The broker is ``tests.edge.mosquitto.Mosquitto`` (own port, persistence, unlimited queue)
plus what the ingest needs: a wide in-flight window (one commit gathers many messages),
frequent snapshots and a bound on abandoned sessions. MQTT 5 is on by default in
Mosquitto 2.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.messages import RecordsMessage, records_topic
from bridge.records import CgmReading, DeviceInfo, DeviceKind
from tests.edge.mosquitto import Mosquitto, mosquitto_available

__all__ = ["T0", "Publisher", "Sent", "cgm_batch", "ingest_broker", "mosquitto_available"]

INGEST_BROKER_CONFIG = """\
max_inflight_messages 1000
autosave_interval 1
persistent_client_expiration 1d
"""

T0 = dt.datetime(2027, 3, 1, 6, 0, tzinfo=dt.UTC)


def ingest_broker(workdir: Path) -> Mosquitto:
    return Mosquitto(workdir, extra_config=INGEST_BROKER_CONFIG)


def cgm_batch(gateway_id: str, device_id: str, first: int, count: int) -> tuple[bytes, set[str]]:
    """A records message of ``count`` CGM readings numbered from ``first``, and its keys."""
    info = DeviceInfo(device_id=device_id, kind=DeviceKind.CGM, manufacturer="Example Medical",
                      model="CGM-5", serial_number=f"SN-{device_id}")
    records = tuple(CgmReading(device_id=device_id, time=T0 + dt.timedelta(minutes=5 * n),
                               sequence=n, glucose_mg_dl=80.0 + (n % 120))
                    for n in range(first, first + count))
    message = RecordsMessage(gateway_id, info, records)
    return message.to_bytes(), {r.idempotency_key() for r in records}


@dataclass
class Sent:
    topic: str
    payload: bytes
    info: Any
    #: The broker acknowledged it but had no subscriber for it (PUBACK reason 0x10).
    unheard: bool = False


class Publisher:
    """A gateway stand-in: MQTT 5, QoS 1, a persistent session, paho's in-memory queue.

    paho keeps a QoS 1 message until its PUBACK and sends it again after a reconnect, so a
    broker restart costs duplicates, not losses; :meth:`republish_unacked` covers messages
    the broker never acknowledged (as the edge outbox does) AND messages whose PUBACK says
    "no matching subscribers" (MQTT 5 reason code 0x10): Mosquitto 2.0 does not restore
    shared subscriptions from its persistence file, so right after a broker restart, until
    the first worker has subscribed again, it acknowledges records that nobody will get.
    """

    NO_MATCHING_SUBSCRIBERS = 0x10

    def __init__(self, port: int, client_id: str = "test-gateway") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.sent: list[Sent] = []
        self._by_mid: dict[int, Sent] = {}
        # Filled from paho's network thread; never take self._lock there (paho holds its own
        # message lock while it calls on_publish, and publish() takes that one under ours).
        self._no_subscribers: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, 10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("publisher did not connect")

    def _on_connect(self, *args: Any) -> None:
        self._connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if int(reason_code.value) == self.NO_MATCHING_SUBSCRIBERS:
            self._no_subscribers.append(mid)

    def publish(self, topic: str, payload: bytes) -> None:
        # Like the edge uplink, publish only while connected (what is in flight when the
        # connection drops is sent again by paho on the next connection).
        if not self._connected.wait(30):
            raise RuntimeError("publisher could not reconnect")
        with self._lock:
            info = self.client.publish(topic, payload, qos=1)
            sent = Sent(topic, payload, info)
            self.sent.append(sent)
            self._by_mid[info.mid] = sent

    def records(self, gateway_id: str, payload: bytes) -> None:
        self.publish(records_topic(gateway_id), payload)

    @staticmethod
    def _published(sent: Sent) -> bool | None:
        """True: PUBACK received; False: refused at once; None: still waiting."""
        try:
            return True if sent.info.is_published() else None
        except RuntimeError:  # refused at once (connection lost meanwhile)
            return False

    def _collect_unheard(self) -> None:
        while self._no_subscribers:
            sent = self._by_mid.get(self._no_subscribers.popleft())
            if sent is not None:
                sent.unheard = True

    def unacked(self) -> list[Sent]:
        """Messages without a PUBACK, or acknowledged with "no matching subscribers"."""
        with self._lock:
            self._collect_unheard()
            return [s for s in self.sent if s.unheard or self._published(s) is not True]

    def wait_acked(self, timeout_s: float = 30.0) -> list[Sent]:
        """Wait until every message is settled (acknowledged, refused or unheard); returns
        those not delivered to a subscriber."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                waiting = any(self._published(s) is None for s in self.sent)
            if not waiting:
                break
            time.sleep(0.05)
        time.sleep(0.05)  # let the last on_publish callbacks arrive
        return self.unacked()

    def republish_unacked(self, timeout_s: float = 30.0) -> int:
        """Send again what was not delivered to a subscriber (as the edge outbox would)."""
        missing = self.wait_acked(timeout_s)
        with self._lock:
            gone = {id(s) for s in missing}
            self.sent = [s for s in self.sent if id(s) not in gone]
        for s in missing:
            self.publish(s.topic, s.payload)
        return len(missing)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
