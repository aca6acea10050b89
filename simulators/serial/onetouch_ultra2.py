"""Emulated LifeScan OneTouch Ultra 2: the ASCII command protocol at 9600 8N1.

The host sends ``DC1 CR <command> CR``; the meter answers with checksummed lines (see
:mod:`bridge.protocols.onetouch_ultra2`, whose builders encode every line):

* ``DM?`` software version, ``DM@`` serial number, ``DMF`` clock, ``DMSU?`` display unit;
* ``DMP`` dump: a header line (count, serial, unit), then one line per stored reading,
  newest first, values always in mg/dL;
* ``DMT<mm/dd/yy HH:MM:SS>`` sets the clock and ``DMZ`` erases the memory: both are carried
  out like on a real meter and logged in :attr:`Ultra2Emulator.write_log`.

A command the meter does not know (or cannot parse) gets no answer (UNCONFIRMED: what a
real Ultra 2 does; silence is what host drivers are written to time out on).

Readings map to the dump line as follows: a control-solution reading is marked ``C``; a value
above 600 mg/dL (or a reading without a number flagged above range) is ``HIGH``, below
20 mg/dL (or without a number) ``LOW``; a pre-meal reading has meal code ``B``, a post-meal
one ``A``, others ``N``; comment code 00.

Faults: ``corrupt_frame_rate`` damages dump record lines (one text byte, so the line checksum
fails); ``drop_response_rate`` swallows a command's whole answer; ``response_delay_s`` delays
each answer; ``disconnect_after_records`` hangs up after that many record lines of a dump.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.errors import ProtocolError
from bridge.protocols.onetouch_ultra2 import (
    DAYS_OF_WEEK,
    Ultra2Command,
    Ultra2CommandCode,
    Ultra2Comment,
    Ultra2DumpHeader,
    Ultra2Meal,
    Ultra2Record,
    Ultra2Reply,
    Ultra2ResultKind,
    Ultra2Unit,
    split_commands,
)
from bridge.records import BloodGlucoseReading, MealContext
from simulators.serial.ports import (
    ByteLink,
    GlucoseRange,
    MeterCore,
    SerialMeterEmulator,
    StoredReading,
    classify_glucose,
)

logger = logging.getLogger(__name__)

#: Measuring range of the Ultra 2 (mg/dL); outside it the meter shows HIGH / LOW.
LOW_LIMIT_MG_DL = 20
HIGH_LIMIT_MG_DL = 600
DEFAULT_SOFTWARE_VERSION = "P02.00.01 21/05/08"
DEFAULT_SERIAL_NUMBER = "QCK41ZN7Y"
#: Readings an Ultra 2 keeps.
CAPACITY = 500
#: Length of the reply text checksum suffix `` HHHH CR LF``.
_CHECKSUM_SUFFIX = 7


@dataclass(frozen=True, slots=True)
class Ultra2Options:
    """What the emulated meter answers. ``software_version``/``serial_number`` default to the
    DeviceInfo's software revision and serial number."""

    software_version: str | None = None
    serial_number: str | None = None
    unit: Ultra2Unit = Ultra2Unit.MG_DL


def result_kind(reading: BloodGlucoseReading) -> tuple[Ultra2ResultKind, int | None]:
    """How the meter shows a reading: a number within its range, or HIGH / LOW."""
    kind, mg_dl = classify_glucose(reading, LOW_LIMIT_MG_DL, HIGH_LIMIT_MG_DL)
    if kind is GlucoseRange.HIGH:
        return Ultra2ResultKind.HIGH, None
    if kind is GlucoseRange.LOW:
        return Ultra2ResultKind.LOW, None
    return Ultra2ResultKind.READING, mg_dl


_MEALS = {MealContext.PREPRANDIAL: Ultra2Meal.BEFORE_MEAL,
          MealContext.POSTPRANDIAL: Ultra2Meal.AFTER_MEAL}


