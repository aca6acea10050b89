"""Emulated LifeScan OneTouch Ultra Easy / Ultra Mini: binary frames with link control.

Every frame is ``STX LEN LINK message ETX CRC16`` (CRC-16/CCITT-FALSE); see
:mod:`bridge.protocols.onetouch_ultra_easy`, whose classes build every frame. The meter side of
the link layer, as the LifeScan link protocol describes it:

* every data frame from the host is acknowledged with an ACK frame at once, a repeated one
  too (the host did not get our ACK) — but a repeat is not carried out twice;
* the answer goes out as a data frame with the meter's alternating sequence bit; if the host
  does not acknowledge it within ``ack_timeout_s`` it is sent again, up to
  ``max_retransmits`` times (the timer and count are UNCONFIRMED for real meters);
* a disconnect frame is answered with an ACK frame carrying the disconnect bit and restarts
  both sequence bits.

Requests served: software version, serial number, clock read and write, display unit, record
count (record id 501), record by index (0 = newest, as the real meter counts) and memory
erase. Clock writes and erases are carried out and logged in :attr:`write_log`.

The record answer has no flags, so readings map to it as follows (UNCONFIRMED: no capture of
HI/LO or control-solution records was available): a value above the 600 mg/dL measuring range
is stored as 600, below 20 mg/dL as 20, and control-solution readings are not part of the
records the meter reports. A request for an index past the last record, or a request the
meter cannot parse, is answered with status 0x15 instead of 0x06 (UNCONFIRMED).

Faults: ``corrupt_frame_rate`` damages record answers (one message byte, the CRC then fails;
the host does not ACK and the meter retransmits); ``drop_response_rate`` loses an answer for
good (the host times out); ``response_delay_s`` delays every answer;
``disconnect_after_records`` hangs up after that many record answers in one session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bridge.errors import ProtocolError
from bridge.protocols.onetouch_ultra_easy import (
    ClockResponse,
    EraseMemoryRequest,
    GlucoseUnitResponse,
    LinkSequence,
    ReadClockRequest,
    ReadGlucoseUnitRequest,
    ReadRecordCountRequest,
    ReadRecordRequest,
    ReadSerialNumberRequest,
    ReadSoftwareVersionRequest,
    RecordCountResponse,
    RecordResponse,
    SerialNumberResponse,
    SoftwareVersionResponse,
    SuccessResponse,
    UltraEasyFrame,
    UltraEasyRequest,
    UltraEasyResponse,
    UltraEasyResponseMessage,
    UltraEasyUnit,
    WriteClockRequest,
    decode_request,
    split_frames,
)
from simulators.serial.ports import (
    ByteLink,
    MeterCore,
    SerialMeterEmulator,
    StoredReading,
    classify_glucose,
)

logger = logging.getLogger(__name__)

LOW_LIMIT_MG_DL = 20
HIGH_LIMIT_MG_DL = 600
DEFAULT_SOFTWARE_VERSION = "P03.00.02 19/02/10"
DEFAULT_SERIAL_NUMBER = "A4F7K2QXZ"
#: Readings an Ultra Easy / Mini keeps.
CAPACITY = 500
#: Status byte of a refused request (UNCONFIRMED, see module docstring).
STATUS_REFUSED = 0x15
DEFAULT_ACK_TIMEOUT_S = 1.0
DEFAULT_MAX_RETRANSMITS = 3
#: The message of a frame sits between STX LEN LINK and ETX CRC CRC.
_MESSAGE_START = 3
_FRAME_TAIL = 3


@dataclass(frozen=True, slots=True)
class UltraEasyOptions:
    """What the emulated meter answers and its link timer. ``software_version`` and
    ``serial_number`` default to the DeviceInfo's software revision and serial number."""

    software_version: str | None = None
    serial_number: str | None = None
    unit: UltraEasyUnit = UltraEasyUnit.MG_DL
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    max_retransmits: int = DEFAULT_MAX_RETRANSMITS


