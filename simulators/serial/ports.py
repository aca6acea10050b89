"""Byte-stream ports for the serial meter emulators, and the meter core they share.

A real serial meter is a byte stream on a cable: a USB-serial adapter shows up as a tty the
host opens, bytes go both ways, and pulling the cable ends the stream. The emulators serve the
same stream two ways:

* :class:`PtyPort`: a pseudo-terminal pair. The emulator keeps the master side (raw mode,
  non-blocking, read through ``loop.add_reader``); the client opens the slave path (e.g.
  ``/dev/pts/7``) exactly like ``/dev/ttyUSB0``. The emulator holds no slave descriptor of its
  own, so the master reports a hang-up whenever no client has the slave open: that is how an
  emulator sees a client "plug in" and leave. Baud rate and framing settings are accepted and
  have no effect, as on any pty.
* :class:`TcpPort`: a TCP server for pyserial's ``socket://host:port`` URL. One client at a
  time, like a serial line; a second connection is closed at once.

Either way an emulator talks to a :class:`ByteLink` (receive with a timeout, send, hang up),
so the same protocol code runs over both. A session starts ``settle_s`` after the client
connects: clients (pyserial among them) flush their input right after opening a port, so bytes
a meter sends in that instant would be lost — a meter that speaks first (IEEE 11073-20601
agent, ASTM E1381 sender) waits for the line to settle as a real one waits for the cable.

:class:`MeterCore` is the device side every emulated meter shares: the record memory (capacity,
wrap-around, fault-driven memory resets and duplicates), the device clock (model clock plus
clock faults plus any time the host set), the identity, and the log of commands that changed
the meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import select
import struct
import termios
import tty
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bridge.records import BloodGlucoseReading, DeviceInfo
from simulators.device_clock import DeviceClock
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig, FaultInjector

logger = logging.getLogger(__name__)

#: Seconds a session waits after a client connects before the meter may speak first.
DEFAULT_SETTLE_S = 0.1
#: How often a pty port looks whether a client has opened the slave side.
PTY_POLL_S = 0.02
#: Longest wait for a client to read what the meter sent before a simulated unplug.
HANG_UP_DRAIN_S = 2.0
_READ_SIZE = 4096


class LinkClosed(SimulatorError):
    """The client went away (or the meter hung up) while the meter was sending."""


# ------------------------------------------------------------------------------------------------
# Links: one connected client
# ------------------------------------------------------------------------------------------------


class ByteLink:
    """The byte stream to one connected client.

    :meth:`receive` returns whatever arrived (at least one byte), ``b""`` once the client has
    gone, and raises :class:`TimeoutError` when nothing came in time. :meth:`send` raises
    :class:`LinkClosed` when the client is gone. :meth:`hang_up` is the meter pulling its
    cable: what was sent is delivered first, then the client sees the line drop.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._ready = asyncio.Event()
        self.hung_up = False

    # --- incoming -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._ready.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    @property
    def at_eof(self) -> bool:
        """True once the client is gone and everything it sent has been received."""
        return self._eof and not self._buffer

    @property
    def client_gone(self) -> bool:
        """True once the client has left (unread bytes may remain)."""
        return self._eof

    async def receive(self, timeout: float | None = None) -> bytes:
        if not self._buffer and not self._eof:
            self._ready.clear()
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a
            # cancellation that coincides with the event being set.
            async with asyncio.timeout(None if timeout is None else max(timeout, 0.0)):
                await self._ready.wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # --- outgoing -------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self._eof or self.hung_up:
            raise LinkClosed("the client is gone")
        await self._write(bytes(data))

    async def _write(self, data: bytes) -> None:
        raise NotImplementedError

    async def hang_up(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the line at once (shutdown)."""
        raise NotImplementedError


class PtyLink(ByteLink):
    """The client on the slave side of a :class:`PtyPort`'s pseudo-terminal."""

    def __init__(self, pty: _Pty) -> None:
        super().__init__()
        self._pty = pty
        self._loop = asyncio.get_running_loop()
        self._reading = True
        self._loop.add_reader(pty.master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._pty.master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            # EIO: the last slave descriptor was closed, the client has left.
            data = b""
        if data:
            self._feed(data)
        else:
            self.stop_reading()
            self._feed_eof()

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._pty.master)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._pty.closed:
                raise LinkClosed("the pty was closed")
            try:
                written = os.write(self._pty.master, view)
            except BlockingIOError:
                # The client reads slower than the meter writes: wait for room (or for it to go).
                await self._writable(0.05)
                if self._eof:
                    raise LinkClosed("the client closed the port") from None
                continue
            except OSError as exc:
                raise LinkClosed(f"pty write failed: {exc}") from None
            view = view[written:]

    async def _writable(self, timeout: float) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_writer(self._pty.master, ready)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            self._loop.remove_writer(self._pty.master)

    async def hang_up(self) -> None:
        """Wait (bounded) until the client has read everything, then close the master.

        Closing a pty master discards what the slave has not read yet, unlike a cable pulled
        after the last byte left the meter; so the unread count of the slave side is watched
        first (TIOCINQ through a short-lived descriptor of our own).
        """
        if self.hung_up:
            return
        self.hung_up = True
        self.stop_reading()
        await _drain_slave(self._pty.path)
        self._pty.close()
        self._feed_eof()

    def abort(self) -> None:
        self.stop_reading()
        self._feed_eof()


class TcpLink(ByteLink, asyncio.Protocol):
    """One TCP client of a :class:`TcpPort` (asyncio protocol feeding the link buffer)."""

    def __init__(self, port: TcpPort) -> None:
        ByteLink.__init__(self)
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = asyncio.Event()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._port.accepted(self)

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        self._feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._feed_eof()
        self._can_write.set()
        self._lost.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # ByteLink
    async def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise LinkClosed("the TCP connection is closed")
        transport.write(data)
        await self._can_write.wait()

    async def hang_up(self) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        if self._transport is not None:
            # close() sends what is buffered, then FIN: the client reads the last bytes and
            # then sees the connection end.
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANG_UP_DRAIN_S):
                    await self._lost.wait()
        self._feed_eof()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._feed_eof()


