"""Serial ports for the meter drivers: pyserial URLs behind an asyncio interface.

A meter cable is a byte stream. :class:`SerialLink` opens it with ``serial.serial_for_url``,
so every URL pyserial knows works the same way: a device path (``/dev/ttyUSB0``, a pty slave),
``socket://host:port`` (the emulators' TCP ports), ``loop://``. One reader thread per open
port does the blocking reads with a short poll interval and hands the bytes to the event loop;
the coroutines wait on them with a per-operation timeout. So:

* no answer in time → :class:`~bridge.devices.base.DeviceTimeout`;
* the line drops (pty master closed, USB adapter pulled, TCP peer gone) or the port was
  closed → :class:`~bridge.devices.base.DeviceDisconnected`, after the bytes that did arrive
  have been handed out;
* a command the read-only bridge must not send → :class:`ForbiddenCommand`, raised by the
  drivers before a single byte is written.

The second half of the module holds what the four serial meter drivers share: their option
handling, the provisional UTC instant of a record, and the "anchor" bookkeeping that turns a
meter's full memory dump into an incremental sync (see ``docs/serial.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import serial

from bridge.devices.base import (
    ClockObservation,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    SyncState,
)
from bridge.records import AnyRecord, BloodGlucoseReading, SampleType

logger = logging.getLogger(__name__)

#: Every serial meter in this package talks 9600 8N1 (OneTouch, Contour, 11073 over USB-serial).
DEFAULT_BAUDRATE = 9600
#: Default time allowed for one answer from a meter.
DEFAULT_TIMEOUT_S = 2.0
#: How long the reader thread blocks in one read before it looks whether it should stop.
POLL_S = 0.02
#: Upper bound of bytes the reader thread hands over at once.
_CHUNK = 4096


class ForbiddenCommand(DeviceError):
    """The driver refused a command that would change the meter (set its clock, erase it).

    The bridge is read-only towards devices: erasing a meter's memory is never sent; setting
    its clock only when the device's configuration enables time writes. Raised before any
    byte reaches the port. ``command`` names the command as the protocol spells it.
    """

    def __init__(self, command: str, reason: str, device: str | None = None) -> None:
        self.command = command
        self.reason = reason
        super().__init__(f"command {command} refused: {reason}", device)


class TransferIncomplete(DeviceError):
    """Retries are used up and part of the meter's records never arrived intact.

    ``kept`` holds the records that did decode (already canonical); ``missing`` how many are
    known to be lost (``None`` when the protocol cannot tell). Nothing was committed: the sync
    state is unchanged, so the next sync reads them again.
    """

    def __init__(self, message: str, device: str | None = None, *,
                 kept: Sequence[AnyRecord] = (), missing: int | None = None) -> None:
        self.kept = tuple(kept)
        self.missing = missing
        super().__init__(message, device)


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Line settings handed to pyserial (ignored by pty and ``socket://`` ports)."""

    baudrate: int = DEFAULT_BAUDRATE
    bytesize: int = serial.EIGHTBITS
    parity: str = serial.PARITY_NONE
    stopbits: float = serial.STOPBITS_ONE
    #: Default per-operation timeout of :class:`SerialLink` reads and writes.
    timeout_s: float = DEFAULT_TIMEOUT_S


