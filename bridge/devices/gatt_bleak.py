"""The bleak implementation of :class:`~bridge.devices.gatt.GattCentral` (BlueZ on Linux).

The production path on a Raspberry Pi: bleak talks to BlueZ over D-Bus. The adapter is kept
thin on purpose — it maps the raw GATT primitives onto :class:`bleak.BleakClient` and
translates bleak's errors; timeouts, disconnection handling and the read-only write guard
are the base class's, so they are the same code the bumble tests exercise.

bleak is imported only when a bleak central is made or a bleak scan runs, so everything
else (the bumble backend, the tests) works without it.

Notes on BlueZ:

* pairing: :meth:`BleakCentral._secure_link` asks BlueZ to pair (it does nothing when the
  device is already bonded). Just Works needs no agent. A device that needs a passkey must
  be paired once beforehand with an agent (``bluetoothctl``: ``agent KeyboardOnly``,
  ``pair <address>``); the bond is then used from BlueZ's store.
* subscriptions: BlueZ writes the CCCD itself when notifications start and picks notify or
  indicate from the characteristic's properties; the guard has checked the CCCD value
  first either way.
* MTU: BlueZ negotiates the ATT_MTU on its own; bleak may report 23 with older BlueZ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bridge.devices.base import DeviceError
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

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.args.bluez import BlueZScannerArgs
    from bleak.backends.characteristic import BleakGATTCharacteristic

logger = logging.getLogger(__name__)


class BleakCentral(GattCentral):
    """A GATT central on bleak. ``adapter`` picks the BlueZ adapter (``hci0``)."""

    def __init__(self, address: str, *, adapter: str | None = None,
                 policy: WritePolicy = READ_ONLY, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        super().__init__(address.upper(), policy=policy, timeout_s=timeout_s,
                         connect_timeout_s=connect_timeout_s)
        self.adapter = adapter
        self._client: BleakClient | None = None

    async def close(self) -> None:
        await self.disconnect()

    def _require_client(self) -> BleakClient:
        if self._client is None:
            raise DeviceError("not connected", self.address)
        return self._client

    async def _connect_link(self) -> None:
        from bleak import BleakClient  # noqa: PLC0415 -- bleak is an optional dependency

        def on_disconnect(_client: BleakClient) -> None:
            self._link_lost("BlueZ reported the disconnection")

        client = BleakClient(self.address, on_disconnect, timeout=self.connect_timeout_s,
                             bluez={"adapter": self.adapter} if self.adapter else {})
        await client.connect()
        self._client = client

    async def _disconnect_link(self) -> None:
        client = self._client
        if client is not None:
            await client.disconnect()

    async def _secure_link(self, passkey: int | None) -> None:
        if passkey is not None:
            logger.info("%s: passkey pairing goes through the BlueZ agent; pair the device "
                        "once with bluetoothctl if it is not bonded yet", self.address)
        await self._require_client().pair()

    async def _discover_services(self) -> tuple[GattService, ...]:
        client = self._require_client()
        services = []
        for service in client.services:
            service_uuid = normalize_uuid(service.uuid)
            services.append(GattService(service_uuid, tuple(
                GattCharacteristic(uuid=normalize_uuid(c.uuid), service_uuid=service_uuid,
                                   handle=c.handle, properties=frozenset(c.properties),
                                   backend_object=c)
                for c in service.characteristics)))
        return tuple(services)

    @staticmethod
    def _native(characteristic: GattCharacteristic) -> BleakGATTCharacteristic:
        from bleak.backends.characteristic import (  # noqa: PLC0415 -- optional dependency
            BleakGATTCharacteristic,
        )
        native = characteristic.backend_object
        if not isinstance(native, BleakGATTCharacteristic):
            raise DeviceError(f"characteristic {characteristic.name} was not discovered by "
                              "this backend")
        return native

    async def _read_value(self, characteristic: GattCharacteristic) -> bytes:
        return bytes(await self._require_client().read_gatt_char(self._native(characteristic)))

    async def _write_value(self, characteristic: GattCharacteristic, value: bytes,
                           with_response: bool) -> None:
        await self._require_client().write_gatt_char(self._native(characteristic), value,
                                                     response=with_response)

    async def _write_descriptor_value(self, characteristic: GattCharacteristic,
                                      descriptor_uuid: str, value: bytes) -> None:
        native = self._native(characteristic)
        descriptor = next((d for d in native.descriptors
                           if normalize_uuid(d.uuid) == descriptor_uuid), None)
        if descriptor is None:
            raise DeviceError(f"{characteristic.name} has no descriptor {descriptor_uuid}",
                              self.address)
        await self._require_client().write_gatt_descriptor(descriptor, value)

    async def _start_notify(self, characteristic: GattCharacteristic, callback: NotifyCallback,
                            indicate: bool) -> None:
        def deliver(_sender: Any, data: bytearray) -> None:
            callback(bytes(data))

        await self._require_client().start_notify(self._native(characteristic), deliver)

    async def _stop_notify(self, characteristic: GattCharacteristic) -> None:
        await self._require_client().stop_notify(self._native(characteristic))

    @property
    def mtu(self) -> int:
        client = self._client
        if client is None or not client.is_connected:
            return DEFAULT_ATT_MTU
        return int(client.mtu_size)

    def _translate_error(self, exc: Exception, what: str) -> DeviceError:
        from bleak.exc import (  # noqa: PLC0415 -- optional dependency
            BleakDeviceNotFoundError,
            BleakError,
            BleakGATTProtocolError,
        )
        if isinstance(exc, BleakGATTProtocolError):
            return AttError(f"{what}: the device answered {exc.code.name}", int(exc.code),
                            self.address)
        if isinstance(exc, BleakDeviceNotFoundError):
            return DeviceError(f"{what}: device not found (not advertising or out of range)",
                               self.address)
        if isinstance(exc, BleakError):
            return DeviceError(f"{what} failed: {exc}", self.address)
        return super()._translate_error(exc, what)


async def scan(timeout_s: float = 5.0, *, service_uuids: Sequence[str] | None = None,
               adapter: str | None = None) -> list[Advertisement]:
    """Devices advertising within ``timeout_s`` (only those listing one of
    ``service_uuids`` when given; BlueZ filters in the controller where it can)."""
    from bleak import BleakScanner  # noqa: PLC0415 -- bleak is an optional dependency

    bluez: BlueZScannerArgs = {"adapter": adapter} if adapter else {}
    if service_uuids:
        found = await BleakScanner.discover(timeout_s, return_adv=True,
                                            service_uuids=list(service_uuids), bluez=bluez)
    else:
        found = await BleakScanner.discover(timeout_s, return_adv=True, bluez=bluez)
    out = []
    for device, adv in found.values():
        out.append(Advertisement(
            address=device.address.upper(), name=adv.local_name or device.name,
            rssi=adv.rssi, service_uuids=tuple(normalize_uuid(u) for u in adv.service_uuids)))
    return out
