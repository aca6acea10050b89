"""The edge agent: one sync loop per device, one uplink loop, one housekeeping loop.

Each device loop opens the device's driver, reads what is new since the stored sync state,
corrects the device clock, commits records + sync state + clock state in one outbox
transaction, publishes the device's status, closes the driver and sleeps for the poll
interval. A failed sync is counted, reported in the device status and retried after an
exponential, jittered backoff; one device's trouble never stops the others or the uplink.

SIGINT/SIGTERM stop the loops: an unfinished sync is abandoned (nothing of it was committed,
so it is read again next time), the uplink says ``offline`` and the outbox is closed.
"""

# The driver stacks are imported when a device needs them (see open_driver).
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.devices.base import DeviceDriver, DeviceError, DeviceTimeout, SyncResult
from bridge.edge.clock import correct_sync
from bridge.edge.config import AgentConfig, DeviceConfig
from bridge.edge.outbox import Outbox
from bridge.edge.uplink import Uplink, backoff_delay
from bridge.messages import DeviceState, DeviceStatus

log = logging.getLogger(__name__)

#: Opens the driver of one configured device (may be a coroutine function).
DriverFactory = Callable[[DeviceConfig], "Awaitable[DeviceDriver] | DeviceDriver"]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: ``bumble_transport`` value for virtual devices on the agent process's own in-memory link
#: (``hddt-bridge demo`` runs devices and agent in one process).
IN_PROCESS_TRANSPORT = "in-process"


async def open_driver(device: DeviceConfig, *, link: object | None = None) -> DeviceDriver:
    """The driver for ``device`` through the project's BLE or serial driver factory.

    ``link`` is an in-process bumble ``LocalLink`` for virtual BLE devices (tests, benches);
    it takes the place of the configured bumble transport. The driver modules are imported
    only when a device of their transport is opened, so a gateway with serial meters only
    never loads the BLE stack.
    """
    if device.transport == "ble":
        from bridge.devices.ble import open_ble_driver

        assert device.profile is not None and device.address is not None
        transport = device.bumble_transport
        if transport == IN_PROCESS_TRANSPORT:
            if link is None:
                raise DeviceError("bumble_transport 'in-process' needs the virtual link of the "
                                  "process that runs the agent (the demo, a bench)",
                                  device.name)
            transport = None
        return await open_ble_driver(device.profile, device.address, backend=device.backend,
                                     transport=transport, link=link,
                                     options=device.driver_options())
    from bridge.devices.serial import open_serial_driver

    assert device.protocol is not None and device.port is not None
    return open_serial_driver(device.protocol, device.port, options=device.driver_options())


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    device: str
    read: int
    inserted: int
    notices: tuple[str, ...]


