"""Driver for the LifeScan OneTouch Ultra 2: ASCII commands at 9600 8N1.

The host sends ``DC1 CR <command> CR`` and the meter answers with checksummed lines (see
:mod:`bridge.protocols.onetouch_ultra2`). The driver uses:

* ``DM@`` serial number → ``DeviceInfo.device_id``; ``DM?`` software version;
* ``DMF`` the meter clock → one :class:`~bridge.devices.base.ClockObservation` per sync;
* ``DMP`` the memory dump (newest first, values always mg/dL) → canonical readings.

Read-only guard: ``DMT`` (set clock) is sent only when ``allow_time_write`` is set for the
device, ``DMZ`` (erase memory) never; both are refused with
:class:`~bridge.devices.serial_port.ForbiddenCommand` before a byte is written.

Retries: a reply line whose checksum (16-bit byte sum) fails is asked for again; a damaged
dump line makes the driver dump again and fill in the lines that failed, position by position,
as long as the header (count, serial) stays the same. After ``retries`` repeats it gives up
with :class:`~bridge.devices.serial_port.TransferIncomplete` carrying what was kept.

Incremental sync: the meter only dumps everything; record positions shift with every new
test, so the identity of a reading is its device time. The state keeps the fingerprint of the
newest reading; readings in front of it in the next dump are new (see ``docs/serial.md``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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
    ForbiddenCommand,
    SerialDriverOptions,
    SerialLink,
    TransferIncomplete,
    midpoint,
    provisional_utc,
    since_anchor,
)
from bridge.errors import ProtocolError
from bridge.protocols.onetouch_ultra2 import (
    LINE_END,
    Ultra2Command,
    Ultra2CommandCode,
    Ultra2DumpHeader,
    Ultra2Meal,
    Ultra2Record,
    Ultra2Reply,
    Ultra2ResultKind,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceInfo,
    DeviceKind,
    MealContext,
    SampleType,
)

MANUFACTURER = "LifeScan"
MODEL = "OneTouch Ultra 2"

_MEALS = {Ultra2Meal.BEFORE_MEAL: MealContext.PREPRANDIAL,
          Ultra2Meal.AFTER_MEAL: MealContext.POSTPRANDIAL}


@dataclass(frozen=True, slots=True, kw_only=True)
class Ultra2DriverOptions(SerialDriverOptions):
    """The shared options; ``allow_time_write`` lets :meth:`OneTouchUltra2Driver.set_clock`
    send ``DMT``."""


def to_reading(record: Ultra2Record, device_id: str,
               clock: ClockObservation | None) -> BloodGlucoseReading:
    """A dump line as a canonical reading (values are mg/dL whatever the display unit)."""
    annunciations: frozenset[Annunciation] = frozenset()
    if record.kind is Ultra2ResultKind.HIGH:
        annunciations = frozenset({Annunciation.RESULT_TOO_HIGH})
    elif record.kind is Ultra2ResultKind.LOW:
        annunciations = frozenset({Annunciation.RESULT_TOO_LOW})
    value = None if record.glucose_mg_dl is None else float(record.glucose_mg_dl)
    return BloodGlucoseReading(
        device_id=device_id, time=provisional_utc(record.device_time, clock),
        device_time=record.device_time, glucose_mg_dl=value,
        sample_type=(SampleType.CONTROL_SOLUTION if record.control_solution
                     else SampleType.CAPILLARY_WHOLE_BLOOD),
        meal=_MEALS.get(record.meal), annunciations=annunciations)


@dataclass(slots=True)
class _Dump:
    header: Ultra2DumpHeader
    lines: list[Ultra2Record | None]
    bad_lines: int = 0
    dumps: int = 1


class OneTouchUltra2Driver(DeviceDriver):
    """One OneTouch Ultra 2 on a serial port (opened on first use)."""

    PROTOCOL = "onetouch-ultra2"

    def __init__(self, url: str, options: Ultra2DriverOptions | None = None) -> None:
        self.url = url
        self.options = options or Ultra2DriverOptions()
        self.link = SerialLink(url, self.options.settings())
        self._info: DeviceInfo | None = None

    # --- transport -----------------------------------------------------------------------------

    def _guard(self, command: Ultra2Command) -> None:
        """The read-only guard: every command passes here before it is encoded and sent."""
        if not command.writes_to_meter:
            return
        if command.code is Ultra2CommandCode.ERASE_MEMORY:
            raise ForbiddenCommand("DMZ", "erasing the meter's memory is never allowed",
                                   self.url)
        if not self.options.allow_time_write:
            raise ForbiddenCommand("DMT", "setting the meter clock is disabled for this device "
                                   "(allow_time_write)", self.url)

    async def _send(self, command: Ultra2Command) -> None:
        self._guard(command)
        await self.link.open()
        # A line left over from an earlier, abandoned answer must not be taken for this one.
        self.link.discard_input()
        await self.link.write(bytes(command))

    async def _line(self, what: str) -> bytes:
        return await self.link.read_until(LINE_END, self.options.timeout_s, what)

    async def ask(self, command: Ultra2Command) -> Ultra2Reply:
        """Send one single-line command and return its checked reply.

        Reads are repeated after a checksum error or silence (``retries`` times); a clock
        write is sent once only.
        """
        self._guard(command)
        attempts = 1 if command.writes_to_meter else 1 + self.options.retries
        last: Exception | None = None
        for _ in range(attempts):
            await self._send(command)
            try:
                return Ultra2Reply.from_bytes(await self._line(command.code.value + " reply"))
            except (DeviceTimeout, ProtocolError) as exc:
                last = exc
        if isinstance(last, DeviceTimeout):
            raise DeviceTimeout(f"no answer to {command.code.value} after {attempts} "
                                f"attempt(s)", self.url) from last
        raise DeviceError(f"answer to {command.code.value} damaged {attempts} time(s): {last}",
                          self.url) from last

    async def _typed(self, command: Ultra2Command, read: str) -> object:
        """``ask`` plus a typed reading of the reply; a reply of the wrong kind is retried."""
        last: Exception | None = None
        for _ in range(1 + self.options.retries):
            reply = await self.ask(command)
            try:
                return getattr(reply, read)()
            except ProtocolError as exc:
                last = exc
        raise DeviceError(f"unexpected answer to {command.code.value}: {last}",
                          self.url) from last

    # --- procedures ----------------------------------------------------------------------------

    async def read_info(self) -> DeviceInfo:
        if self._info is None:
            serial_number = await self._typed(
                Ultra2Command(Ultra2CommandCode.READ_SERIAL_NUMBER), "serial_number")
            version = await self._typed(
                Ultra2Command(Ultra2CommandCode.READ_SOFTWARE_VERSION), "software_version")
            assert isinstance(serial_number, str) and isinstance(version, str)
            if not serial_number:
                raise DeviceError("the meter reported an empty serial number", self.url)
            self._info = DeviceInfo(
                device_id=serial_number, kind=DeviceKind.BLOOD_GLUCOSE_METER,
                manufacturer=MANUFACTURER, model=MODEL, serial_number=serial_number,
                software_revision=version, transport="serial", address=self.url)
        return self._info

    async def read_clock(self) -> ClockObservation:
        """``DMF``: the meter clock against the gateway clock."""
        now = self.options.now
        start = now()
        device_time = await self._typed(Ultra2Command(Ultra2CommandCode.READ_DATE_TIME),
                                        "device_time")
        assert isinstance(device_time, dt.datetime)
        return ClockObservation(device_time=device_time, gateway_time=midpoint(start, now()),
                                source=ClockSource.SERIAL_TIME_COMMAND)

    async def set_clock(self, device_time: dt.datetime) -> dt.datetime:
        """``DMT``: set the meter clock (only with ``allow_time_write``); returns the new clock."""
        reply = await self.ask(Ultra2Command(Ultra2CommandCode.SET_DATE_TIME, device_time))
        try:
            return reply.device_time()
        except ProtocolError as exc:
            raise DeviceError(f"unexpected answer to DMT: {exc}", self.url) from exc

    async def erase_memory(self) -> None:
        """``DMZ``: always refused (the bridge never deletes a device's records)."""
        self._guard(Ultra2Command(Ultra2CommandCode.ERASE_MEMORY))

    async def _dump_once(self) -> tuple[Ultra2DumpHeader, list[Ultra2Record | None], int]:
        await self._send(Ultra2Command(Ultra2CommandCode.DUMP_RECORDS))
        header = Ultra2DumpHeader.from_bytes(await self._line("DMP header"))
        lines: list[Ultra2Record | None] = []
        bad = 0
        for i in range(header.count):
            try:
                raw = await self._line(f"DMP line {i + 1} of {header.count}")
            except DeviceDisconnected as exc:
                reason = str(exc).removeprefix(f"{self.url}: ")
                raise DeviceDisconnected(f"{reason} (during DMP, after {i} of {header.count} "
                                         "line(s))", self.url) from exc
            except DeviceTimeout:
                # The rest of this dump is lost; the next dump fills it in.
                lines += [None] * (header.count - i)
                return header, lines, bad + header.count - i
            try:
                lines.append(Ultra2Record.from_bytes(raw))
            except ProtocolError:
                lines.append(None)
                bad += 1
        return header, lines, bad

    async def dump(self) -> _Dump:
        """``DMP`` until every line of the memory has been read intact once (or give up)."""
        merged: _Dump | None = None
        dumps = 0
        last_error: Exception | None = None
        for _ in range(1 + self.options.retries):
            dumps += 1
            try:
                header, lines, bad = await self._dump_once()
            except (DeviceTimeout, ProtocolError) as exc:
                last_error = exc
                continue
            if merged is None or merged.header != header:
                # First dump, or the memory changed meanwhile: positions no longer line up.
                merged = _Dump(header, lines, bad)
            else:
                merged.lines = [old if old is not None else new
                                for old, new in zip(merged.lines, lines, strict=True)]
                merged.bad_lines += bad
            merged.dumps = dumps
            if all(line is not None for line in merged.lines):
                return merged
        if merged is None:
            if isinstance(last_error, DeviceTimeout):
                raise DeviceTimeout(f"no answer to DMP after {dumps} attempt(s)",
                                    self.url) from last_error
            raise DeviceError(f"DMP header unreadable after {dumps} attempt(s): {last_error}",
                              self.url) from last_error
        return merged

    async def sync(self, state: SyncState) -> SyncResult:
        info = await self.read_info()
        clock = await self.read_clock()
        dump = await self.dump()
        records = [to_reading(r, info.device_id, clock) for r in dump.lines if r is not None]
        missing = sum(1 for r in dump.lines if r is None)
        if missing:
            raise TransferIncomplete(
                f"{missing} of {dump.header.count} dump line(s) never arrived intact in "
                f"{dump.dumps} dump(s); {len(records)} kept", self.url, kept=records,
                missing=missing)
        new = since_anchor(records, state, dump.header.count)
        notices = list(new.notices)
        if dump.bad_lines:
            notices.append(f"{dump.bad_lines} dump line(s) failed their checksum; memory "
                           f"dumped {dump.dumps} time(s)")
        questionable = sum(1 for r in dump.lines if r is not None and r.questionable)
        if questionable:
            notices.append(f"{questionable} reading(s) marked '?' by the meter")
        return SyncResult(info=info, records=tuple(new.readings), state=new.state,
                          clock=clock, notices=tuple(notices))

    async def close(self) -> None:
        await self.link.close()