class SerialLink:
    """One serial port, opened from a pyserial URL, with asyncio reads and writes.

    Reads wait for bytes from the reader thread and raise :class:`DeviceTimeout` when none
    come within the operation's timeout; once the line has dropped, what was received is
    still handed out, then every read raises :class:`DeviceDisconnected`. ``bytes_written``
    counts every byte sent, so a test can prove that a refused command sent nothing.
    """

    def __init__(self, url: str, settings: SerialSettings | None = None, *,
                 poll_s: float = POLL_S) -> None:
        self.url = url
        self.settings = settings or SerialSettings()
        self.poll_s = poll_s
        self.bytes_written = 0
        self._port: Any = None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._ready: asyncio.Event | None = None
        self._lost: str | None = None
        self._write_lock: asyncio.Lock | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._port is not None

    async def open(self) -> None:
        """Open the port and start its reader thread (a no-op when already open)."""
        if self._port is not None:
            return
        s = self.settings
        try:
            port = await asyncio.to_thread(
                serial.serial_for_url, self.url, baudrate=s.baudrate, bytesize=s.bytesize,
                parity=s.parity, stopbits=s.stopbits, timeout=self.poll_s,
                write_timeout=s.timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceError(f"cannot open serial port: {exc}", self.url) from exc
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._buffer.clear()
        self._lost = None
        self._port = port
        self._generation += 1
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(
            target=self._read_loop, args=(port, stop, self._generation, self._loop),
            name=f"serial-reader {self.url}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Stop the reader thread and close the port; safe to call twice."""
        port, self._port = self._port, None
        thread, self._thread = self._thread, None
        if self._stop is not None:
            self._stop.set()
        if port is None:
            return
        with contextlib.suppress(Exception):
            # Wakes a posix read at once; other port classes notice the stop flag within
            # one poll interval.
            port.cancel_read()
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(_close_port, port)
        if self._ready is not None:
            self._ready.set()

    async def reopen(self, delay_s: float = 0.0) -> None:
        """Close, wait ``delay_s`` (the far end must see the line drop), open again."""
        await self.close()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await self.open()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- reader thread -------------------------------------------------------------------------

    def _read_loop(self, port: Any, stop: threading.Event, generation: int,
                   loop: asyncio.AbstractEventLoop) -> None:
        while not stop.is_set():
            try:
                chunk = bytes(port.read(1))
                if chunk:
                    while len(chunk) < _CHUNK:
                        waiting = port.in_waiting
                        if not waiting:
                            break
                        chunk += bytes(port.read(min(waiting, _CHUNK - len(chunk))))
            except Exception as exc:  # pyserial raises SerialException, OSError, TypeError…
                if not stop.is_set():
                    self._deliver(loop, generation, b"", f"serial line dropped: {exc}")
                return
            if chunk and not self._deliver(loop, generation, chunk, None):
                return

    def _deliver(self, loop: asyncio.AbstractEventLoop, generation: int, data: bytes,
                 lost: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(self._feed, generation, data, lost)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            return False
        return True

    def _feed(self, generation: int, data: bytes, lost: str | None) -> None:
        if generation != self._generation:
            return  # a reader of a port that has since been reopened
        self._buffer += data
        if lost is not None:
            self._lost = lost
        if self._ready is not None:
            self._ready.set()

    # --- reading -------------------------------------------------------------------------------

    def _gone(self) -> DeviceDisconnected:
        if self._lost is not None:
            return DeviceDisconnected(self._lost, self.url)
        return DeviceDisconnected("serial port is closed", self.url)

    async def _wait(self, deadline: float, what: str) -> None:
        """Wait until more bytes (or the end of the line) arrive, at most until ``deadline``."""
        if self._port is None or self._lost is not None:
            raise self._gone()
        assert self._ready is not None and self._loop is not None
        self._ready.clear()
        remaining = deadline - self._loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._ready.wait(), remaining)
        except TimeoutError:
            raise DeviceTimeout(f"no answer within the timeout while waiting for {what}",
                                self.url) from None
        if self._port is None:
            raise self._gone()

    def _deadline(self, timeout: float | None) -> float:
        assert self._loop is not None
        return self._loop.time() + (self.settings.timeout_s if timeout is None else timeout)

    def _require_open(self) -> None:
        if self._port is None:
            raise self._gone()

    async def read_some(self, timeout: float | None = None, what: str = "data") -> bytes:
        """Whatever has arrived (at least one byte)."""
        self._require_open()
        deadline = self._deadline(timeout)
        while not self._buffer:
            await self._wait(deadline, what)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read_exactly(self, size: int, timeout: float | None = None,
                           what: str = "data") -> bytes:
        """Exactly ``size`` bytes; the timeout covers the whole read."""
        self._require_open()
        deadline = self._deadline(timeout)
        while len(self._buffer) < size:
            await self._wait(deadline, what)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_until(self, terminator: bytes, timeout: float | None = None,
                         what: str = "data") -> bytes:
        """Bytes up to and including ``terminator``; the timeout covers the whole read."""
        self._require_open()
        deadline = self._deadline(timeout)
        while (end := self._buffer.find(terminator)) < 0:
            await self._wait(deadline, what)
        end += len(terminator)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the input (a caller that read past a message end)."""
        self._buffer[:0] = data

    def discard_input(self) -> bytes:
        """Drop and return what has been received but not read (stale answers before a retry)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # --- writing -------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        self._require_open()
        assert self._write_lock is not None
        port = self._port
        async with self._write_lock:
            try:
                await asyncio.to_thread(_write_all, port, bytes(data))
            except serial.SerialTimeoutException as exc:
                raise DeviceTimeout(f"write timed out: {exc}", self.url) from exc
            except (serial.SerialException, OSError) as exc:
                self._lost = self._lost or f"serial line dropped: {exc}"
                raise DeviceDisconnected(self._lost, self.url) from exc
            except (AttributeError, TypeError) as exc:  # the port was closed meanwhile
                raise self._gone() from exc
        self.bytes_written += len(data)


def _close_port(port: Any) -> None:
    # pyserial's socket:// port skips closing its socket when shutdown() fails, which it does
    # once the peer has dropped the connection; close it here so no descriptor leaks.
    sock = getattr(port, "_socket", None)
    try:
        port.close()
    finally:
        if sock is not None:
            sock.close()


def _write_all(port: Any, data: bytes) -> None:
    port.write(data)
    port.flush()


# ================================================================================================
# Shared by the serial meter drivers
# ================================================================================================


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialDriverOptions:
    """Options every serial meter driver takes (the agent's per-device configuration).

    * ``timeout_s``: time allowed for one answer; ``retries``: how often a corrupted or lost
      answer is asked for again before the driver gives up.
    * ``baudrate``: line speed for real adapters (pty and ``socket://`` ignore it).
    * ``allow_time_write``: the one write a device's configuration may enable — setting the
      meter clock, where the driver offers it. Erasing memory has no switch.
    * ``now``: the gateway clock (aware UTC), used for clock observations.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = 3
    baudrate: int = DEFAULT_BAUDRATE
    allow_time_write: bool = False
    now: Callable[[], dt.datetime] = utc_now

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, got {self.retries}")

    def settings(self) -> SerialSettings:
        return SerialSettings(baudrate=self.baudrate, timeout_s=self.timeout_s)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None, device: str | None = None) -> Self:
        """Options from the agent's configuration; unknown keys and wrong types are refused."""
        if not options:
            return cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise DeviceError(f"unknown option(s) {unknown} for {cls.__name__}; known: "
                              f"{sorted(fields)}", device)
        defaults = cls()
        for name, value in options.items():
            default = getattr(defaults, name)
            if not _fits(default, value):
                raise DeviceError(f"option {name!r} must be like {default!r}, got {value!r}",
                                  device)
        try:
            return cls(**dict(options))
        except (TypeError, ValueError) as exc:
            raise DeviceError(f"invalid options: {exc}", device) from exc


def _fits(default: object, value: object) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if callable(default):
        return callable(value)
    return True


def provisional_utc(device_time: dt.datetime, clock: ClockObservation | None) -> dt.datetime:
    """The provisional UTC instant of a record stamped ``device_time`` by the meter.

    The meter's clock read at ``clock.gateway_time`` showed ``clock.device_time``; shifting the
    record by the same difference puts it on the gateway's (UTC) clock, whatever zone the meter
    keeps. The agent's clock correction refines it from ``device_time``; without an
    observation the device time is taken as UTC.
    """
    if clock is None:
        return device_time.replace(tzinfo=dt.UTC)
    return (device_time + (clock.gateway_time.astimezone(dt.UTC).replace(tzinfo=None)
                           - clock.device_time)).replace(tzinfo=dt.UTC)


def midpoint(start: dt.datetime, end: dt.datetime) -> dt.datetime:
    """The gateway instant a clock reading is taken to belong to (between ask and answer)."""
    return start + (end - start) / 2


# --- incremental sync over full memory dumps ------------------------------------------------------

#: Key of the sync state holding the fingerprint of the newest reading seen.
STATE_NEWEST = "newest"
#: Key of the number of readings the meter held at the last sync.
STATE_COUNT = "count"


def fingerprint(reading: BloodGlucoseReading) -> dict[str, Any]:
    """What identifies a stored reading across dumps: its device time, value and specimen.

    Record positions are no identity (index 0 is the newest and shifts with every new test);
    the device time is, as the idempotency key downstream uses it.
    """
    return {
        "device_time": None if reading.device_time is None else reading.device_time.isoformat(),
        "glucose_mg_dl": reading.glucose_mg_dl,
        "control": reading.sample_type is SampleType.CONTROL_SOLUTION,
    }


@dataclass(frozen=True, slots=True)
class NewReadings:
    """Result of :func:`since_anchor`."""

    readings: list[BloodGlucoseReading]
    state: dict[str, Any]
    notices: list[str]
    anchor_found: bool


def since_anchor(newest_first: Sequence[BloodGlucoseReading], state: SyncState,
                 count: int | None = None) -> NewReadings:
    """The readings newer than the anchor stored in ``state`` (all of them for an empty state).

    ``newest_first`` is the meter's memory in its own order. The anchor is the fingerprint of
    the newest reading of the previous sync; everything in front of its first occurrence is
    new. If it is gone (memory cleared, wrapped, or the meter replaced) every reading is
    returned and a notice says so; duplicates are then dropped downstream by idempotency key.
    """
    anchor = state.get(STATE_NEWEST) if state else None
    notices: list[str] = []
    found = False
    new: list[BloodGlucoseReading] = list(newest_first)
    if anchor is not None:
        for i, reading in enumerate(newest_first):
            if fingerprint(reading) == anchor:
                new = list(newest_first[:i])
                found = True
                break
        if not found:
            previous = state.get(STATE_COUNT)
            held = len(newest_first) if count is None else count
            why = ("the meter holds fewer readings than before: memory cleared"
                   if isinstance(previous, int) and held < previous
                   else "memory cleared, wrapped around, or a different meter")
            notices.append(f"newest reading of the last sync not found ({why}); all "
                           f"{len(newest_first)} readings returned")
    next_state: dict[str, Any] = dict(state) if state else {}
    if newest_first:
        next_state[STATE_NEWEST] = fingerprint(newest_first[0])
    elif not found:
        next_state.pop(STATE_NEWEST, None)
    next_state[STATE_COUNT] = len(newest_first) if count is None else count
    return NewReadings(new, next_state, notices, found)
