"""Shared pieces of the virtual-device tests: a plain bumble GATT central and small helpers.

The central here uses only bumble's generic GATT client (connect, pair, discover, subscribe,
read, write) — never a project driver — so the peripherals are checked against the wire
protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from bumble import hci
from bumble.device import Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.link import LocalLink

from bridge.records import DeviceInfo, DeviceKind
from simulators.ble.common import (
    HciTransport,
    SecurityConfig,
    close_device,
    open_device,
    pairing_config,
    uuid16,
)

T = TypeVar("T")

CENTRAL_ADDRESS = "C0:00:00:00:00:01"
#: True time at which every test scenario starts.
T0 = dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.UTC)


def run(body: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """Run an async test body on a fresh event loop, failing after ``timeout_s``."""
    async def guarded() -> T:
        # asyncio.timeout raises TimeoutError even when the body swallows the cancellation
        # (wait_for on Python 3.11 can then return normally and hide a hung test).
        async with asyncio.timeout(timeout_s):
            return await body()
    return asyncio.run(guarded())


class FakeNow:
    """A settable true clock (aware UTC) for accelerated time."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.value = start

    def __call__(self) -> dt.datetime:
        return self.value

    def advance(self, **delta: float) -> None:
        self.value += dt.timedelta(**delta)


def device_info(device_id: str, kind: DeviceKind, serial: str = "SN0001") -> DeviceInfo:
    return DeviceInfo(device_id=device_id, kind=kind, manufacturer="Example Medical",
                      model="VM-1", serial_number=serial, firmware_revision="1.2.3",
                      hardware_revision="B", software_revision="4.5",
                      system_id="0102030405060708")


class Central:
    """A test central on bumble's plain GATT client."""

    def __init__(self, device: Device, security: SecurityConfig) -> None:
        self.device = device
        self.security = security
        self.connection: Connection | None = None
        self.peer: Peer | None = None
        self.disconnected = asyncio.Event()
        self.disconnect_reason: int | None = None

    @classmethod
    async def open(cls, transport: HciTransport, address: str = CENTRAL_ADDRESS,
                   security: SecurityConfig | None = None) -> Central:
        sec = security or SecurityConfig()
        device = await open_device("central", address, transport)
        device.pairing_config_factory = lambda _c: pairing_config(sec, central=True)
        await device.power_on()
        return cls(device, sec)

    async def connect(self, peer_address: str) -> Connection:
        connection = await self.device.connect(hci.Address(peer_address))
        self.connection = connection
        self.disconnected.clear()

        def on_disconnection(reason: int) -> None:
            self.disconnect_reason = reason
            self.disconnected.set()

        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
        self.peer = Peer(connection)
        return connection

    async def pair(self) -> None:
        assert self.connection is not None
        await self.connection.pair()
        # Wait until the link is actually encrypted with the new keys.
        for _ in range(100):
            if self.connection.encryption:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("link not encrypted after pairing")

    async def discover(self) -> Peer:
        assert self.peer is not None
        await self.peer.discover_services()
        for service in self.peer.services:
            await service.discover_characteristics()
        return self.peer

    def char(self, uuid: int, service: int | None = None) -> CharacteristicProxy[bytes]:
        assert self.peer is not None
        if service is not None:
            found = [c for s in self.peer.get_services_by_uuid(uuid16(service))
                     for c in s.get_characteristics_by_uuid(uuid16(uuid))]
        else:
            found = self.peer.get_characteristics_by_uuid(uuid16(uuid))
        assert found, f"characteristic 0x{uuid:04X} not found"
        return found[0]

    async def read(self, uuid: int) -> bytes:
        return bytes(await self.char(uuid).read_value())

    async def subscribe(self, uuid: int, *, indicate: bool = False,
                        service: int | None = None) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await self.char(uuid, service).subscribe(
            lambda value: queue.put_nowait(bytes(value)), prefer_notify=not indicate)
        return queue

    async def write(self, uuid: int, value: bytes, service: int | None = None) -> None:
        await self.char(uuid, service).write_value(value, with_response=True)

    async def close(self) -> None:
        await close_device(self.device)


async def drain(queue: asyncio.Queue[T], idle_s: float = 0.2) -> list[T]:
    """Everything that arrives on ``queue`` until it stays quiet for ``idle_s``."""
    out: list[T] = []
    while True:
        try:
            out.append(await asyncio.wait_for(queue.get(), idle_s))
        except TimeoutError:
            return out


async def next_value(queue: asyncio.Queue[T], timeout_s: float = 5.0) -> T:
    return await asyncio.wait_for(queue.get(), timeout_s)


@contextlib.asynccontextmanager
async def started(*peripherals: Any) -> Any:
    """Start peripherals, stop them all afterwards (even on failure)."""
    try:
        for p in peripherals:
            await p.start()
        yield peripherals
    finally:
        for p in peripherals:
            await p.stop()


@pytest.fixture
def link() -> Iterator[LocalLink]:
    yield LocalLink()


@contextlib.asynccontextmanager
async def two_devices(peripheral: Any, link: LocalLink, *, pair: bool = True,
                      security: SecurityConfig | None = None,
                      central_address: str = CENTRAL_ADDRESS) -> Any:
    """Start ``peripheral`` on ``link``, connect a :class:`Central` (paired unless told
    otherwise) and discover its services; stop both afterwards, even on failure."""
    central: Central | None = None
    try:
        await peripheral.start()
        central = await Central.open(link, central_address,
                                     security or peripheral.config.security)
        await central.connect(peripheral.config.address)
        if pair:
            await central.pair()
        await central.discover()
        yield central
    finally:
        if central is not None:
            await central.close()
        await peripheral.stop()