# ------------------------------------------------------------------------------------------------
# Ports
# ------------------------------------------------------------------------------------------------

SessionHandler = Callable[[ByteLink], Awaitable[None]]


async def cancel_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended.

    The cancellation is repeated while the task runs on: a coroutine may swallow one (Python
    3.11's ``asyncio.wait_for`` does when its inner future completes at the same moment), and
    a port must never outlive its ``close()``.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    if not task.cancelled() and task.exception() is not None:
        logger.error("serial port task failed", exc_info=task.exception())


class SerialPort:
    """Where a client connects. Runs ``handler`` once per connected client, one at a time.

    Exceptions a session raises (other than the client leaving) are kept in :attr:`errors`
    and logged; the port keeps serving.
    """

    def __init__(self, *, settle_s: float = DEFAULT_SETTLE_S) -> None:
        self.settle_s = settle_s
        self.errors: list[BaseException] = []
        self.sessions = 0

    @property
    def url(self) -> str:
        raise NotImplementedError

    async def start(self, handler: SessionHandler) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def run_session(self, link: ByteLink, handler: SessionHandler) -> None:
        self.sessions += 1
        try:
            await asyncio.sleep(self.settle_s)
            await handler(link)
        except LinkClosed:
            pass
        except Exception as exc:  # a session must never take the port down
            self.errors.append(exc)
            logger.exception("serial emulator session failed")


class _Pty:
    """A pseudo-terminal whose slave side is free for a client."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        # Raw mode: no echo, no line editing, no CR/LF translation (the bytes are binary
        # protocol frames). On a pty the settings live on the slave side and persist.
        tty.setraw(master)
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.closed = False
        self._poll = select.poll()
        self._poll.register(master, select.POLLHUP)

    def client_present(self) -> bool:
        """True while some process has the slave side open (no hang-up on the master)."""
        if self.closed:
            return False
        return not any(ev & select.POLLHUP for _fd, ev in self._poll.poll(0))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.master)


async def _drain_slave(path: str) -> None:
    """Wait until the slave side of a pty has no unread input (bounded by HANG_UP_DRAIN_S)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG_UP_DRAIN_S
        # Written bytes reach the slave's input queue shortly after the write returns.
        await asyncio.sleep(0.02)
        while loop.time() < deadline:
            pending = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCINQ, b"\0\0\0\0"))[0]
            if pending == 0:
                return
            await asyncio.sleep(0.01)
    except OSError:
        return
    finally:
        os.close(fd)


