"""Driver for the LifeScan OneTouch Ultra Easy / Ultra Mini: binary frames with link control.

Frames are ``STX LEN LINK message ETX CRC16`` (CRC-16/CCITT-FALSE, see
:mod:`bridge.protocols.onetouch_ultra_easy`). The host end of the link layer, as the LifeScan
link protocol lays it out:

* the link starts with a disconnect frame, answered by an ACK with the disconnect bit, which
  restarts both sequence bits;
* each request goes out as a data frame with the host's alternating sequence bit; the meter
  acknowledges it at once — without that ACK the host sends the same frame again;
* the answer comes as a data frame; the host acknowledges it. A frame that fails its CRC is
  not acknowledged, so the meter sends it again (retransmission). A repeat of an answer
  already taken (our ACK was lost) is acknowledged again and otherwise ignored;
* if the answer never arrives intact, the host restarts the link (disconnect frame) and asks
  again, ``retries`` times, then gives up with :class:`~bridge.devices.base.DeviceTimeout`.

Requests used: software version, serial number (→ ``device_id``), real-time clock (→ clock
observation), record count (record id 501) and records by index (0 = newest). Writing the
clock is sent only with ``allow_time_write``; erasing the memory never (both refused with
:class:`~bridge.devices.serial_port.ForbiddenCommand` before any byte is written).

Incremental sync: the meter answers records by index, newest first, so the driver reads from
index 0 until it meets the newest reading of the previous sync and stops there; an index is
no identity (it shifts with every new test), the device time is. The record answer carries no
flags: control-solution tests and HI/LO marks are not reported (UNCONFIRMED, see
``docs/serial.md``); values are always mg/dL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass

from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDriver,
    DeviceError,
    DeviceTimeout,
    SyncResult,
    SyncState,
)
from bridge.devices.serial_port import (
    STATE_NEWEST,
    ForbiddenCommand,
    SerialDriverOptions,
    SerialLink,
    TransferIncomplete,
    fingerprint,
    midpoint,
    provisional_utc,
    since_anchor,
)
from bridge.errors import ProtocolError
from bridge.protocols.onetouch_ultra_easy import (
    STX,
    ClockResponse,
    EraseMemoryRequest,
    LinkSequence,
    ReadClockRequest,
    ReadRecordCountRequest,
    ReadRecordRequest,
    ReadSerialNumberRequest,
    ReadSoftwareVersionRequest,
    RecordCountResponse,
    RecordResponse,
    SerialNumberResponse,
    SoftwareVersionResponse,
    UltraEasyFrame,
    UltraEasyRequest,
    UltraEasyResponse,
    UltraEasyResponseMessage,
    WriteClockRequest,
    parse_response,
    split_frames,
)
from bridge.records import BloodGlucoseReading, DeviceInfo, DeviceKind

MANUFACTURER = "LifeScan"
MODEL = "OneTouch Ultra Easy"


@dataclass(frozen=True, slots=True, kw_only=True)
class UltraEasyDriverOptions(SerialDriverOptions):
    """Link timers and the time-write switch.

    * ``ack_timeout_s``: wait for the meter's ACK of a request before sending it again
      (``ack_retries`` times).
    * ``timeout_s`` (inherited): wait for the answer; it must exceed the meter's own
      retransmission timer so a damaged answer can be sent again in time.
    * ``allow_time_write`` (inherited): let :meth:`OneTouchUltraEasyDriver.set_clock` write
      the RTC.
    """

    ack_timeout_s: float = 0.5
    ack_retries: int = 3


def _name(request: UltraEasyRequest) -> str:
    return bytes(request)[:3].hex(" ")


def to_reading(record: RecordResponse, device_id: str,
               clock: ClockObservation | None) -> BloodGlucoseReading:
    """A record answer as a canonical reading (the meter stores mg/dL)."""
    return BloodGlucoseReading(
        device_id=device_id, time=provisional_utc(record.device_time, clock),
        device_time=record.device_time, glucose_mg_dl=float(record.glucose_mg_dl))


class _Refused(DeviceError):
    """The meter answered, intact, with something other than the expected answer."""


class OneTouchUltraEasyDriver(DeviceDriver):
    """One OneTouch Ultra Easy / Mini on a serial port (opened on first use)."""

    PROTOCOL = "onetouch-ultra-easy"

    def __init__(self, url: str, options: UltraEasyDriverOptions | None = None) -> None:
        self.url = url
        self.options = options or UltraEasyDriverOptions()
        self.link = SerialLink(url, self.options.settings())
        self.sequence = LinkSequence()
        self._connected = False
        self._frames: list[UltraEasyFrame] = []
        self._pending = b""
        self._last_answer: UltraEasyFrame | None = None
        self._info: DeviceInfo | None = None
        #: Frames that failed their CRC (each is sent again by the meter).
        self.damaged_frames = 0
        #: Requests asked again after their answer never arrived intact.
        self.repeated_requests = 0

    # --- link layer ------------------------------------------------------------------------

    def _guard(self, request: UltraEasyRequest) -> None:
        """The read-only guard: every request passes here before anything is sent."""
        if not request.WRITES_TO_METER:
            return
        if isinstance(request, EraseMemoryRequest):
            raise ForbiddenCommand(f"erase memory ({_name(request)})",
                                   "erasing the meter's memory is never allowed", self.url)
        if isinstance(request, WriteClockRequest) and not self.options.allow_time_write:
            raise ForbiddenCommand(f"write clock ({_name(request)})",
                                   "setting the meter clock is disabled for this device "
                                   "(allow_time_write)", self.url)

    async def _next_frame(self, timeout: float, what: str) -> UltraEasyFrame:
        """The next intact frame; damaged bytes are dropped (and counted) on the way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._frames:
            data = await self.link.read_some(max(deadline - loop.time(), 0.0), what)
            split = split_frames(self._pending + data)
            self._pending = split.rest
            if split.skipped and STX in split.skipped:
                self.damaged_frames += 1
            self._frames.extend(split.frames)
        return self._frames.pop(0)

    async def _send_until_acked(self, frame: UltraEasyFrame, *, disconnect: bool) -> None:
        """Send ``frame`` until the meter's ACK (with the disconnect bit for a disconnect)."""
        raw = bytes(frame)
        for _ in range(1 + self.options.ack_retries):
            await self.link.write(raw)
            try:
                while True:
                    answer = await self._next_frame(self.options.ack_timeout_s, "ACK")
                    if answer.is_ack and answer.is_disconnect == disconnect:
                        return
                    if not answer.is_ack and not disconnect:
                        # A data frame before our ACK: an answer repeated from before.
                        await self._on_stray_data(answer)
            except DeviceTimeout:
                continue
        raise DeviceTimeout(f"the meter never acknowledged frame {raw.hex(' ')}", self.url)

    async def _on_stray_data(self, frame: UltraEasyFrame) -> None:
        if self._last_answer is not None and frame == self._last_answer:
            await self.link.write(bytes(self.sequence.ack()))

    async def connect(self) -> None:
        """Open the port and start the link (disconnect frame, both sequence bits reset)."""
        await self.link.open()
        self.link.discard_input()
        self._frames.clear()
        self._pending = b""
        self._last_answer = None
        await self._send_until_acked(self.sequence.disconnect(), disconnect=True)
        self._connected = True

    async def _exchange(self, request: UltraEasyRequest) -> bytes:
        """One request → its answer's message, acknowledged; ``DeviceTimeout`` if none."""
        await self._send_until_acked(self.sequence.data(bytes(request)), disconnect=False)
        while True:
            frame = await self._next_frame(self.options.timeout_s, f"answer to {_name(request)}")
            if frame.is_ack or frame.is_disconnect:
                continue
            if self.sequence.receive(frame):
                await self.link.write(bytes(self.sequence.ack()))
                self._last_answer = frame
                return frame.message
            # Same sequence bit as the answer taken before: our ACK was lost, say it again.
            await self.link.write(bytes(self.sequence.ack()))

    async def request(self, request: UltraEasyRequest) -> UltraEasyResponseMessage:
        """Send one request and return its typed answer, with retries (see module docstring)."""
        self._guard(request)
        attempts = 1 if request.WRITES_TO_METER else 1 + self.options.retries
        last: Exception | None = None
        for attempt in range(attempts):
            if not self._connected or attempt:
                if attempt:
                    self.repeated_requests += 1
                await self.connect()
            try:
                message = await self._exchange(request)
            except DeviceTimeout as exc:
                last = exc
                self._connected = False
                continue
            try:
                return parse_response(message, request)
            except ProtocolError as exc:
                # The CRC held, so this is what the meter meant: no point in asking again.
                status = _status(message)
                raise _Refused(f"the meter answered {_name(request)} with status "
                               f"{status} ({exc.reason})", self.url) from exc
        raise DeviceTimeout(f"no intact answer to {_name(request)} after {attempts} "
                            f"attempt(s)", self.url) from last

    # --- procedures ------------------------------------------------------------------------

    async def read_info(self) -> DeviceInfo:
        if self._info is None:
            serial_answer = await self.request(ReadSerialNumberRequest())
            version = await self.request(ReadSoftwareVersionRequest())
            assert isinstance(serial_answer, SerialNumberResponse)
            assert isinstance(version, SoftwareVersionResponse)
            serial_number = serial_answer.serial_number.strip()
            if not serial_number:
                raise DeviceError("the meter reported an empty serial number", self.url)
            self._info = DeviceInfo(
                device_id=serial_number, kind=DeviceKind.BLOOD_GLUCOSE_METER,
                manufacturer=MANUFACTURER, model=MODEL, serial_number=serial_number,
                software_revision=version.version, transport="serial", address=self.url)
        return self._info

    async def read_clock(self) -> ClockObservation:
        now = self.options.now
        start = now()
        answer = await self.request(ReadClockRequest())
        assert isinstance(answer, ClockResponse)
        return ClockObservation(device_time=answer.device_time,
                                gateway_time=midpoint(start, now()),
                                source=ClockSource.SERIAL_TIME_COMMAND)

    async def set_clock(self, device_time: dt.datetime) -> dt.datetime:
        """Write the meter clock (only with ``allow_time_write``); returns the new clock."""
        answer = await self.request(WriteClockRequest(device_time))
        assert isinstance(answer, ClockResponse)
        return answer.device_time

    async def erase_memory(self) -> None:
        """Always refused: the bridge never deletes a device's records."""
        self._guard(EraseMemoryRequest())

    async def record_count(self) -> int:
        answer = await self.request(ReadRecordCountRequest())
        assert isinstance(answer, RecordCountResponse)
        return answer.count

    async def read_record(self, index: int) -> RecordResponse:
        answer = await self.request(ReadRecordRequest(index))
        assert isinstance(answer, RecordResponse)
        return answer

    async def sync(self, state: SyncState) -> SyncResult:
        info = await self.read_info()
        clock = await self.read_clock()
        damaged_before, repeats_before = self.damaged_frames, self.repeated_requests
        count = await self.record_count()
        anchor = state.get(STATE_NEWEST) if state else None
        newest_first: list[BloodGlucoseReading] = []
        for index in range(count):
            damaged = self.damaged_frames
            try:
                record = await self.read_record(index)
            except DeviceTimeout as exc:
                if self.damaged_frames == damaged:
                    raise  # silence, not damage
                raise TransferIncomplete(
                    f"record {index} of {count} never arrived intact ({exc}); "
                    f"{len(newest_first)} newest reading(s) kept", self.url,
                    kept=newest_first, missing=count - index) from exc
            reading = to_reading(record, info.device_id, clock)
            if anchor is not None and fingerprint(reading) == anchor:
                # Everything from here on was read by an earlier sync.
                newest_first.append(reading)
                break
            newest_first.append(reading)
        new = since_anchor(newest_first, state, count)
        notices = list(new.notices)
        damaged = self.damaged_frames - damaged_before
        repeats = self.repeated_requests - repeats_before
        if damaged or repeats:
            notices.append(f"{damaged} damaged frame(s) sent again by the meter; "
                           f"{repeats} request(s) repeated")
        return SyncResult(info=info, records=tuple(new.readings), state=new.state,
                          clock=clock, notices=tuple(notices))

    async def close(self) -> None:
        if self._connected and self.link.is_open:
            # End the link politely; a meter that has gone away is no error here.
            with contextlib.suppress(DeviceError):
                await self.link.write(bytes(self.sequence.disconnect()))
        self._connected = False
        await self.link.close()


def _status(message: bytes) -> str:
    try:
        return f"0x{UltraEasyResponse.from_bytes(message).status:02X}"
    except ProtocolError:
        return "unreadable"