def dump_record(stored: StoredReading) -> Ultra2Record:
    reading = stored.reading
    kind, value = result_kind(reading)
    return Ultra2Record(
        day_of_week=DAYS_OF_WEEK[stored.device_time.weekday()],
        device_time=stored.device_time,
        control_solution=reading.is_control_solution,
        kind=kind,
        glucose_mg_dl=value,
        questionable=False,
        meal=Ultra2Meal.NONE if reading.meal is None else _MEALS.get(reading.meal, Ultra2Meal.NONE),
        comment=Ultra2Comment.NO_COMMENT,
    )


class Ultra2Emulator(SerialMeterEmulator):
    """A OneTouch Ultra 2 on a serial line."""

    PROTOCOL = "onetouch-ultra2"

    def __init__(self, core: MeterCore, options: Ultra2Options | None = None) -> None:
        super().__init__(core)
        opts = options or Ultra2Options()
        self.options = opts
        info = core.info
        self.software_version = (opts.software_version or info.software_revision
                                 or DEFAULT_SOFTWARE_VERSION)
        self.serial_number = opts.serial_number or info.serial_number or DEFAULT_SERIAL_NUMBER

    async def serve(self, link: ByteLink) -> None:
        pending = b""
        while True:
            data = await link.receive()
            if not data:
                return
            split = split_commands(pending + data)
            pending = split.rest
            for raw in split.commands:
                await self.answer(link, raw)
                if link.hung_up:
                    return

    async def answer(self, link: ByteLink, raw: bytes) -> None:
        try:
            command = Ultra2Command.from_bytes(raw)
        except ProtocolError as exc:
            logger.info("Ultra 2: no answer to %r (%s)", raw, exc.reason)
            return
        code = command.code
        reply: Ultra2Reply | None = None
        if code is Ultra2CommandCode.READ_SOFTWARE_VERSION:
            reply = Ultra2Reply.for_software_version(self.software_version)
        elif code is Ultra2CommandCode.READ_SERIAL_NUMBER:
            reply = Ultra2Reply.for_serial_number(self.serial_number)
        elif code is Ultra2CommandCode.READ_DATE_TIME:
            reply = Ultra2Reply.for_device_time(self.core.device_now())
        elif code is Ultra2CommandCode.READ_GLUCOSE_UNITS:
            reply = Ultra2Reply.for_glucose_unit(self.options.unit)
        elif code is Ultra2CommandCode.SET_DATE_TIME:
            assert command.set_time is not None
            self.core.set_device_time(command.set_time, raw)
            reply = Ultra2Reply.for_device_time(self.core.device_now(), set_reply=True)
        elif code is Ultra2CommandCode.ERASE_MEMORY:
            self.core.erase(raw)
            reply = Ultra2Reply.erase_confirmation()
        elif code is Ultra2CommandCode.DUMP_RECORDS:
            await self._dump(link)
            return
        else:
            logger.info("Ultra 2: %s is not answered", code.value)
            return
        if self.core.faults.should_drop():
            logger.info("Ultra 2: answer to %s dropped (fault injection)", code.value)
            return
        await self.pause()
        await link.send(bytes(reply))

    async def _dump(self, link: ByteLink) -> None:
        faults = self.core.faults
        if faults.should_drop():
            logger.info("Ultra 2: dump dropped (fault injection)")
            return
        stored = self.core.newest_first()
        await self.pause()
        await link.send(bytes(Ultra2DumpHeader(len(stored), self.serial_number,
                                               self.options.unit)))
        for sent, item in enumerate(stored, start=1):
            line = bytes(dump_record(item))
            if faults.should_corrupt():
                # One bit of the text flipped: still printable, so the host sees the line
                # and its checksum disagree.
                line = faults.corrupt(line, 0, len(line) - _CHECKSUM_SUFFIX, mask=0x01)
            await link.send(line)
            if faults.disconnect_now(sent):
                await link.hang_up()
                return