class PtyPort(SerialPort):
    """A pseudo-terminal port: the client opens :attr:`url` (the slave path).

    After the meter hangs up (a disconnect fault) the pty is closed like an unplugged USB
    adapter and a new one appears, under a new path. ``link_path``, if given, is kept as a
    symbolic link to the current slave path (as udev's ``/dev/serial/by-id`` names are), so a
    client can reopen the same name after a simulated unplug.
    """

    def __init__(self, *, link_path: str | None = None, settle_s: float = DEFAULT_SETTLE_S,
                 poll_s: float = PTY_POLL_S) -> None:
        super().__init__(settle_s=settle_s)
        self.link_path = link_path
        self.poll_s = poll_s
        self._pty: _Pty | None = None
        self._task: asyncio.Task[None] | None = None
        self._link: PtyLink | None = None

    @property
    def url(self) -> str:
        if self.link_path is not None:
            return self.link_path
        if self._pty is None:
            raise RuntimeError("port not started")
        return self._pty.path

    @property
    def device_path(self) -> str:
        """The current slave path (changes after a simulated unplug)."""
        if self._pty is None:
            raise RuntimeError("port not started")
        return self._pty.path

    def _new_pty(self) -> _Pty:
        pty = _Pty()
        self._pty = pty
        if self.link_path is not None:
            tmp = f"{self.link_path}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(pty.path, tmp)
            os.replace(tmp, self.link_path)
        return pty

    async def start(self, handler: SessionHandler) -> None:
        if self._task is not None:
            return
        self._new_pty()
        self._task = asyncio.get_running_loop().create_task(self._serve(handler))

    async def _serve(self, handler: SessionHandler) -> None:
        while True:
            pty = self._pty
            assert pty is not None
            while not pty.client_present():
                await asyncio.sleep(self.poll_s)
            link = PtyLink(pty)
            self._link = link
            try:
                await self.run_session(link, handler)
            finally:
                self._link = None
                link.stop_reading()
            if pty.closed:
                self._new_pty()
                continue
            if link.client_gone:
                # The client left (the next one may already have opened the port again).
                continue
            # The session ended while the client still holds the port: wait until it leaves.
            while pty.client_present():
                await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_task(task)
        if self._link is not None:
            self._link.abort()
        if self._pty is not None:
            self._pty.close()
        if self.link_path is not None and Path(self.link_path).is_symlink():
            with contextlib.suppress(OSError):
                os.unlink(self.link_path)


class TcpPort(SerialPort):
    """A TCP server for pyserial's ``socket://`` URL; port 0 picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 settle_s: float = DEFAULT_SETTLE_S) -> None:
        super().__init__(settle_s=settle_s)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handler: SessionHandler | None = None
        self._active: TcpLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    async def start(self, handler: SessionHandler) -> None:
        if self._server is not None:
            return
        self._handler = handler
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: TcpLink(self), self.host, self.port)
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = int(sockets[0].getsockname()[1])

    def accepted(self, link: TcpLink) -> None:
        """A client connected (called by :class:`TcpLink`)."""
        if self._active is not None or self._handler is None:
            # A serial line has one host: a second connection finds the port busy.
            self.refused += 1
            link.abort()
            return
        self._active = link
        task = asyncio.get_running_loop().create_task(self._session(link, self._handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, link: TcpLink, handler: SessionHandler) -> None:
        try:
            await self.run_session(link, handler)
        finally:
            if not link.hung_up:
                link.abort()
            self._active = None

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._active is not None:
            self._active.abort()
        for task in list(self._tasks):
            await cancel_task(task)
        if server is not None:
            await server.wait_closed()


# ------------------------------------------------------------------------------------------------
# The meter core shared by every protocol
# ------------------------------------------------------------------------------------------------

#: Readings a typical glucose meter stores; the oldest is dropped when full.
DEFAULT_CAPACITY = 500


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading in the meter's memory, time-stamped by the meter's clock (whole seconds)."""

    device_time: dt.datetime
    reading: BloodGlucoseReading