class Agent:
    """Runs the configured devices and the uplink. ``link`` puts the BLE devices on an
    in-process bumble link; ``driver_factory`` replaces :func:`open_driver` altogether."""

    def __init__(self, config: AgentConfig, *, outbox: Outbox | None = None,
                 driver_factory: DriverFactory | None = None, link: object | None = None,
                 now: Callable[[], dt.datetime] = _utcnow,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.outbox = outbox or Outbox(config.outbox_path, config.outbox_limits)
        self._owns_outbox = outbox is None
        self.uplink = Uplink(config.broker, config.gateway_id, self.outbox, rng=rng)
        self._factory: DriverFactory = driver_factory or (
            lambda device: open_driver(device, link=link))
        self._now = now
        self._rng = rng or random.Random()
        self.syncs = 0

    # --- one sync -----------------------------------------------------------------------------

    async def _open(self, device: DeviceConfig) -> DeviceDriver:
        opened = self._factory(device)
        driver = await opened if inspect.isawaitable(opened) else opened
        assert isinstance(driver, DeviceDriver)
        return driver

    async def sync_once(self, device: DeviceConfig) -> SyncOutcome:
        """Open, sync, commit and close one device; raises what the driver raised."""
        log.info("%s: sync started", device.name)
        driver = await self._open(device)
        try:
            state = self.outbox.sync_state(device.name)
            try:
                result: SyncResult = await asyncio.wait_for(driver.sync(state),
                                                            device.sync_timeout_s)
            except TimeoutError:
                raise DeviceTimeout(f"sync did not finish within {device.sync_timeout_s:g} s",
                                    device.target) from None
        finally:
            with contextlib.suppress(Exception):
                await driver.close()
        records, clock = correct_sync(result.records, result.clock,
                                      self.outbox.clock_state(device.name),
                                      device.clock_policy(self.config.clock), self._now())
        # Records, the driver's new position and the clock state commit together: a crash on
        # either side of this line loses nothing and duplicates nothing.
        inserted = self.outbox.put_sync(device.name, records, result.state, clock,
                                        info=result.info)
        self.syncs += 1
        for notice in result.notices:
            log.warning("%s: %s", device.name, notice)
        if inserted:
            self.uplink.wake()
        return SyncOutcome(device.name, len(records), inserted, result.notices)

    def _status(self, device: DeviceConfig, state: DeviceState) -> DeviceStatus:
        stats = self.outbox.device_stats(device.name)
        return DeviceStatus(device_id=stats.device_id or device.name, state=state,
                            at=self._now(), last_sync=stats.last_sync,
                            records_synced=stats.records_synced, queued=stats.queued,
                            dropped=stats.dropped, errors=stats.errors,
                            last_error=stats.last_error)

    # --- the loops ----------------------------------------------------------------------------

    async def _device_loop(self, device: DeviceConfig, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                outcome = await self.sync_once(device)
            except Exception as exc:
                failures += 1
                message = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, DeviceError):
                    log.warning("%s: sync failed: %s", device.name, message)
                    state = DeviceState.DISCONNECTED
                else:
                    log.exception("%s: sync failed", device.name)
                    state = DeviceState.ERROR
                self.outbox.record_error(device.name, message)
                self.uplink.set_device_status(self._status(device, state))
                delay = backoff_delay(failures - 1, device.retry_min_s, device.retry_max_s,
                                      self._rng)
            else:
                failures = 0
                log.info("%s: read %d records, %d new", device.name, outcome.read,
                         outcome.inserted)
                self.uplink.set_device_status(self._status(device, DeviceState.CONNECTED))
                delay = device.poll_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _uplink_loop(self, stop: asyncio.Event) -> None:
        # The uplink handles broker trouble itself; this only keeps an unforeseen bug in it
        # from silently ending delivery while the devices keep syncing.
        while not stop.is_set():
            try:
                await self.uplink.run(stop)
            except Exception:
                log.exception("uplink failed; restarting it")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.broker.reconnect_max_s)

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        # The TTL must bite even while the broker is unreachable for days.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.status_interval_s)
            dropped = self.outbox.expire()
            if dropped:
                log.warning("outbox: dropped %d records past their TTL", dropped)

    async def run(self, stop: asyncio.Event | None = None, *,
                  handle_signals: bool = True) -> None:
        """Run until ``stop`` is set (or SIGINT/SIGTERM when ``handle_signals``)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
                    installed.append(sig)
        tasks = [asyncio.create_task(self._device_loop(d, stop), name=f"device:{d.name}")
                 for d in self.config.devices if d.enabled]
        tasks.append(asyncio.create_task(self._housekeeping(stop), name="housekeeping"))
        uplink = asyncio.create_task(self._uplink_loop(stop), name="uplink")
        try:
            await stop.wait()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # The uplink ends on its own once stop is set (announcing offline); do not let a
            # hung broker keep the process alive though.
            try:
                await asyncio.wait_for(uplink, self.config.broker.publish_timeout_s + 5)
            except TimeoutError:
                uplink.cancel()
                await asyncio.gather(uplink, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._owns_outbox:
                self.outbox.close()
