"""LifeScan OneTouch Ultra / Ultra 2: the ASCII serial protocol (9600 8N1).

Commands (host → meter) are ``DC1 CR <command> CR``, i.e. ``11 0D … 0D``. Every reply line
(meter → host) is::

    <text> SP <HHHH> CR LF

``HHHH`` is the 16-bit sum, as four upper-case hex digits, of the bytes of ``<text>``: from
the first character of the line up to, but not including, the space before the checksum (the
space, the checksum digits and CR LF are not summed). Published example lines agree with this,
e.g. ``P 150,"NNS210DPN","MG/DL "`` sums to 0x05BD. The CR LF ending is what every known
host implementation splits on (they read up to LF and expect CR right before it).

Replies by command (``text`` only):

* ``DM?``   → ``?<software version>``
* ``DM@``   → ``@ "<9-character serial number>"``
* ``DMF``   → ``F "<DOW>","MM/DD/YY","HH:MM:SS   "``
* ``DMT``   → the new clock, same layout as DMF with a ``T`` in front (letter UNCONFIRMED)
* ``DMSU?`` → ``SU?,"MG/DL "`` or ``SU?,"MMOL/L"``
* ``DMZ``   → ``Z`` (UNCONFIRMED)
* ``DMP``   → a header line ``P nnn,"<serial>","MG/DL "`` then one line per stored reading::

      P "<DOW>","MM/DD/YY","HH:MM:SS   ","<result>","<meal>","<comment>", <trailer>

  Stored values are always mg/dL, whatever the display unit. Years are two digits (20yy).

The six-character ``<result>`` field: character 0 is ``C`` for a control-solution test,
otherwise a space; character 1 is a space; then either three digits and a space (a reading
in mg/dL) or three digits and ``?`` (a reading the meter marked questionable — open-source
drivers read it as a parity-error mark; meaning UNCONFIRMED). Out-of-range readings are
written ``HIGH`` (above 600 mg/dL) or `` LOW`` (below 20 mg/dL) in characters 2–5 — this
spelling is UNCONFIRMED (no capture seen); it is this module's choice and emulator default.
``<meal>`` is N (none), B (before meal) or A (after meal); ``<comment>`` is 00–11 as listed in
:class:`Ultra2Comment` (other two-digit codes are kept as plain ints); ``<trailer>`` is two
characters, ``00`` in every known dump, kept as sent (meaning UNCONFIRMED).

``DMT`` (set clock) and ``DMZ`` (erase memory) change the meter: :attr:`Ultra2Command.
writes_to_meter` lets a read-only driver refuse them. ``DMST?`` (time format) is listed by one
host implementation only (UNCONFIRMED).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NamedTuple, Self

from bridge.errors import (
    CrcMismatch,
    MalformedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.codec import MessageCodec

DC1 = 0x11
CR = 0x0D
LF = 0x0A
COMMAND_PREFIX = b"\x11\r"
LINE_END = b"\r\n"
MAX_COUNT = 999


class Ultra2CommandCode(Enum):
    READ_SOFTWARE_VERSION = "DM?"
    READ_SERIAL_NUMBER = "DM@"
    READ_DATE_TIME = "DMF"
    SET_DATE_TIME = "DMT"
    READ_GLUCOSE_UNITS = "DMSU?"
    READ_TIME_FORMAT = "DMST?"
    DUMP_RECORDS = "DMP"
    ERASE_MEMORY = "DMZ"


#: Commands that change the meter; a read-only driver must refuse them unless enabled.
WRITE_COMMANDS = frozenset({Ultra2CommandCode.SET_DATE_TIME, Ultra2CommandCode.ERASE_MEMORY})


class Ultra2Unit(Enum):
    """Display unit as the meter spells it (always six characters)."""

    MG_DL = "MG/DL "
    MMOL_L = "MMOL/L"


class Ultra2Meal(Enum):
    NONE = "N"
    BEFORE_MEAL = "B"
    AFTER_MEAL = "A"


class Ultra2Comment(IntEnum):
    """Comment codes of a stored reading, as listed in LifeScan's Ultra 2 protocol."""

    NO_COMMENT = 0
    NOT_ENOUGH_FOOD = 1
    TOO_MUCH_FOOD = 2
    MILD_EXERCISE = 3
    HARD_EXERCISE = 4
    MEDICATION = 5
    STRESS = 6
    ILLNESS = 7
    FEEL_HYPO = 8
    MENSES = 9
    VACATION = 10
    OTHER = 11


