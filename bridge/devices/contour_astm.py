"""Driver for Contour-style meters that send their memory as ASTM E1381 frames of E1394 records.

The meter is the sender of every transfer; the driver is the E1381 receiver:

* Establishment (E1381 §6.2): the meter offers ENQ, the driver answers ACK. A meter that does
  not offer within ``enq_timeout_s`` is nudged with EOT (Contour hosts ask for a transfer
  this way; UNCONFIRMED for other meters), ``retries`` times.
* Transfer (§6.3): each frame is checked — checksum (§6.3.3), frame number (§6.3.2, a repeat
  of the frame just accepted is acknowledged and ignored, §6.3.4), restricted characters —
  and answered ACK, or NAK so the meter sends it again (§6.5.1.2: at most six times).
  Frames are joined into records with :class:`~bridge.protocols.astm.AstmRecordAssembler`.
* Termination (§6.4): EOT. A transfer that ends before the terminator record, or in which no
  frame arrives within ``timeout_s`` (§6.5.2 gives the receiver 30 s), is incomplete: the
  driver asks for a new one, ``retries`` times.

Records (E1394): the header gives the identity (product code → model, serial number, software
versions) and the meter clock (field 14, minute resolution) → clock observation; each glucose
result ``R`` becomes a canonical reading — mmol/L converted to mg/dL explicitly, ``>``/``<``
→ above/below range, ``C`` → control solution, ``B``/``A``/``F`` → meal context; results of
other analytes (insulin, carbohydrates on some meters) are skipped.

Incremental sync: every transfer carries the whole memory, newest first; the result sequence
numbers count positions in this transfer, not readings. The state keeps the fingerprint of the
newest reading (its device time is the identity); readings in front of it are new.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from bridge.devices.base import (
    ClockObservation,
    ClockSource,
    DeviceDisconnected,
    DeviceDriver,
    DeviceError,
    DeviceTimeout,
    SyncResult,
    SyncState,
)
from bridge.devices.serial_port import (
    SerialDriverOptions,
    SerialLink,
    TransferIncomplete,
    provisional_utc,
    since_anchor,
)
from bridge.errors import ProtocolError
from bridge.protocols.astm import (
    AstmControl,
    AstmFrame,
    AstmHeader,
    AstmRecord,
    AstmRecordAssembler,
    AstmResult,
    AstmTerminator,
    MealMarker,
    ReferenceMethod,
    decode_records,
    encode_control,
    split_stream,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceInfo,
    DeviceKind,
    MealContext,
    SampleType,
    mmol_l_to_mg_dl,
)

_MEALS = {MealMarker.BEFORE_MEAL: MealContext.PREPRANDIAL,
          MealMarker.AFTER_MEAL: MealContext.POSTPRANDIAL,
          MealMarker.FASTING: MealContext.FASTING}

#: E1381 §6.5.2: the receiver waits up to 30 s for the next frame.
RECEIVER_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ContourDriverOptions(SerialDriverOptions):
    """``timeout_s``: wait for each frame (E1381 §6.5.2: 30 s); ``enq_timeout_s``: wait for
    the meter's ENQ before nudging it with EOT; ``max_naks``: NAKs in a row after which the
    driver stops listening to a transfer (the meter itself gives up after six tries)."""

    timeout_s: float = RECEIVER_TIMEOUT_S
    enq_timeout_s: float = 3.0
    max_naks: int = 8


@dataclass(slots=True)
class Transfer:
    """What one E1381 transfer delivered."""

    records: list[AstmRecord] = field(default_factory=list)
    complete: bool = False
    naks: int = 0
    header_at: dt.datetime | None = None
    problem: str | None = None
    timed_out: bool = False

    @property
    def header(self) -> AstmHeader | None:
        first = self.records[0] if self.records else None
        return first if isinstance(first, AstmHeader) else None

    @property
    def results(self) -> list[AstmResult]:
        return [r for r in self.records if isinstance(r, AstmResult)]


def _sample_type(result: AstmResult) -> SampleType:
    if result.is_control:
        return SampleType.CONTROL_SOLUTION
    if result.reference_method is ReferenceMethod.WHOLE_BLOOD:
        return SampleType.CAPILLARY_WHOLE_BLOOD
    # Contour meters report plasma-calibrated values ("mg/dL^P").
    return SampleType.CAPILLARY_PLASMA


def to_reading(result: AstmResult, device_id: str,
               clock: ClockObservation | None) -> BloodGlucoseReading | None:
    """A glucose result as a canonical reading; ``None`` for other analytes.

    ``>``/``<`` mean above/below the measuring range: the value sent is then the range limit,
    not a measurement, so the reading carries no number but the annunciation.
    """
    if result.analyte != "Glucose":
        return None
    when = result.test_time
    if when is None:
        raise ProtocolError("glucose result without a test time", bytes(result))
    annunciations: set[Annunciation] = set()
    if result.is_high:
        annunciations.add(Annunciation.RESULT_TOO_HIGH)
    if result.is_low:
        annunciations.add(Annunciation.RESULT_TOO_LOW)
    value: float | None = None
    if not annunciations:
        try:
            number = float(result.value or "")
        except ValueError:
            raise ProtocolError(f"glucose value {result.value!r} is not a number",
                                bytes(result)) from None
        if result.unit == "mg/dL":
            value = number
        elif result.unit == "mmol/L":
            value = mmol_l_to_mg_dl(number)
        else:
            raise ProtocolError(f"glucose unit {result.unit!r} is neither mg/dL nor mmol/L",
                                bytes(result))
    meal = result.meal
    return BloodGlucoseReading(
        device_id=device_id, time=provisional_utc(when, clock), device_time=when,
        glucose_mg_dl=value, sample_type=_sample_type(result),
        meal=_MEALS.get(meal) if meal is not None else None,
        annunciations=frozenset(annunciations))


class ContourAstmDriver(DeviceDriver):
    """One Contour-style ASTM meter on a serial port (opened on first use).

    The identity comes only with a transfer, so :meth:`read_info` receives one and keeps it
    for the :meth:`sync` that follows; a later sync asks for a new transfer.
    """

    PROTOCOL = "contour-astm"

    def __init__(self, url: str, options: ContourDriverOptions | None = None) -> None:
        self.url = url
        self.options = options or ContourDriverOptions()
        self.link = SerialLink(url, self.options.settings())
        self._pending = b""
        self._items: list[bytes] = []
        self._cached: Transfer | None = None
        self._notices: list[str] = []
        self._info: DeviceInfo | None = None
        self._clock: ClockObservation | None = None

    # --- E1381 receiver --------------------------------------------------------------------

    async def _next_item(self, timeout: float, what: str) -> bytes:
        """The next control byte or raw frame (frames are checked by the caller)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._items:
            data = await self.link.read_some(max(deadline - loop.time(), 0.0), what)
            split = split_stream(self._pending + data)
            self._pending = split.rest
            self._items.extend(split.items)
        return self._items.pop(0)

    async def _send(self, control: AstmControl) -> None:
        await self.link.write(encode_control(control))

    async def _await_enq(self) -> None:
        """Wait for the meter's ENQ, nudging it with EOT when it stays silent (§6.2).

        On a fresh connection the meter offers by itself; after a transfer it sits idle, so
        the driver nudges at once.
        """
        fresh = not self.link.is_open
        await self.link.open()
        for attempt in range(1 + self.options.retries):
            if attempt or not fresh:
                self._items.clear()
                self._pending = b""
                self.link.discard_input()
                await self._send(AstmControl.EOT)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.options.enq_timeout_s
            try:
                while True:
                    item = await self._next_item(max(deadline - loop.time(), 0.0), "ENQ")
                    if item == encode_control(AstmControl.ENQ):
                        return
                    # Anything else (an EOT ending an earlier transfer, a stray frame) is
                    # not an offer; keep waiting for one.
            except DeviceTimeout:
                continue
        raise DeviceTimeout(f"the meter offered no transfer (no ENQ) after "
                            f"{1 + self.options.retries} attempt(s)", self.url)

    async def receive_transfer(self) -> Transfer:
        """Receive one whole E1381 transfer and decode its E1394 records."""
        await self._await_enq()
        await self._send(AstmControl.ACK)
        transfer = Transfer()
        assembler = AstmRecordAssembler()
        texts: list[str] = []
        naks_in_a_row = 0
        now = self.options.now
        while True:
            try:
                item = await self._next_item(self.options.timeout_s, "the next frame")
            except DeviceTimeout:
                transfer.problem = "no frame within the receiver timeout (E1381 §6.5.2)"
                transfer.timed_out = True
                break
            except DeviceDisconnected as exc:
                reason = str(exc).removeprefix(f"{self.url}: ")
                raise DeviceDisconnected(
                    f"{reason} (during the transfer, after {len(texts)} record(s))",
                    self.url) from exc
            if len(item) == 1:
                if item == encode_control(AstmControl.EOT):
                    break
                if item == encode_control(AstmControl.ENQ):
                    # The sender started over (§6.2): accept the new transfer from scratch.
                    assembler.restart()
                    texts.clear()
                    transfer.header_at = None
                    await self._send(AstmControl.ACK)
                continue
            try:
                frame = AstmFrame.from_bytes(item)
                completed = assembler.add(frame)
            except ProtocolError:
                transfer.naks += 1
                naks_in_a_row += 1
                if naks_in_a_row > self.options.max_naks:
                    transfer.problem = f"{naks_in_a_row} damaged frames in a row"
                    break
                await self._send(AstmControl.NAK)
                continue
            naks_in_a_row = 0
            if completed and not texts:
                # The header is the first record: the clock reading belongs to this moment.
                transfer.header_at = now()
            texts += completed
            await self._send(AstmControl.ACK)
        try:
            transfer.records = decode_records(texts)
        except ProtocolError as exc:
            transfer.problem = f"records do not decode: {exc}"
            return transfer
        last = transfer.records[-1] if transfer.records else None
        transfer.complete = (assembler.message_complete and isinstance(last, AstmTerminator)
                             and transfer.header is not None)
        if not transfer.complete and transfer.problem is None:
            transfer.problem = "the transfer ended before the terminator record"
        return transfer

    async def _transfer_with_retries(self) -> Transfer:
        best: Transfer | None = None
        attempts = 0
        for _ in range(1 + self.options.retries):
            attempts += 1
            transfer = await self.receive_transfer()
            if transfer.naks:
                self._notices.append(f"{transfer.naks} frame(s) answered NAK and sent again")
            if transfer.complete:
                if attempts > 1:
                    self._notices.append(f"transfer received {attempts} times before it "
                                         "was complete")
                return transfer
            if best is None or len(transfer.results) > len(best.results):
                best = transfer
        assert best is not None
        if best.timed_out and not best.records:
            raise DeviceTimeout(f"no complete transfer after {attempts} attempt(s): "
                                f"{best.problem}", self.url)
        header = best.header
        device_id = self._device_id(header) if header is not None else None
        kept: list[BloodGlucoseReading] = []
        if device_id is not None:
            clock = self._clock_of(best)
            for result in best.results:
                try:
                    reading = to_reading(result, device_id, clock)
                except ProtocolError:
                    continue
                if reading is not None:
                    kept.append(reading)
        raise TransferIncomplete(
            f"no complete transfer after {attempts} attempt(s) ({best.problem}); "
            f"{len(kept)} reading(s) kept", self.url, kept=kept)

    # --- identity and clock ----------------------------------------------------------------

    def _device_id(self, header: AstmHeader) -> str:
        serial_number = (header.serial_number or "").strip()
        if not serial_number:
            raise DeviceError("the header carries no serial number", self.url)
        return serial_number

    def _info_of(self, header: AstmHeader) -> DeviceInfo:
        serial_number = self._device_id(header)
        versions = header.software_versions
        return DeviceInfo(
            device_id=serial_number, kind=DeviceKind.BLOOD_GLUCOSE_METER,
            model=header.product_code or None, serial_number=serial_number,
            software_revision="/".join(versions) if versions else None,
            transport="serial", address=self.url)

    def _clock_of(self, transfer: Transfer) -> ClockObservation | None:
        header = transfer.header
        if header is None or transfer.header_at is None:
            return None
        try:
            device_time = header.device_time
        except ProtocolError:
            return None
        if device_time is None:
            return None
        return ClockObservation(device_time=device_time, gateway_time=transfer.header_at,
                                source=ClockSource.SERIAL_TIME_COMMAND)

    # --- DeviceDriver ----------------------------------------------------------------------

    async def read_info(self) -> DeviceInfo:
        if self._info is None:
            self._cached = await self._transfer_with_retries()
            header = self._cached.header
            assert header is not None
            self._info = self._info_of(header)
            self._clock = self._clock_of(self._cached)
        return self._info

    async def sync(self, state: SyncState) -> SyncResult:
        if self._cached is None:
            self._cached = await self._transfer_with_retries()
        transfer, self._cached = self._cached, None
        notices, self._notices = self._notices, []
        header = transfer.header
        assert header is not None
        info = self._info_of(header)
        self._info = info
        clock = self._clock_of(transfer)
        readings: list[BloodGlucoseReading] = []
        skipped = 0
        for result in transfer.results:
            try:
                reading = to_reading(result, info.device_id, clock)
            except ProtocolError as exc:
                raise DeviceError(f"result record {result.sequence} unreadable: {exc}",
                                  self.url) from exc
            if reading is None:
                skipped += 1
            else:
                readings.append(reading)
        count = _count(header)
        if count is not None and count != len(transfer.results):
            notices.append(f"header announces {count} result(s), {len(transfer.results)} "
                           "were sent")
        if skipped:
            notices.append(f"{skipped} result(s) of other analytes skipped")
        new = since_anchor(readings, state, len(readings))
        notices += new.notices
        return SyncResult(info=info, records=tuple(new.readings), state=new.state,
                          clock=clock, notices=tuple(notices))

    async def close(self) -> None:
        await self.link.close()


def _count(header: AstmHeader) -> int | None:
    """Header field 7: the number of stored results on Contour meters (UNCONFIRMED)."""
    text = header.reserved
    return int(text) if text and text.isdigit() else None
