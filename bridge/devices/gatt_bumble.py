"""The bumble implementation of :class:`~bridge.devices.gatt.GattCentral`.

bumble runs the whole host stack in Python on top of any HCI transport, which makes it the
backend for simulation and tests:

* an in-process :class:`bumble.link.LocalLink` (the virtual peripherals of ``simulators.ble``
  on the same link, each with its own virtual controller),
* a bumble transport spec string: ``tcp-client:127.0.0.1:9102`` toward
  ``python -m bumble.apps.controllers`` (peripherals in other processes),
  ``usb:0`` for a USB Bluetooth dongle, ``serial:/dev/ttyACM0`` for an HCI UART controller.

One :class:`BumbleHost` (a bumble ``Device`` in the central role) serves every device on one
transport: a dongle can be opened only once, and one host connects to several peripherals.
Hosts are shared by transport and closed when their last central is closed.

This module implements only the raw GATT primitives; timeouts, disconnection handling and
the read-only write guard are the base class's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bumble import hci
from bumble.att import ATT_Error
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.core import ConnectionError as BumbleConnectionError
from bumble.core import TimeoutError as BumbleTimeoutError
from bumble.device import Advertisement as BumbleAdvertisement
from bumble.device import Connection, Device, DeviceConfiguration, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy
from bumble.host import Host
from bumble.keys import JsonKeyStore, MemoryKeyStore
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport

from bridge.devices.base import DeviceDisconnected, DeviceError, DeviceTimeout
from bridge.devices.gatt import (
    DEFAULT_ATT_MTU,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    READ_ONLY,
    Advertisement,
    AttError,
    GattCentral,
    GattCharacteristic,
    GattService,
    NotifyCallback,
    WritePolicy,
    normalize_uuid,
)

logger = logging.getLogger(__name__)

#: What a bumble host runs on: a transport spec string or an in-process link.
BumbleTransport = str | LocalLink

#: ATT_MTU the central asks for after connecting (Core Vol 3 Part F §3.4.2): 247 lets a
#: whole IDS history event with its E2E trailer, or several CGM records, fit one PDU.
DEFAULT_MTU = 247

_PROPERTY_NAMES = (
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
)

_SERVICE_LIST_TYPES = (
    AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
)

# Random static addresses for hosts on in-process links (two top bits set, Core Vol 6 Part B
# §1.3.2.1); each host on one link needs its own.
_HOST_NUMBERS = itertools.count(1)


def bumble_uuid(value: UUID) -> str:
    """A bumble UUID in the normalized 128-bit string form of :mod:`bridge.devices.gatt`."""
    return normalize_uuid(bytes(reversed(value.to_bytes(force_128=True))).hex())


def _address_key(address: hci.Address | str) -> str:
    text = address.to_string(False) if isinstance(address, hci.Address) else address
    return text.upper()


class _CentralDelegate(PairingDelegate):
    """Accepts pairing; types the device's passkey in when one is configured (Core Vol 3
    Part H §2.3.5.1: keyboard-only central + display-only peripheral = passkey entry)."""

    def __init__(self, passkey: int | None) -> None:
        io = (PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY if passkey is not None
              else PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT)
        super().__init__(io_capability=io)
        self.passkey = passkey

    async def get_number(self) -> int | None:
        return self.passkey


@dataclass(eq=False)
class BumbleHost:
    """One bumble Device in the central role on one HCI transport."""

    device: Device
    key: object
    transport: Transport | None = None
    controller: Controller | None = None
    link: LocalLink | None = None
    users: int = 0
    passkeys: dict[str, int] = field(default_factory=dict)
    connect_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def open(cls, transport: BumbleTransport, *, address: str | None = None,
                   keystore: str | None = None) -> BumbleHost:
        """Open the transport and power the host on. ``keystore`` is a JSON file that keeps
        bonds across restarts (in memory only when ``None``)."""
        config = DeviceConfiguration()
        config.name = "hddt-bridge"
        n = next(_HOST_NUMBERS)
        own = hci.Address(address or f"C2:DB:00:00:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}")
        config.address = own
        controller: Controller | None = None
        hci_transport: Transport | None = None
        if isinstance(transport, LocalLink):
            controller = Controller("hddt-bridge-controller", link=transport,
                                    public_address=own)
            device = Device(config=config, host=Host(controller, AsyncPipeSink(controller)))
        else:
            hci_transport = await open_transport(transport)
            device = Device.from_config_with_hci(config, hci_transport.source,
                                                 hci_transport.sink)
        device.keystore = (JsonKeyStore(str(own), keystore) if keystore
                           else MemoryKeyStore())
        host = cls(device, key=transport if isinstance(transport, str) else id(transport),
                   transport=hci_transport, controller=controller,
                   link=transport if isinstance(transport, LocalLink) else None)
        device.pairing_config_factory = host._pairing_config
        await device.power_on()
        return host

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        passkey = self.passkeys.get(_address_key(connection.peer_address))
        # Bonding is always requested: GLP, CGMP and IDP expect a bonded collector.
        return PairingConfig(sc=True, mitm=passkey is not None, bonding=True,
                             delegate=_CentralDelegate(passkey))

    async def close(self) -> None:
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.disconnect(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.device.power_off(), 2.0)
        if self.controller is not None and self.link is not None:
            with contextlib.suppress(Exception):
                self.link.remove_controller(self.controller)
        if self.transport is not None:
            await self.transport.close()

    async def scan(self, timeout_s: float) -> list[Advertisement]:
        """Active scan for ``timeout_s``; one entry per address, scan responses merged."""
        seen: dict[str, dict[str, Any]] = {}

        def on_advertisement(adv: BumbleAdvertisement) -> None:
            key = _address_key(adv.address)
            entry = seen.setdefault(key, {"name": None, "rssi": None, "uuids": [],
                                          "appearance": None})
            data = adv.data
            name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or data.get(
                AdvertisingData.SHORTENED_LOCAL_NAME)
            if isinstance(name, str) and name:
                entry["name"] = name
            if adv.rssi != BumbleAdvertisement.RSSI_NOT_AVAILABLE:
                entry["rssi"] = adv.rssi
            for list_type in _SERVICE_LIST_TYPES:
                uuids = data.get(list_type)
                if isinstance(uuids, list):
                    for u in uuids:
                        if isinstance(u, UUID) and bumble_uuid(u) not in entry["uuids"]:
                            entry["uuids"].append(bumble_uuid(u))
            appearance = data.get(AdvertisingData.APPEARANCE, raw=True)
            if isinstance(appearance, bytes) and len(appearance) == 2:
                entry["appearance"] = int.from_bytes(appearance, "little")

        self.device.on(self.device.EVENT_ADVERTISEMENT, on_advertisement)
        try:
            await self.device.start_scanning(active=True)
            await asyncio.sleep(timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await self.device.stop_scanning()
            self.device.remove_listener(self.device.EVENT_ADVERTISEMENT, on_advertisement)
        return [Advertisement(address, e["name"], e["rssi"], tuple(e["uuids"]), e["appearance"])
                for address, e in sorted(seen.items())]


@dataclass
class _Registry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hosts: dict[object, BumbleHost] = field(default_factory=dict)


# Hosts live on one event loop; each loop has its own registry.
_REGISTRIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Registry] = (
    weakref.WeakKeyDictionary())


def _registry() -> _Registry:
    loop = asyncio.get_running_loop()
    registry = _REGISTRIES.get(loop)
    if registry is None:
        registry = _REGISTRIES[loop] = _Registry()
    return registry


async def acquire_host(transport: BumbleTransport, *, address: str | None = None,
                       keystore: str | None = None) -> BumbleHost:
    """The shared host on ``transport`` (opened on first use); give it back with
    :func:`release_host`."""
    registry = _registry()
    key = transport if isinstance(transport, str) else id(transport)
    async with registry.lock:
        host = registry.hosts.get(key)
        if host is None or (isinstance(transport, LocalLink) and host.link is not transport):
            host = await BumbleHost.open(transport, address=address, keystore=keystore)
            registry.hosts[key] = host
        host.users += 1
        return host


async def release_host(host: BumbleHost) -> None:
    host.users -= 1
    if host.users > 0:
        return
    hosts = _registry().hosts
    if hosts.get(host.key) is host:
        del hosts[host.key]
    await host.close()


class BumbleCentral(GattCentral):
    """A GATT central on a :class:`BumbleHost`.

    ``mtu`` is the ATT_MTU asked for after connecting. Close with :meth:`close` to give the
    shared host back.
    """

    def __init__(self, address: str, host: BumbleHost, *, policy: WritePolicy = READ_ONLY,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 mtu: int = DEFAULT_MTU, owns_host: bool = False) -> None:
        super().__init__(_address_key(address), policy=policy, timeout_s=timeout_s,
                         connect_timeout_s=connect_timeout_s)
        self.host = host
        self.wanted_mtu = mtu
        self.owns_host = owns_host
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self._closed = False

    @classmethod
    async def open(cls, address: str, transport: BumbleTransport, *,
                   policy: WritePolicy = READ_ONLY, timeout_s: float = DEFAULT_TIMEOUT_S,
                   connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                   mtu: int = DEFAULT_MTU, own_address: str | None = None,
                   keystore: str | None = None) -> BumbleCentral:
        """A central toward ``address`` on the shared host of ``transport``."""
        host = await acquire_host(transport, address=own_address, keystore=keystore)
        return cls(address, host, policy=policy, timeout_s=timeout_s,
                   connect_timeout_s=connect_timeout_s, mtu=mtu, owns_host=True)

    async def close(self) -> None:
        """Disconnect and give the shared host back; safe to call twice."""
        with contextlib.suppress(DeviceError):
            await self.disconnect()
        if self.owns_host and not self._closed:
            self._closed = True
            await release_host(self.host)

    # --- primitives -------------------------------------------------------------------------

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise DeviceDisconnected("not connected", self.address)
        return self._peer

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise DeviceDisconnected("not connected", self.address)
        return self._connection

    async def _connect_link(self) -> None:
        async with self.host.connect_lock:
            connection = await self._create_connection()
        self._connection = connection
        self._peer = Peer(connection)
        self._subscribers.clear()

        def on_disconnection(reason: int) -> None:
            if self._connection is connection:
                self._connection = None
                self._peer = None
                self._link_lost(f"HCI reason 0x{reason:02X}")

        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
        if self.wanted_mtu > DEFAULT_ATT_MTU:
            try:
                await self._peer.request_mtu(self.wanted_mtu)
            except (ATT_Error, BumbleTimeoutError) as exc:
                # A device may refuse the exchange; 23 octets still work, only slower.
                logger.info("%s: MTU exchange refused (%s)", self.address, exc)

    async def _create_connection(self) -> Connection:
        device = self.host.device
        try:
            return await asyncio.wait_for(
                device.connect(hci.Address(self.address), timeout=None),
                self.connect_timeout_s)
        except TimeoutError:
            # Stop the controller's pending LE Create Connection (Core Vol 4 Part E §7.8.13)
            # so the next attempt is not refused as "command disallowed".
            with contextlib.suppress(Exception):
                await device.send_sync_command(hci.HCI_LE_Create_Connection_Cancel_Command())
            if self.host.controller is not None:
                # bumble's in-process controller acknowledges the cancel without dropping
                # the pending request; clear it so the link can be used again.
                self.host.controller.pending_le_connection = None
            raise DeviceTimeout(f"device not found within {self.connect_timeout_s} s "
                                "(not advertising, out of range or connected elsewhere)",
                                self.address) from None

    async def _disconnect_link(self) -> None:
        connection = self._connection
        if connection is None:
            return
        with contextlib.suppress(hci.HCI_Error, BumbleConnectionError):
            await connection.disconnect()

    async def _secure_link(self, passkey: int | None) -> None:
        connection = self._require_connection()
        key = _address_key(connection.peer_address)
        if passkey is not None:
            self.host.passkeys[key] = passkey
        keystore = self.host.device.keystore
        keys = None if keystore is None else await keystore.get(str(connection.peer_address))
        if keys is not None:
            try:
                await connection.encrypt()
            except (hci.HCI_Error, BumbleConnectionError) as exc:
                # The device lost the bond (reset, re-paired elsewhere): pair again.
                logger.info("%s: stored bond refused (%s); pairing again", self.address, exc)
            else:
                await self._wait_encrypted(connection)
                return
        await connection.pair()
        await self._wait_encrypted(connection)

    @staticmethod
    async def _wait_encrypted(connection: Connection) -> None:
        # The pairing call returns when SMP completes; the encryption change event of the
        # controller may follow a moment later.
        while not connection.is_encrypted:
            await asyncio.sleep(0.01)

    async def _discover_services(self) -> tuple[GattService, ...]:
        peer = self._require_peer()
        await peer.discover_services()
        services: list[GattService] = []
        for service in peer.services:
            await service.discover_characteristics()
            service_uuid = bumble_uuid(service.uuid)
            characteristics = tuple(
                GattCharacteristic(
                    uuid=bumble_uuid(c.uuid), service_uuid=service_uuid, handle=c.handle,
                    properties=frozenset(name for flag, name in _PROPERTY_NAMES
                                         if c.properties & flag),
                    backend_object=c)
                for c in service.characteristics)
            services.append(GattService(service_uuid, characteristics))
        return tuple(services)

    @staticmethod
    def _proxy(characteristic: GattCharacteristic) -> CharacteristicProxy[Any]:
        proxy = characteristic.backend_object
        if not isinstance(proxy, CharacteristicProxy):
            raise DeviceError(f"characteristic {characteristic.name} was not discovered by "
                              "this backend")
        return proxy

    async def _read_value(self, characteristic: GattCharacteristic) -> bytes:
        return bytes(await self._proxy(characteristic).read_value())

    async def _write_value(self, characteristic: GattCharacteristic, value: bytes,
                           with_response: bool) -> None:
        await self._proxy(characteristic).write_value(value, with_response=with_response)

    async def _write_descriptor_value(self, characteristic: GattCharacteristic,
                                      descriptor_uuid: str, value: bytes) -> None:
        proxy = self._proxy(characteristic)
        if not proxy.descriptors_discovered:
            await proxy.discover_descriptors()
        descriptor = next((d for d in proxy.descriptors
                           if bumble_uuid(d.type) == descriptor_uuid), None)
        if descriptor is None:
            raise DeviceError(f"{characteristic.name} has no descriptor {descriptor_uuid}",
                              self.address)
        await descriptor.write_value(value, with_response=True)

    async def _start_notify(self, characteristic: GattCharacteristic, callback: NotifyCallback,
                            indicate: bool) -> None:
        proxy = self._proxy(characteristic)

        def deliver(value: Any) -> None:
            callback(bytes(value))

        self._subscribers[characteristic.handle] = deliver
        await proxy.subscribe(deliver, prefer_notify=not indicate)

    async def _stop_notify(self, characteristic: GattCharacteristic) -> None:
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._proxy(characteristic).unsubscribe(subscriber, force=True)

    @property
    def mtu(self) -> int:
        connection = self._connection
        return int(connection.att_mtu) if connection is not None else DEFAULT_ATT_MTU

    def _translate_error(self, exc: Exception, what: str) -> DeviceError:
        if isinstance(exc, ATT_Error):
            return AttError(f"{what}: the device answered {exc.error_name}", exc.error_code,
                            self.address)
        if isinstance(exc, BumbleTimeoutError):
            return DeviceTimeout(f"{what}: timed out in the BLE stack", self.address)
        if isinstance(exc, BumbleConnectionError | hci.HCI_Error):
            return DeviceError(f"{what} failed: {exc}", self.address)
        return super()._translate_error(exc, what)


async def scan(transport: BumbleTransport, timeout_s: float = 5.0, *,
               own_address: str | None = None) -> list[Advertisement]:
    """Every advertising device seen on ``transport`` within ``timeout_s``."""
    host = await acquire_host(transport, address=own_address)
    try:
        return await host.scan(timeout_s)
    finally:
        await release_host(host)