class Ultra2ResultKind(Enum):
    READING = "reading"
    HIGH = "HIGH"
    LOW = "LOW"


DAYS_OF_WEEK = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")

_HIGH_TEXT = "HIGH"
_LOW_TEXT = " LOW"


def ultra2_checksum(text: bytes) -> int:
    """The 16-bit byte sum of a reply's text (see module docstring for which bytes)."""
    return sum(text) & 0xFFFF


def _printable(raw: bytes) -> bool:
    return all(0x20 <= b <= 0x7E for b in raw)


def _text_bytes(text: str, what: str) -> bytes:
    if not text or any(not 0x20 <= ord(c) <= 0x7E for c in text):
        raise ValueOutOfRange(f"{what} {text!r} must be non-empty printable ASCII")
    return text.encode("ascii")


# --- commands -------------------------------------------------------------------------------

_DMT_RE = re.compile(r"(\d\d)/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)", re.ASCII)


@dataclass(frozen=True, slots=True)
class Ultra2Command:
    """One host command, ``11 0D <command> 0D``; ``set_time`` only for DMT (years 2000–2099)."""

    code: Ultra2CommandCode
    set_time: dt.datetime | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        if not data.startswith(COMMAND_PREFIX):
            raise MalformedFrame("command does not start with DC1 CR", data, 0)
        if len(data) < 3 or data[-1] != CR:
            raise MalformedFrame("command does not end with CR", data, len(data))
        body = data[2:-1]
        if not _printable(body):
            raise MalformedFrame("command is not printable ASCII", data, 2)
        text = body.decode("ascii")
        if text.startswith(Ultra2CommandCode.SET_DATE_TIME.value):
            match = _DMT_RE.fullmatch(text, 3)
            if match is None:
                raise MalformedFrame("DMT needs mm/dd/yy HH:MM:SS", data, 5)
            month, day, year, hour, minute, second = (int(g) for g in match.groups())
            try:
                when = dt.datetime(2000 + year, month, day, hour, minute, second)
            except ValueError as exc:
                raise ValueOutOfRange(f"DMT date/time does not exist: {exc}", data, 5) from None
            return cls(Ultra2CommandCode.SET_DATE_TIME, when)
        if text in Ultra2CommandCode._value2member_map_:
            return cls(Ultra2CommandCode(text))
        raise UnknownOpCode(f"unknown Ultra 2 command {text!r}", data, 2)

    def __bytes__(self) -> bytes:
        code = Ultra2CommandCode(self.code)
        body: str
        if code is Ultra2CommandCode.SET_DATE_TIME:
            if self.set_time is None or not 2000 <= self.set_time.year <= 2099:
                raise ValueOutOfRange("DMT needs a set_time in 2000…2099")
            body = code.value + self.set_time.strftime("%m/%d/%y %H:%M:%S")
        else:
            if self.set_time is not None:
                raise ValueOutOfRange(f"{code.value} takes no date/time")
            body = code.value
        return COMMAND_PREFIX + body.encode("ascii") + b"\r"

    @property
    def writes_to_meter(self) -> bool:
        return self.code in WRITE_COMMANDS


class CommandSplit(NamedTuple):
    """Result of :func:`split_commands`."""

    commands: list[bytes]
    rest: bytes
    skipped: bytes


