"""Emulated Contour-style meter speaking ASTM E1381 (link) and E1394 (records) on a serial line.

Real Contour USB meters tunnel this text through USB HID reports; on a serial line the E1381
low-level protocol carries it directly, which is what this emulator speaks. Records and frames
are built with :mod:`bridge.protocols.astm`.

The meter is the sender of every transfer:

* Establishment (E1381 §6.2): the meter sends ENQ; ACK starts the transfer. NAK (receiver
  busy) makes it wait ``busy_retry_s`` (10 s in E1381) and offer again; an ENQ from the host
  at the same time is contention (§6.2.1), where the instrument keeps priority: it waits
  ``contention_wait_s`` (1 s) and offers again. EOT from the host while the meter waits is a
  nudge, not an answer, and is ignored.
* Transfer (§6.3): one message — header, patient, one result per stored reading (newest
  first), terminator — one record per frame, records longer than ``max_text`` characters
  split with ETB (§6.3.1), frame numbers counting 1…7, 0, 1… (§6.3.2). Each frame waits for
  the host's answer: ACK sends the next frame, NAK sends the same frame again, at most
  ``max_tries`` times in all (6 in E1381 §6.5.1.2) before the meter gives up with EOT; EOT
  instead of ACK is a receiver interrupt (§6.3.5), which this meter honours by ending the
  transfer after that frame.
* Termination (§6.4): EOT. No answer within ``reply_timeout_s`` (15 s, §6.5.2) also ends the
  transfer with EOT.

A transfer starts when a host connects (``start_on_connect``) and again each time the idle
meter receives EOT from the host (UNCONFIRMED: hosts for Contour meters are seen to send EOT
to ask for the data). An ENQ from the host to the idle meter is answered with NAK: the meter
receives no messages.

Result records (Contour layout): ``R|n|^^^Glucose|<mg/dL>|mg/dL^P||<markers>||<YYYYMMDDHHMM>``
with markers ``>`` above the 600 mg/dL range and ``<`` below 20 mg/dL (value = the limit),
``C`` control solution, ``B``/``A``/``F`` before meal/after meal/fasting. The reference method
is always ``P`` (plasma-calibrated, as Contour meters report). The header carries the product
code, software versions, serial number and SKU in field 5, the record count in field 7 and the
meter clock in field 14.

Faults: ``corrupt_frame_rate`` damages frames carrying a result (one text byte, the checksum
then fails; the host NAKs and the meter retransmits); ``drop_response_rate`` loses a frame
(the host hears nothing, the meter times out and ends with EOT); ``response_delay_s``
delays every frame; ``disconnect_after_records`` hangs up once that many result records are
out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum

from bridge.protocols.astm import (
    AstmControl,
    AstmFrame,
    AstmHeader,
    AstmPatient,
    AstmRecord,
    AstmResult,
    AstmTerminator,
    encode_control,
    encode_records,
    format_timestamp,
    frames_for_records,
    split_stream,
)
from bridge.records import MealContext
from simulators.serial.ports import (
    ByteLink,
    GlucoseRange,
    MeterCore,
    SerialMeterEmulator,
    StoredReading,
    classify_glucose,
)

logger = logging.getLogger(__name__)

LOW_LIMIT_MG_DL = 20
HIGH_LIMIT_MG_DL = 600
#: E1381 §6.5.2: a sender waits 15 s for an answer to ENQ or a frame.
REPLY_TIMEOUT_S = 15.0
#: E1381 §6.2: after NAK to ENQ the sender waits at least 10 s before offering again.
BUSY_RETRY_S = 10.0
#: E1381 §6.2.1: in contention the instrument waits 1 s, then offers again.
CONTENTION_WAIT_S = 1.0
#: E1381 §6.5.1.2: a frame is sent at most six times.
MAX_TRIES = 6
DEFAULT_PRODUCT_CODE = "Bayer7390"
DEFAULT_SOFTWARE_VERSIONS = ("01.24", "01.04", "09.02.20")
DEFAULT_SERIAL_NUMBER = "7390-5512034"
DEFAULT_SKU = "7403-"
#: Readings a Contour meter keeps (Contour USB: 2000).
CAPACITY = 2000
#: The text of a frame sits between STX FN and ETX/ETB C1 C2 CR LF.
_TEXT_START = 2
_FRAME_TAIL = 5

_MEAL_MARKERS = {MealContext.PREPRANDIAL: "B", MealContext.POSTPRANDIAL: "A",
                 MealContext.FASTING: "F"}


@dataclass(frozen=True, slots=True)
class ContourOptions:
    """Identity fields of the header and the E1381 timers (shorten them in tests)."""

    product_code: str = DEFAULT_PRODUCT_CODE
    software_versions: tuple[str, ...] = DEFAULT_SOFTWARE_VERSIONS
    serial_number: str | None = None
    sku: str = DEFAULT_SKU
    max_text: int = 240
    reply_timeout_s: float = REPLY_TIMEOUT_S
    busy_retry_s: float = BUSY_RETRY_S
    contention_wait_s: float = CONTENTION_WAIT_S
    max_tries: int = MAX_TRIES
    max_offers: int = MAX_TRIES
    start_on_connect: bool = True


class _Gone(Enum):
    """The host left while the meter waited for an answer."""

    EOF = "eof"


def result_record(sequence: int, stored: StoredReading) -> AstmResult:
    reading = stored.reading
    kind, mg_dl = classify_glucose(reading, LOW_LIMIT_MG_DL, HIGH_LIMIT_MG_DL)
    markers: list[str] = []
    if kind is GlucoseRange.HIGH:
        markers.append(">")
    elif kind is GlucoseRange.LOW:
        markers.append("<")
    if reading.is_control_solution:
        markers.append("C")
    if reading.meal in _MEAL_MARKERS:
        markers.append(_MEAL_MARKERS[reading.meal])
    return AstmResult(sequence=sequence, test_id="^^^Glucose", value=str(mg_dl),
                      units="mg/dL^P", reference_ranges="", abnormal_flags="/".join(markers),
                      nature_of_abnormality="", status=format_timestamp(stored.device_time))


class ContourAstmEmulator(SerialMeterEmulator):
    """A Contour-style meter sending its memory as an ASTM E1381/E1394 transfer."""

    PROTOCOL = "contour-astm"

    def __init__(self, core: MeterCore, options: ContourOptions | None = None) -> None:
        super().__init__(core)
        self.options = options or ContourOptions()
        self.serial_number = (self.options.serial_number or core.info.serial_number
                              or DEFAULT_SERIAL_NUMBER)
        self.transfers = 0

    def message(self) -> list[AstmRecord]:
        """Header, patient, results (newest first), terminator, as the meter would send now."""
        opts = self.options
        stored = self.core.newest_first()
        sender = "^".join((opts.product_code, "\\".join(opts.software_versions),
                           self.serial_number, opts.sku))
        header = AstmHeader(
            message_control_id="", access_password="", sender=sender, sender_address="",
            reserved=str(len(stored)), sender_phone="", sender_characteristics="",
            receiver_id="", comment="", processing_id="P", version="1",
            timestamp=format_timestamp(self.core.device_now()))
        records: list[AstmRecord] = [header, AstmPatient(sequence=1)]
        records += [result_record(i, s) for i, s in enumerate(stored, start=1)]
        records.append(AstmTerminator(sequence=1, termination_code="", extra=("N",)))
        return records

    async def serve(self, link: ByteLink) -> None:
        session = _Session(self, link)
        start = self.options.start_on_connect
        while not link.hung_up:
            if start:
                await session.transfer()
                if link.hung_up or link.at_eof:
                    return
            start = await session.wait_for_nudge()
            if link.at_eof:
                return


class _Session:
    def __init__(self, meter: ContourAstmEmulator, link: ByteLink) -> None:
        self.meter = meter
        self.link = link
        self.opts = meter.options
        self.faults = meter.core.faults
        self.buffer = b""
        self.controls: deque[AstmControl] = deque()
        self.loop = asyncio.get_running_loop()

    async def _fill(self, timeout: float | None) -> bool:
        """Read more from the host; False when it has gone."""
        data = await self.link.receive(timeout)
        if not data:
            return False
        split = split_stream(self.buffer + data)
        self.buffer = split.rest
        for item in split.items:
            if len(item) == 1:
                self.controls.append(AstmControl(item[0]))
            else:
                logger.info("Contour: frame from the host ignored (the meter only sends)")
        return True

    async def reply(self, timeout: float) -> AstmControl | _Gone | None:
        """The host's next control character; ``None`` when none came within ``timeout``."""
        deadline = self.loop.time() + timeout
        while not self.controls:
            try:
                if not await self._fill(deadline - self.loop.time()):
                    return _Gone.EOF
            except TimeoutError:
                return None
        return self.controls.popleft()

    async def send_control(self, control: AstmControl) -> None:
        await self.link.send(encode_control(control))

    async def wait_for_nudge(self) -> bool:
        """Idle: True when the host asks for a transfer (EOT), False when it has gone."""
        while True:
            while self.controls:
                control = self.controls.popleft()
                if control is AstmControl.EOT:
                    return True
                if control is AstmControl.ENQ:
                    # The meter never receives messages: it answers a bid with NAK (§6.2).
                    await self.send_control(AstmControl.NAK)
            if not await self._fill(None):
                return False

    async def establish(self) -> bool:
        """ENQ until the host accepts (True) or the meter gives up (False)."""
        offers = 0
        while offers < self.opts.max_offers:
            offers += 1
            await self.send_control(AstmControl.ENQ)
            deadline = self.loop.time() + self.opts.reply_timeout_s
            while True:
                answer = await self.reply(deadline - self.loop.time())
                if answer is not AstmControl.EOT:
                    break
            if answer is _Gone.EOF:
                return False
            if answer is None:
                await self.send_control(AstmControl.EOT)
                return False
            if answer is AstmControl.ACK:
                return True
            wait = (self.opts.busy_retry_s if answer is AstmControl.NAK
                    else self.opts.contention_wait_s)
            await asyncio.sleep(wait)
        await self.send_control(AstmControl.EOT)
        return False

    async def transfer(self) -> None:
        self.meter.transfers += 1
        self.controls.clear()
        if not await self.establish():
            return
        records = self.meter.message()
        frames = frames_for_records(encode_records(records), max_text=self.opts.max_text)
        completed = 0
        results_sent = 0
        for frame in frames:
            record = records[completed]
            outcome = await self._send_frame(frame, isinstance(record, AstmResult))
            if outcome is None or self.link.hung_up:
                return
            if frame.ends_record:
                completed += 1
                if isinstance(record, AstmResult):
                    results_sent += 1
                    if self.faults.disconnect_now(results_sent):
                        await self.link.hang_up()
                        return
            if outcome is AstmControl.EOT:
                break
        await self.send_control(AstmControl.EOT)

    async def _send_frame(self, frame: AstmFrame, carries_result: bool) -> AstmControl | None:
        """Send until ACK (or EOT, a receiver interrupt); ``None`` when the transfer ended."""
        for _attempt in range(self.opts.max_tries):
            raw = bytes(frame)
            if carries_result and self.faults.should_corrupt():
                # Lowest bit of one text byte: the text stays free of control characters,
                # so the host sees a well-formed frame whose checksum fails.
                raw = self.faults.corrupt(raw, _TEXT_START, len(raw) - _FRAME_TAIL, mask=0x01)
            await self.meter.pause()
            if self.faults.should_drop():
                logger.info("Contour: frame %d lost (fault injection)", frame.frame_number)
            else:
                await self.link.send(raw)
            answer = await self.reply(self.opts.reply_timeout_s)
            if answer is _Gone.EOF:
                return None
            if answer is None:
                await self.send_control(AstmControl.EOT)
                return None
            if answer in (AstmControl.ACK, AstmControl.EOT):
                return answer
        await self.send_control(AstmControl.EOT)
        return None
