"""The MQTT uplink: drains the outbox to the broker at QoS 1 (contract: :mod:`bridge.messages`).

* A batch of records leaves the outbox only after the broker's PUBACK for the message that
  carried it (``await publish``). A connection that drops while a publish waits fails that
  publish at once; its records stay queued and are sent again on the next connection. So a
  record may arrive twice (at-least-once), never not at all; the backend ignores the second
  copy by its idempotency key.
* On MQTT 5 a PUBACK with a failure reason code (e.g. 0x87 "not authorized" from an ACL)
  is NOT an acknowledgement: the records stay queued and the connection is restarted. Nor is
  0x10 "no matching subscribers" for a records message: a broker that lost its shared
  subscriptions in a restart (Mosquitto 2.0 does not persist them) acknowledges a message that
  no ingest worker will ever see, so the records are sent again later. MQTT
  3.1.1 has no such code (a broker that refuses a publish just drops it), so give the gateway
  the right ACL before relying on 3.1.1.
* The gateway's retained status says ``online`` after each connect; the will (retained too)
  says ``offline`` when the connection dies, and a clean shutdown publishes ``offline``
  itself. Each device's retained status is published after its sync and again after each
  reconnect.
* Reconnects back off exponentially with jitter, so a fleet of gateways does not reconnect
  in lockstep after a broker restart.

aiomqtt has no reconnect of its own: each connection is one ``async with Client(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge import __version__
from bridge.edge.outbox import Outbox, OutboxItem
from bridge.errors import BridgeError
from bridge.messages import (
    MAX_PAYLOAD_BYTES,
    DeviceStatus,
    GatewayState,
    GatewayStatus,
    PayloadError,
    RecordsMessage,
    check_id,
    device_status_topic,
    gateway_status_topic,
    records_topic,
)
from bridge.records import AnyRecord, CgmReading, DeviceInfo, DeviceKind

log = logging.getLogger(__name__)

#: Bytes a batch may fill: leaves room for the envelope and the per-record key field.
_BATCH_BUDGET = MAX_PAYLOAD_BYTES * 3 // 4
_QOS = 1


class UplinkError(BridgeError):
    """A publish was not acknowledged (refused by the broker, or the connection died)."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """mTLS: the CA that signed the broker's certificate, the gateway's certificate and key.

    Without ``ca`` the system's trust store is used; without ``cert``/``key`` no client
    certificate is sent. ``check_hostname`` verifies the broker's name against its certificate.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=None if self.ca is None else str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.check_hostname
        if self.cert is not None:
            ctx.load_cert_chain(str(self.cert), None if self.key is None else str(self.key))
        return ctx


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """Broker connection and batching. ``protocol`` is ``"3.1.1"`` or ``"5"``."""

    host: str
    port: int = 1883
    client_id: str = ""
    protocol: Literal["3.1.1", "5"] = "5"
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    batch_size: int = 100
    #: How often an idle uplink looks at the outbox anyway (TTL expiry, missed wake-ups).
    idle_poll_s: float = 5.0


def backoff_delay(attempt: int, minimum: float, maximum: float,
                  rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (0-based): exponential from ``minimum``, capped at
    ``maximum``, with "equal jitter" (half fixed, half random) so retries spread out but
    never collapse to zero."""
    ceiling = min(maximum, minimum * (2.0 ** min(attempt, 30)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def _fallback_info(record: AnyRecord) -> DeviceInfo:
    # Only reached when the outbox lost the identity row; the kind follows from the record.
    kind = (DeviceKind.BLOOD_GLUCOSE_METER if record.KIND.value == "blood-glucose"
            else DeviceKind.CGM if isinstance(record, CgmReading) else DeviceKind.INSULIN_PUMP)
    return DeviceInfo(device_id=record.device_id, kind=kind)


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one device that go out in one message."""

    info: DeviceInfo
    items: tuple[OutboxItem, ...]

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items]


def plan_batches(items: Sequence[OutboxItem], batch_size: int,
                 info_of: Callable[[str], DeviceInfo | None],
                 budget: int = _BATCH_BUDGET) -> list[Batch]:
    """Split queued items (oldest first) into per-device batches of at most ``batch_size``
    records and about ``budget`` bytes, keeping the outbox order."""
    out: list[Batch] = []
    current: list[OutboxItem] = []
    current_bytes = 0
    infos: dict[str, DeviceInfo] = {}

    def flush() -> None:
        nonlocal current, current_bytes
        if current:
            rid = current[0].record.device_id
            out.append(Batch(infos[rid], tuple(current)))
        current, current_bytes = [], 0

    for item in items:
        rid = item.record.device_id
        if rid not in infos:
            infos[rid] = info_of(rid) or _fallback_info(item.record)
        # The key travels beside each record: count it, plus a little JSON punctuation.
        cost = item.size + len(item.key) + 16
        if current and (current[0].record.device_id != rid or len(current) >= batch_size
                        or current_bytes + cost > budget):
            flush()
        current.append(item)
        current_bytes += cost
    flush()
    return out