def split_commands(buffer: bytes) -> CommandSplit:
    """Cut a host → meter byte stream into raw ``11 0D … 0D`` commands (meter/emulator side).

    Commands are returned undecoded so the caller can answer unknown ones; bytes outside a
    ``DC1 CR`` prefix are returned in ``skipped``. Nothing is raised.
    """
    buf = bytes(buffer)
    commands: list[bytes] = []
    skipped = bytearray()
    i = 0
    while True:
        start = buf.find(COMMAND_PREFIX, i)
        if start < 0:
            # keep a trailing DC1 that may be the first half of the next prefix
            keep = len(buf) - 1 if buf.endswith(b"\x11") and len(buf) - 1 >= i else len(buf)
            skipped += buf[i:keep]
            return CommandSplit(commands, buf[keep:], bytes(skipped))
        skipped += buf[i:start]
        end = buf.find(b"\r", start + 2)
        if end < 0:
            return CommandSplit(commands, buf[start:], bytes(skipped))
        restart = buf.rfind(b"\x11", start + 2, end)
        if restart >= 0:  # a new DC1 before the CR: the earlier prefix was noise
            skipped += buf[start:restart]
            i = restart
            continue
        commands.append(buf[start:end + 1])
        i = end + 1


# --- reply lines ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ultra2Reply:
    """One checksummed reply line ``<text> <HHHH> CR LF``; the checksum is recomputed."""

    text: str

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        if not data.endswith(LINE_END):
            raise MalformedFrame("reply line does not end with CR LF", data, len(data))
        body = data[:-2]
        if len(body) < 6 or body[-5] != 0x20:
            raise MalformedFrame("reply line lacks ' HHHH' checksum", data, max(len(body) - 5, 0))
        digits = body[-4:]
        if any(b not in b"0123456789ABCDEF" for b in digits):
            raise MalformedFrame("checksum is not four upper-case hex digits", data,
                                 len(body) - 4)
        text = body[:-5]
        if not _printable(text):
            raise MalformedFrame("reply text is not printable ASCII", data, 0)
        computed = ultra2_checksum(text)
        received = int(digits, 16)
        if computed != received:
            raise CrcMismatch("Ultra 2 reply checksum mismatch", data, len(body) - 4,
                              expected=computed, received=received)
        return cls(text.decode("ascii"))

    def __bytes__(self) -> bytes:
        raw = _text_bytes(self.text, "reply text")
        return raw + b" %04X\r\n" % ultra2_checksum(raw)

    # typed readings of the single-line replies; each raises MalformedFrame on a mismatch

    def software_version(self) -> str:
        if not self.text.startswith("?"):
            raise self._mismatch("not a DM? software-version reply")
        return self.text[1:]

    def serial_number(self) -> str:
        match = re.fullmatch(r'@ "([^"]*)"', self.text)
        if match is None:
            raise self._mismatch("not a DM@ serial-number reply")
        return match.group(1)

    def device_time(self) -> dt.datetime:
        """The clock in a DMF (``F``) or DMT (``T``) reply."""
        if self.text[:2] not in ("F ", "T "):
            raise self._mismatch("not a DMF/DMT date/time reply")
        _dow, when = _parse_date_time(self.text[2:], self.text.encode("ascii", "replace"), 2)
        return when

    def glucose_unit(self) -> Ultra2Unit:
        match = re.fullmatch(r'SU\?,"(.{6})"', self.text)
        if match is None or match.group(1) not in Ultra2Unit._value2member_map_:
            raise self._mismatch("not a DMSU? unit reply")
        return Ultra2Unit(match.group(1))

    @property
    def is_erase_confirmation(self) -> bool:
        return self.text == "Z"

    @classmethod
    def for_software_version(cls, version: str) -> Self:
        return cls("?" + version)

    @classmethod
    def for_serial_number(cls, serial: str) -> Self:
        return cls(f'@ "{serial}"')

    @classmethod
    def for_device_time(cls, when: dt.datetime, *, set_reply: bool = False) -> Self:
        return cls(("T " if set_reply else "F ") + _format_date_time(when))

    @classmethod
    def for_glucose_unit(cls, unit: Ultra2Unit) -> Self:
        return cls(f'SU?,"{Ultra2Unit(unit).value}"')

    @classmethod
    def erase_confirmation(cls) -> Self:
        return cls("Z")

    def _mismatch(self, why: str) -> MalformedFrame:
        return MalformedFrame(why, self.text.encode("ascii", "replace"), 0)