class UltraEasyEmulator(SerialMeterEmulator):
    """A OneTouch Ultra Easy / Ultra Mini on a serial line."""

    PROTOCOL = "onetouch-ultra-easy"

    def __init__(self, core: MeterCore, options: UltraEasyOptions | None = None) -> None:
        super().__init__(core)
        opts = options or UltraEasyOptions()
        self.options = opts
        info = core.info
        self.software_version = (opts.software_version or info.software_revision
                                 or DEFAULT_SOFTWARE_VERSION)
        self.serial_number = opts.serial_number or info.serial_number or DEFAULT_SERIAL_NUMBER

    def records(self) -> list[StoredReading]:
        """The records as the meter reports them, newest first (index 0)."""
        return [s for s in self.core.newest_first() if not s.reading.is_control_solution]

    async def serve(self, link: ByteLink) -> None:
        await _Session(self, link).run()

    def respond(self, request: UltraEasyRequest, message: bytes) -> UltraEasyResponseMessage:
        """The answer to one request (carrying out clock writes and erases)."""
        core = self.core
        if isinstance(request, ReadSoftwareVersionRequest):
            return SoftwareVersionResponse(self.software_version)
        if isinstance(request, ReadSerialNumberRequest):
            return SerialNumberResponse(self.serial_number)
        if isinstance(request, ReadClockRequest):
            return ClockResponse(core.device_now())
        if isinstance(request, WriteClockRequest):
            core.set_device_time(request.device_time, message)
            return ClockResponse(core.device_now())
        if isinstance(request, ReadGlucoseUnitRequest):
            return GlucoseUnitResponse(self.options.unit)
        if isinstance(request, ReadRecordCountRequest):
            return RecordCountResponse(len(self.records()))
        if isinstance(request, ReadRecordRequest):
            records = self.records()
            if request.record_id >= len(records):
                return UltraEasyResponse(STATUS_REFUSED)
            stored = records[request.record_id]
            _kind, mg_dl = classify_glucose(stored.reading, LOW_LIMIT_MG_DL, HIGH_LIMIT_MG_DL)
            return RecordResponse(stored.device_time, mg_dl)
        if isinstance(request, EraseMemoryRequest):
            core.erase(message)
            return SuccessResponse()
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover


class _Session:
    """One connected host: link-layer bookkeeping and the pending answer."""

    def __init__(self, meter: UltraEasyEmulator, link: ByteLink) -> None:
        self.meter = meter
        self.link = link
        self.faults = meter.core.faults
        self.sequence = LinkSequence()
        self.loop = asyncio.get_running_loop()
        self.pending: UltraEasyFrame | None = None
        self.pending_is_record = False
        self.retransmits = 0
        self.deadline = 0.0
        self.records_sent = 0

    async def run(self) -> None:
        buffer = b""
        while True:
            timeout = None if self.pending is None else self.deadline - self.loop.time()
            try:
                data = await self.link.receive(timeout)
            except TimeoutError:
                await self._retransmit()
                continue
            if not data:
                return
            split = split_frames(buffer + data)
            buffer = split.rest
            if split.skipped:
                # A damaged frame is not acknowledged; the host's timer sends it again.
                logger.info("Ultra Easy: %d byte(s) of damaged frames ignored",
                            len(split.skipped))
            for frame in split.frames:
                await self._on_frame(frame)
                if self.link.hung_up:
                    return

    async def _on_frame(self, frame: UltraEasyFrame) -> None:
        if frame.is_disconnect:
            self.sequence.receive(frame)
            self.pending = None
            await self.link.send(bytes(self.sequence.ack(disconnect=True)))
            return
        if frame.is_ack:
            self.pending = None
            return
        new = self.sequence.receive(frame)
        await self.link.send(bytes(self.sequence.ack()))
        if not new:
            return
        try:
            request = decode_request(frame.message)
        except ProtocolError as exc:
            logger.info("Ultra Easy: request refused (%s)", exc.reason)
            response: UltraEasyResponseMessage = UltraEasyResponse(STATUS_REFUSED)
        else:
            response = self.meter.respond(request, frame.message)
        is_record = isinstance(response, RecordResponse)
        self.pending = self.sequence.data(bytes(response))
        self.pending_is_record = is_record
        self.retransmits = 0
        if self.faults.should_drop():
            logger.info("Ultra Easy: answer dropped (fault injection)")
            self.pending = None
            return
        await self.meter.pause()
        await self._transmit()
        if is_record:
            self.records_sent += 1
            if self.faults.disconnect_now(self.records_sent):
                await self.link.hang_up()

    async def _transmit(self) -> None:
        frame = self.pending
        if frame is None:
            return
        raw = bytes(frame)
        if self.pending_is_record and self.faults.should_corrupt():
            raw = self.faults.corrupt(raw, _MESSAGE_START, len(raw) - _FRAME_TAIL)
        self.deadline = self.loop.time() + self.meter.options.ack_timeout_s
        await self.link.send(raw)

    async def _retransmit(self) -> None:
        if self.pending is None:
            return
        if self.retransmits >= self.meter.options.max_retransmits:
            logger.info("Ultra Easy: answer never acknowledged, given up")
            self.pending = None
            return
        self.retransmits += 1
        await self._transmit()