@dataclass(frozen=True, slots=True)
class MeterWrite:
    """A host command that changed the meter, as the meter carried it out.

    ``command`` is ``"set-time"`` or ``"erase"``; ``raw`` the command bytes as received;
    ``time`` the true instant (aware UTC); ``device_time`` the meter clock before the change;
    ``new_time`` the clock the host set (set-time only).
    """

    command: str
    raw: bytes
    time: dt.datetime
    device_time: dt.datetime
    new_time: dt.datetime | None = None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MeterCore:
    """Memory, clock, identity and fault injector of one emulated meter.

    Feeding: ``records`` is the history (oldest first), :meth:`add_record` adds a live
    reading. Call both from the event loop's thread (a feeder in another thread goes through
    ``loop.call_soon_threadsafe``). ``now`` gives the TRUE time (aware UTC), so a feeder in
    accelerated time can pass its own clock; ``clock`` is the device model's clock (``None``:
    a clock exact in UTC).
    """

    def __init__(self, info: DeviceInfo, records: Iterable[BloodGlucoseReading] = (), *,
                 clock: DeviceClock | None = None, faults: FaultConfig | None = None,
                 capacity: int = DEFAULT_CAPACITY,
                 now: Callable[[], dt.datetime] | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.info = info
        self.clock = clock
        self.faults = FaultInjector(faults)
        self.capacity = capacity
        self.now = now or _utc_now
        self.memory: deque[StoredReading] = deque(maxlen=capacity)
        self.write_log: list[MeterWrite] = []
        self._received = 0
        self._time_adjust = dt.timedelta(0)
        self._listeners: list[Callable[[StoredReading], None]] = []
        for reading in records:
            self.add_record(reading)

    # --- feeding ----------------------------------------------------------------------------

    def add_record(self, reading: BloodGlucoseReading) -> StoredReading:
        """Store a new reading (the oldest is dropped when the memory is full)."""
        index = self._received
        self._received += 1
        if self.faults.sequence_reset_due(index):
            # Memory cleared (battery out, factory reset): the count starts again.
            self.memory.clear()
        nominal = (reading.device_time if reading.device_time is not None
                   else self.nominal_device_time(reading.time))
        shown = self.faults.device_time(nominal, reading.time, index) + self._time_adjust
        stored = StoredReading(shown.replace(microsecond=0), reading)
        # A duplicate is stored twice in a row, so every way of reading the memory (a dump,
        # a record count plus reads by index) shows it twice.
        copies = 2 if self.faults.should_duplicate() else 1
        for _ in range(copies):
            self.memory.append(stored)
            for listener in list(self._listeners):
                listener(stored)
        return stored

    def on_new_record(self, listener: Callable[[StoredReading], None]) -> Callable[[], None]:
        """Call ``listener`` with every reading stored (each copy of a duplicate); returns the
        function that unsubscribes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
        return remove

    def oldest_first(self) -> list[StoredReading]:
        return list(self.memory)

    def newest_first(self) -> list[StoredReading]:
        return list(reversed(self.memory))

    # --- clock ------------------------------------------------------------------------------

    def true_now(self) -> dt.datetime:
        return self.now().astimezone(dt.UTC)

    def nominal_device_time(self, true_time: dt.datetime) -> dt.datetime:
        """What the device model's clock shows at ``true_time`` (naive local time)."""
        if self.clock is not None:
            return self.clock.to_device(true_time)
        return true_time.astimezone(dt.UTC).replace(tzinfo=None)

    def device_now(self) -> dt.datetime:
        """The meter clock now (whole seconds): model clock, clock faults, any time set."""
        now = self.true_now()
        shown = self.faults.device_time(self.nominal_device_time(now), now)
        return (shown + self._time_adjust).replace(microsecond=0)

    # --- writes -----------------------------------------------------------------------------

    def set_device_time(self, new_time: dt.datetime, raw: bytes) -> None:
        """The host set the clock: later readings and clock reads count from ``new_time``."""
        before = self.device_now()
        self.write_log.append(MeterWrite("set-time", bytes(raw), self.true_now(), before,
                                         new_time))
        self._time_adjust += new_time - before

    def erase(self, raw: bytes) -> None:
        """The host erased the memory."""
        self.write_log.append(MeterWrite("erase", bytes(raw), self.true_now(),
                                         self.device_now()))
        self.memory.clear()


class SerialMeterEmulator:
    """Base of the protocol emulators: a :class:`MeterCore` plus one session per client."""

    #: Protocol name used by :func:`simulators.serial.start_serial_emulator`.
    PROTOCOL = ""

    def __init__(self, core: MeterCore) -> None:
        self.core = core

    @property
    def write_log(self) -> list[MeterWrite]:
        return self.core.write_log

    def add_record(self, reading: BloodGlucoseReading) -> StoredReading:
        return self.core.add_record(reading)

    async def serve(self, link: ByteLink) -> None:
        """Talk to one connected client until it leaves (or the meter hangs up)."""
        raise NotImplementedError

    async def pause(self) -> None:
        """Wait the configured response delay (a slow meter)."""
        delay = self.core.faults.response_delay_s
        if delay > 0:
            await asyncio.sleep(delay)


class GlucoseRange(Enum):
    """How a meter with a measuring range shows a reading."""

    IN_RANGE = "in-range"
    HIGH = "high"
    LOW = "low"


def classify_glucose(reading: BloodGlucoseReading, low_mg_dl: int,
                     high_mg_dl: int) -> tuple[GlucoseRange, int]:
    """The range class of a reading and the whole mg/dL the meter stores for it.

    Values outside ``low_mg_dl``…``high_mg_dl`` (the meter's measuring range) are HIGH / LOW
    and stored as the limit. A reading without a number is HIGH when flagged above range,
    else LOW.
    """
    value = reading.glucose_mg_dl
    if value is None:
        if reading.above_range:
            return GlucoseRange.HIGH, high_mg_dl
        return GlucoseRange.LOW, low_mg_dl
    mg_dl = round(value)
    if mg_dl > high_mg_dl:
        return GlucoseRange.HIGH, high_mg_dl
    if mg_dl < low_mg_dl:
        return GlucoseRange.LOW, low_mg_dl
    return GlucoseRange.IN_RANGE, mg_dl