_DATE_TIME_RE = re.compile(r'"([A-Z]{3})","(\d\d)/(\d\d)/(\d\d)","(\d\d):(\d\d):(\d\d)   "',
                           re.ASCII)


def _parse_date_time(text: str, data: bytes, offset: int) -> tuple[str, dt.datetime]:
    match = _DATE_TIME_RE.fullmatch(text)
    if match is None:
        raise MalformedFrame('date/time is not "DOW","MM/DD/YY","HH:MM:SS   "', data, offset)
    dow = match.group(1)
    if dow not in DAYS_OF_WEEK:
        raise ValueOutOfRange(f"day of week {dow!r} is not one of {DAYS_OF_WEEK}", data, offset)
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[1:])
    try:
        when = dt.datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ValueOutOfRange(f"date/time does not exist: {exc}", data, offset) from None
    return dow, when


def _format_date_time(when: dt.datetime, dow: str | None = None) -> str:
    if not 2000 <= when.year <= 2099:
        raise ValueOutOfRange(f"year {when.year} outside the meter's 2000…2099")
    day = DAYS_OF_WEEK[when.weekday()] if dow is None else dow
    if day not in DAYS_OF_WEEK:
        raise ValueOutOfRange(f"day of week {day!r} is not one of {DAYS_OF_WEEK}")
    return f'"{day}",' + when.strftime('"%m/%d/%y","%H:%M:%S   "')


def _reply_text(data: bytes) -> str:
    return Ultra2Reply.from_bytes(data).text


# --- dump -----------------------------------------------------------------------------------

_HEADER_RE = re.compile(r'P (\d{3}),"([^"]*)","(.{6})"', re.ASCII)


@dataclass(frozen=True, slots=True)
class Ultra2DumpHeader:
    """First DMP line: number of records, serial number, display unit."""

    count: int
    serial_number: str
    unit: Ultra2Unit

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        match = _HEADER_RE.fullmatch(_reply_text(data))
        if match is None:
            raise MalformedFrame('dump header is not P nnn,"<serial>","<unit>"', data, 0)
        if match.group(3) not in Ultra2Unit._value2member_map_:
            raise ValueOutOfRange(f"unknown unit {match.group(3)!r}", data, match.start(3))
        return cls(int(match.group(1)), match.group(2), Ultra2Unit(match.group(3)))

    def __bytes__(self) -> bytes:
        if not 0 <= self.count <= MAX_COUNT:
            raise ValueOutOfRange(f"record count {self.count} does not fit three digits")
        if '"' in self.serial_number:
            raise ValueOutOfRange("serial number must not contain a quote")
        unit = Ultra2Unit(self.unit).value
        return bytes(Ultra2Reply(f'P {self.count:03d},"{self.serial_number}","{unit}"'))


_RECORD_RE = re.compile(
    r'P ("[^"]*","[^"]*","[^"]*"),"([C ]) (\d{3}[ ?]|HIGH| LOW)","(.)","(\d\d)", (..)',
    re.ASCII)