#: MQTT 5 PUBACK reason code "No matching subscribers" (MQTT 5.0 §3.4.2.1).
_NO_MATCHING_SUBSCRIBERS = 0x10


class _GatewayClient(aiomqtt.Client):
    """aiomqtt's client plus two things the uplink's delivery contract needs: a publish that
    fails as soon as the connection drops, and MQTT 5 PUBACK reason codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: list[ReasonCode] = []
        self.unheard: list[ReasonCode] = []

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        if reason_code.is_failure:
            self.refused.append(reason_code)
        elif reason_code.value == _NO_MATCHING_SUBSCRIBERS:
            self.unheard.append(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    @property
    def disconnected(self) -> asyncio.Future[None]:
        """Completes when this connection ends (with the cause as its exception)."""
        return self._disconnected

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool,
                            timeout: float) -> None:
        """Publish at QoS 1 and return only after a successful PUBACK."""
        refused_before, unheard_before = len(self.refused), len(self.unheard)
        task = asyncio.ensure_future(self.publish(topic, payload, qos=_QOS, retain=retain,
                                                  timeout=timeout))
        # The pending publish would otherwise wait out its timeout after a lost connection.
        disconnected = self.disconnected
        try:
            await asyncio.wait((task, disconnected), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
            cause = disconnected.exception() if not disconnected.cancelled() else None
            raise UplinkError(f"connection lost before PUBACK on {topic}: {cause}")
        task.result()  # raises MqttError on a publish that could not be sent
        if len(self.refused) > refused_before:
            raise UplinkError(f"broker refused publish on {topic}: "
                              f"{self.refused[refused_before]}")
        # A retained status is kept by the broker for later subscribers; a records message
        # that nobody heard is lost.
        if len(self.unheard) > unheard_before and not retain:
            raise UplinkError(f"no subscriber for {topic} (MQTT 5 reason 0x10); "
                              "the records stay queued")


@dataclass(slots=True)
class UplinkStats:
    connected: bool = False
    connects: int = 0
    messages: int = 0
    records: int = 0
    failures: int = 0
    last_error: str | None = None
    invalid: int = 0


class Uplink:
    """Drains ``outbox`` to the broker until the ``stop`` event passed to :meth:`run` is set."""

    def __init__(self, settings: UplinkSettings, gateway_id: str, outbox: Outbox, *,
                 rng: random.Random | None = None, agent_version: str = __version__) -> None:
        if settings.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        check_id(gateway_id, "gateway id")
        self.settings = settings
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.agent_version = agent_version
        self.stats = UplinkStats()
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._statuses: dict[str, DeviceStatus] = {}
        self._dirty: set[str] = set()
        self.connected = asyncio.Event()

    # --- what the agent calls ---------------------------------------------------------------

    def wake(self) -> None:
        """New records are queued: drain now rather than at the next idle poll."""
        self._wake.set()

    def set_device_status(self, status: DeviceStatus) -> None:
        """Publish (retained) this as the device's latest status, now or after reconnecting."""
        self._statuses[status.device_id] = status
        self._dirty.add(status.device_id)
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------------

    def _client(self) -> _GatewayClient:
        s = self.settings
        will = aiomqtt.Will(gateway_status_topic(self.gateway_id),
                            GatewayStatus(self.gateway_id, GatewayState.OFFLINE,
                                          agent_version=self.agent_version).to_bytes(),
                            qos=_QOS, retain=True)
        protocol = aiomqtt.ProtocolVersion.V5 if s.protocol == "5" else aiomqtt.ProtocolVersion.V311
        return _GatewayClient(
            s.host, s.port, identifier=s.client_id or f"hddt-{self.gateway_id}",
            protocol=protocol, will=will, username=s.username, password=s.password,
            keepalive=s.keepalive_s, timeout=s.connect_timeout_s,
            # The outbox is the durable session; the broker needs to keep none for us.
            clean_session=True if s.protocol == "3.1.1" else None,
            tls_context=None if s.tls is None else s.tls.context(),
            max_inflight_messages=1)

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self.stats.connects += 1
                    self.stats.connected = True
                    self.connected.set()
                    attempt = 0
                    log.info("connected to %s:%d", self.settings.host, self.settings.port)
                    await self._session(client, stop)
                    await self._say_offline(client)
                return
            except (aiomqtt.MqttError, UplinkError, OSError, ssl.SSLError) as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("broker connection: %s", self.stats.last_error)
            finally:
                self.stats.connected = False
                self.connected.clear()
            delay = backoff_delay(attempt, self.settings.reconnect_min_s,
                                  self.settings.reconnect_max_s, self._rng)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _say_offline(self, client: _GatewayClient) -> None:
        # The will only fires on an unclean end; a clean shutdown states it itself.
        with contextlib.suppress(aiomqtt.MqttError, UplinkError):
            await client.publish_acked(
                gateway_status_topic(self.gateway_id),
                GatewayStatus(self.gateway_id, GatewayState.OFFLINE,
                              agent_version=self.agent_version).to_bytes(),
                retain=True, timeout=min(self.settings.publish_timeout_s, 2.0))

    async def _session(self, client: _GatewayClient, stop: asyncio.Event) -> None:
        timeout = self.settings.publish_timeout_s
        await client.publish_acked(
            gateway_status_topic(self.gateway_id),
            GatewayStatus(self.gateway_id, GatewayState.ONLINE,
                          agent_version=self.agent_version).to_bytes(),
            retain=True, timeout=timeout)
        # Everything known is republished on a new connection: a status published while
        # the broker was away must not be the one that got lost.
        self._dirty.update(self._statuses)
        while not stop.is_set():
            self._wake.clear()
            await self._publish_statuses(client)
            drained = await self._drain_once(client, stop)
            if drained or self._dirty:
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            # Idle too, a lost connection is noticed at once: reconnecting promptly puts the
            # will back in place, so the backend learns if this gateway dies later.
            lost = client.disconnected
            try:
                await asyncio.wait((waiter, stopper, lost), timeout=self.settings.idle_poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if lost.done() and not stop.is_set():
                cause = None if lost.cancelled() else lost.exception()
                raise UplinkError(f"connection lost while idle: {cause}")
            if not self._wake.is_set():
                self.outbox.expire()

    async def _publish_statuses(self, client: _GatewayClient) -> None:
        for device_id in sorted(self._dirty):
            status = self._statuses[device_id]
            try:
                topic, payload = device_status_topic(self.gateway_id, device_id), status.to_bytes()
            except PayloadError as exc:
                log.error("device status of %r cannot be sent: %s", device_id, exc)
                self._dirty.discard(device_id)
                continue
            await client.publish_acked(topic, payload, retain=True,
                                       timeout=self.settings.publish_timeout_s)
            if self._statuses[device_id] is status:
                self._dirty.discard(device_id)

    async def _drain_once(self, client: _GatewayClient, stop: asyncio.Event) -> int:
        """Publish what the outbox holds now, oldest first; returns records delivered."""
        items = self.outbox.peek(self.settings.batch_size * 10)
        delivered = 0
        for batch in plan_batches(items, self.settings.batch_size, self.outbox.device_info):
            if stop.is_set():
                break
            try:
                encoded = self._encode(batch)
            except PayloadError as exc:
                # Records that break the contract (a device id outside [A-Za-z0-9._-], a
                # single record beyond the size limit) would block the queue forever.
                log.error("dropping %d records of %s: %s", len(batch.items),
                          batch.info.device_id, exc)
                self.stats.invalid += self.outbox.drop_invalid(batch.keys)
                continue
            for payload, keys in encoded:
                await client.publish_acked(records_topic(self.gateway_id), payload,
                                           retain=False, timeout=self.settings.publish_timeout_s)
                # Only now, after the PUBACK, may the records leave the outbox.
                self.outbox.delete(keys)
                self.stats.messages += 1
                self.stats.records += len(keys)
                delivered += len(keys)
        return delivered

    def _encode(self, batch: Batch) -> list[tuple[bytes, list[str]]]:
        """Encode a batch; one that still comes out oversized is split in halves."""
        records = tuple(item.record for item in batch.items)
        try:
            payload = RecordsMessage(self.gateway_id, batch.info, records).to_bytes()
        except PayloadError as exc:
            if exc.reason == "oversized" and len(batch.items) > 1:
                half = len(batch.items) // 2
                return (self._encode(Batch(batch.info, batch.items[:half]))
                        + self._encode(Batch(batch.info, batch.items[half:])))
            raise
        return [(payload, batch.keys)]