@dataclass(frozen=True, slots=True)
class Ultra2Record:
    """One stored reading from a DMP dump (device-local time; value in mg/dL).

    ``glucose_mg_dl`` is ``None`` for HIGH/LOW results; ``day_of_week`` is kept as sent.
    """

    day_of_week: str
    device_time: dt.datetime
    control_solution: bool
    kind: Ultra2ResultKind
    glucose_mg_dl: int | None
    questionable: bool
    meal: Ultra2Meal
    comment: Ultra2Comment | int
    trailer: str = "00"

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        text = _reply_text(data)
        match = _RECORD_RE.fullmatch(text)
        if match is None:
            raise MalformedFrame('record line is not P "DOW","date","time","result","M","CC", '
                                 'TT', data, 0)
        dow, when = _parse_date_time(match.group(1), data, 2)
        result = match.group(3)
        if result == _HIGH_TEXT:
            kind, value, questionable = Ultra2ResultKind.HIGH, None, False
        elif result == _LOW_TEXT:
            kind, value, questionable = Ultra2ResultKind.LOW, None, False
        else:
            kind, value, questionable = Ultra2ResultKind.READING, int(result[:3]), result[3] == "?"
        meal_text = match.group(4)
        if meal_text not in Ultra2Meal._value2member_map_:
            raise ValueOutOfRange(f"meal code {meal_text!r} is not N, B or A", data,
                                  match.start(4))
        code = int(match.group(5))
        comment: Ultra2Comment | int = (Ultra2Comment(code) if code in
                                        Ultra2Comment._value2member_map_ else code)
        return cls(dow, when, match.group(2) == "C", kind, value, questionable,
                   Ultra2Meal(meal_text), comment, match.group(6))

    def __bytes__(self) -> bytes:
        kind = Ultra2ResultKind(self.kind)
        if kind is Ultra2ResultKind.READING:
            if self.glucose_mg_dl is None or not 0 <= self.glucose_mg_dl <= 999:
                raise ValueOutOfRange("a reading needs glucose_mg_dl in 0…999")
            result = f"{self.glucose_mg_dl:03d}" + ("?" if self.questionable else " ")
        else:
            if self.glucose_mg_dl is not None or self.questionable:
                raise ValueOutOfRange(f"a {kind.value} result carries no value or '?' mark")
            result = _HIGH_TEXT if kind is Ultra2ResultKind.HIGH else _LOW_TEXT
        if not 0 <= int(self.comment) <= 99:
            raise ValueOutOfRange(f"comment code {int(self.comment)} does not fit two digits")
        if len(self.trailer) != 2 or not _printable(self.trailer.encode("latin-1")):
            raise ValueOutOfRange("trailer must be two printable characters")
        control = "C" if self.control_solution else " "
        text = (f"P {_format_date_time(self.device_time, self.day_of_week)},"
                f'"{control} {result}","{Ultra2Meal(self.meal).value}",'
                f'"{int(self.comment):02d}", {self.trailer}')
        return bytes(Ultra2Reply(text))


@dataclass(frozen=True, slots=True)
class Ultra2Dump:
    header: Ultra2DumpHeader
    records: tuple[Ultra2Record, ...]


def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete CR LF-terminated reply lines (each with its CR LF) and the unfinished tail."""
    buf = bytes(buffer)
    lines: list[bytes] = []
    i = 0
    while (end := buf.find(LINE_END, i)) >= 0:
        lines.append(buf[i:end + 2])
        i = end + 2
    return lines, buf[i:]


def parse_dump(lines: bytes | Iterable[bytes]) -> Ultra2Dump:
    """Decode a whole DMP answer: the header line and exactly ``count`` record lines.

    ``lines`` is the raw answer (bytes) or its lines, each ending in CR LF.
    """
    if isinstance(lines, bytes | bytearray):
        raw_lines, rest = split_lines(bytes(lines))
        if rest:
            raise MalformedFrame("dump ends in an unterminated line", bytes(rest), 0)
    else:
        raw_lines = [bytes(line) for line in lines]
    if not raw_lines:
        raise MalformedFrame("dump has no header line")
    header = Ultra2DumpHeader.from_bytes(raw_lines[0])
    records = tuple(Ultra2Record.from_bytes(line) for line in raw_lines[1:])
    if len(records) != header.count:
        raise MalformedFrame(f"dump header announces {header.count} records, "
                             f"{len(records)} followed", raw_lines[0], 2)
    return Ultra2Dump(header, records)


CODECS = (
    MessageCodec("ultra2-command", "OneTouch Ultra 2 host command (DC1 CR cmd CR)",
                 Ultra2Command.from_bytes),
    MessageCodec("ultra2-reply", "OneTouch Ultra 2 checksummed reply line (text HHHH CR LF)",
                 Ultra2Reply.from_bytes),
    MessageCodec("ultra2-dump-header", "OneTouch Ultra 2 DMP header line (count, serial, unit)",
                 Ultra2DumpHeader.from_bytes),
    MessageCodec("ultra2-record", "OneTouch Ultra 2 DMP reading line (time, mg/dL, flags)",
                 Ultra2Record.from_bytes),
)
