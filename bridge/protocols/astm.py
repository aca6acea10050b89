"""ASTM E1381-02 low-level framing and E1394-97 records, as Bayer/Ascensia Contour meters send them.

E1381 (CLSI LIS1-A) link layer
------------------------------
Single control characters establish and end a transfer: the sender offers ``ENQ``, the
receiver answers ``ACK`` (or ``NAK``, 0x15 = decimal 21), frames follow — each answered with
``ACK``/``NAK`` — and ``EOT`` ends the transfer (E1381 §6.2, §6.3.4, §6.4). A frame is::

    STX FN text ETB|ETX C1 C2 CR LF

``FN`` is the frame number as one ASCII digit ``0``–``7``: the first frame of a transfer is 1,
then it counts modulo 8 (§6.3.2). ``C1 C2`` is the sum of the bytes from FN through ETB/ETX
inclusive, modulo 256, as two upper-case hex characters (§6.3.3). Text carries at most 240
characters (a frame at most 247, §6.3.1); a longer record is split over ``ETB`` intermediate
frames, each record begins in a new frame, and a record ends with ``CR`` inside the text. The
last frame of a message ends with ``ETX``. Contour meters send the whole transfer (header to
terminator) as one message, one record per frame: every frame but the terminator's ends in
``CR ETB``. Frame text must not contain the restricted characters of §6.3.7 (SOH, STX, ETX,
EOT, ENQ, ACK, DLE, NAK, SYN, ETB, LF, DC1–DC4); CR only ends a record.

Decoding accepts text longer than 240 characters (the markers delimit it unambiguously);
:func:`frames_for_records` never produces such frames.

E1394 (CLSI LIS2-A2) records
----------------------------
A record is one line of fields separated by the field delimiter; fields split into repeats and
components. The header (§7) defines the delimiters in its first five characters, ``H|\\^&``:
field ``|``, repeat ``\\``, component ``^``, escape ``&``. Record classes keep every field as
the raw text that was sent (``None`` for trailing fields that were not sent at all — E1394
lets a sender drop trailing empty fields), so decode → encode is byte-exact; typed accessors
interpret the fields.

Contour usage (from the field layout of published captures; meanings marked UNCONFIRMED are
this module's reading, not a manufacturer statement):

* Header field 5 (sender name): ``<product code>^<versions, repeat-separated>^<serial>^<sku>``;
  field 6 (street address) carries meter settings ``A=1^C=63^…^U=0^V=20600^…``; field 7 carries
  the number of stored results (UNCONFIRMED); field 14 the meter clock ``YYYYMMDDHHMM[SS]``.
* Patient record: just ``P|<sequence>``.
* Result record: ``R|n|^^^Glucose|102|mg/dL^P||<markers>||YYYYMMDDHHMM`` — the analyte is the
  4th component of the test id (also ``Insulin``, ``Carb`` on Contour Next); units carry the
  reference method as 2nd component (``P`` plasma, ``B`` whole blood); the test time sits in
  field 9, where E1394 has "result status" (§10.1.9) — :attr:`AstmResult.test_time` reads the
  E1394 completion time (§10.1.13) when present and field 9 otherwise. Markers (field 7) are
  ``/``-separated: ``>`` above the measuring range (HI), ``<`` below it (LO), ``C`` control
  solution, ``B`` before meal, ``A`` after meal, ``F`` fasting (UNCONFIRMED), ``D`` "don't
  feel right" (UNCONFIRMED); other codes (``M<n>``, ``T<n>``, ``I``, ``S``, ``X``, ``Z``) are
  kept as sent without interpretation.
* Terminator: ``L|1||N`` — the termination code sits in field 4, not E1394's field 3
  (§13.1.3); :attr:`AstmTerminator.termination` reads field 3 and falls back to field 4.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar, NamedTuple, Self

from bridge.errors import (
    CrcMismatch,
    MalformedFrame,
    TrailingBytes,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.codec import MessageCodec
from bridge.records import mmol_l_to_mg_dl

STX = 0x02
ETX = 0x03
ETB = 0x17
CR = 0x0D
LF = 0x0A
#: Maximum text characters in one frame (E1381 §6.3.1: 247-character frames).
MAX_TEXT = 240
_FRAME_OVERHEAD = 7  # STX FN ETX/ETB C1 C2 CR LF


class AstmControl(IntEnum):
    """The single-byte link-control characters (E1381 §6.2–§6.4)."""

    EOT = 0x04
    ENQ = 0x05
    ACK = 0x06
    NAK = 0x15  # decimal 21; not 15


#: Characters that may not appear in frame text (E1381 §6.3.7); CR is allowed as record end.
RESTRICTED = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0A, 0x10, 0x11, 0x12, 0x13,
                        0x14, 0x15, 0x16, 0x17})


def decode_control(data: bytes) -> AstmControl:
    """One link-control byte; anything else raises."""
    data = bytes(data)
    if not data:
        raise TruncatedFrame("control character needs 1 byte but 0 remain", data, 0)
    if len(data) > 1:
        raise TrailingBytes(f"{len(data) - 1} unexpected byte(s) after the control character",
                            data, 1)
    if data[0] not in AstmControl._value2member_map_:
        raise UnknownOpCode(f"0x{data[0]:02X} is not ENQ, ACK, NAK or EOT", data, 0)
    return AstmControl(data[0])


def encode_control(value: AstmControl) -> bytes:
    return bytes([AstmControl(value)])


def astm_checksum(data: bytes) -> int:
    """E1381 §6.3.3 checksum of the bytes FN … ETB/ETX: their sum modulo 256."""
    return sum(data) & 0xFF


def _check_text(text: str, what: str) -> bytes:
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueOutOfRange(f"{what} has characters outside ISO 8859-1") from None
    if any(b in RESTRICTED for b in raw):
        raise ValueOutOfRange(f"{what} contains an E1381 restricted control character")
    return raw


# --- E1381 frames ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AstmFrame:
    """One E1381 frame, STX through LF. ``final`` is True for ETX, False for ETB."""

    frame_number: int
    text: str
    final: bool = True

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        if len(data) < _FRAME_OVERHEAD:
            raise TruncatedFrame(f"an E1381 frame has at least {_FRAME_OVERHEAD} bytes",
                                 data, len(data))
        if data[0] != STX:
            raise MalformedFrame("frame does not start with STX", data, 0)
        if data[-2:] != b"\r\n":
            raise MalformedFrame("frame does not end with CR LF", data, len(data) - 2)
        end = len(data) - 5
        if data[end] not in (ETX, ETB):
            raise MalformedFrame("no ETX/ETB before the checksum", data, end)
        if not 0x30 <= data[1] <= 0x37:
            raise MalformedFrame(f"frame number byte 0x{data[1]:02X} is not '0'…'7'", data, 1)
        text = data[2:end]
        for i, b in enumerate(text):
            if b in RESTRICTED:
                raise MalformedFrame(f"restricted control character 0x{b:02X} in frame text",
                                     data, 2 + i)
        digits = data[end + 1:end + 3]
        if any(b not in b"0123456789ABCDEF" for b in digits):
            raise MalformedFrame("checksum is not two upper-case hex characters", data,
                                 end + 1)
        computed = astm_checksum(data[1:end + 1])
        received = int(digits, 16)
        if computed != received:
            raise CrcMismatch("E1381 frame checksum mismatch", data, end + 1,
                              expected=computed, received=received)
        return cls(data[1] - 0x30, text.decode("latin-1"), data[end] == ETX)

    def __bytes__(self) -> bytes:
        if not 0 <= self.frame_number <= 7:
            raise ValueOutOfRange(f"frame number {self.frame_number} outside 0…7")
        raw = _check_text(self.text, "frame text")
        body = bytes([0x30 + self.frame_number]) + raw + bytes([ETX if self.final else ETB])
        return b"\x02" + body + b"%02X\r\n" % astm_checksum(body)

    @property
    def ends_record(self) -> bool:
        return self.text.endswith("\r")


def frames_for_records(records: Iterable[str], *, first_frame_number: int = 1,
                       max_text: int = MAX_TEXT,
                       etx_after_each_record: bool = False) -> list[AstmFrame]:
    """Frame records for sending: each record plus its CR starts a new frame and is cut into
    ``max_text``-character pieces (E1381 §6.3.1). Frames end with ETB except the last frame of
    the message (``etx_after_each_record``: the last frame of every record, i.e. one message
    per record; default is the Contour style, one message for all records).
    """
    if not 1 <= max_text <= MAX_TEXT:
        raise ValueOutOfRange(f"max_text {max_text} outside 1…{MAX_TEXT}")
    if not 0 <= first_frame_number <= 7:
        raise ValueOutOfRange(f"frame number {first_frame_number} outside 0…7")
    pieces: list[tuple[str, bool]] = []
    for record in records:
        if "\r" in record:
            raise ValueOutOfRange("a record must not contain CR (it is added as terminator)")
        text = record + "\r"
        chunks = [text[i:i + max_text] for i in range(0, len(text), max_text)]
        pieces.extend((chunk, etx_after_each_record and i == len(chunks) - 1)
                      for i, chunk in enumerate(chunks))
    if pieces:
        pieces[-1] = (pieces[-1][0], True)
    return [AstmFrame((first_frame_number + i) % 8, text, final)
            for i, (text, final) in enumerate(pieces)]


@dataclass(slots=True)
class AstmRecordAssembler:
    """Receiving side of E1381: checks frame numbers and joins frames into record texts.

    ``add`` returns the records a frame completed (without their CR). A repeat of the frame
    just accepted (sent again because our ACK was lost) is ignored, as E1381 §6.3.4 asks of
    the receiver. ``message_complete`` turns True after an ETX frame; the next frame then
    starts a new message, still counting frame numbers on.
    """

    expected_frame_number: int = 1
    message_complete: bool = False
    _pending: str = ""
    _last: AstmFrame | None = None

    def add(self, frame: AstmFrame) -> list[str]:
        if self._last is not None and frame == self._last:
            return []
        if frame.frame_number != self.expected_frame_number:
            raise MalformedFrame(f"frame number {frame.frame_number}, expected "
                                 f"{self.expected_frame_number}", bytes(frame), 1)
        self._last = frame
        self.expected_frame_number = (frame.frame_number + 1) % 8
        self.message_complete = frame.final
        text = self._pending + frame.text
        *records, self._pending = text.split("\r")
        if frame.final and self._pending:
            raise MalformedFrame("message ends inside a record (no CR before ETX)",
                                 bytes(frame), len(frame.text) + 1)
        return records

    def restart(self) -> None:
        """Forget the transfer (after EOT or a link time-out); the next frame number is 1."""
        self.expected_frame_number = 1
        self.message_complete = False
        self._pending = ""
        self._last = None


def records_from_frames(frames: Iterable[AstmFrame]) -> list[str]:
    """Join one transfer's frames (numbered from the first frame's number) into record texts."""
    frames = list(frames)
    if not frames:
        return []
    assembler = AstmRecordAssembler(expected_frame_number=frames[0].frame_number)
    records: list[str] = []
    for frame in frames:
        records += assembler.add(frame)
    if not assembler.message_complete:
        raise MalformedFrame("transfer ends without an ETX frame", bytes(frames[-1]), 0)
    return records


class StreamSplit(NamedTuple):
    """Result of :func:`split_stream`: raw control bytes and frames, unconsumed tail, noise."""

    items: list[bytes]
    rest: bytes
    skipped: bytes


_MAX_FRAME = 1024
_FRAME_BREAK = re.compile(rb"[\x02\x04\x05\x06\x15]")


def split_stream(buffer: bytes) -> StreamSplit:
    """Cut a received E1381 byte stream into single control bytes and whole frames (raw).

    Frames are returned undecoded, so a frame with a bad checksum can be answered with NAK;
    decode them with :meth:`AstmFrame.from_bytes` and control bytes with
    :func:`decode_control`. Bytes that are neither are returned in ``skipped``; an STX or a
    control character before a frame's CR LF abandons the earlier partial frame (its bytes
    go to ``skipped``). Nothing is raised.
    """
    buf = bytes(buffer)
    items: list[bytes] = []
    skipped = bytearray()
    i, n = 0, len(buf)
    while i < n:
        b = buf[i]
        if b in AstmControl._value2member_map_:
            items.append(buf[i:i + 1])
            i += 1
            continue
        if b != STX:
            skipped.append(b)
            i += 1
            continue
        end = buf.find(b"\r\n", i + 1)
        interrupt = _FRAME_BREAK.search(buf, i + 1, n if end < 0 else end)
        if interrupt is not None:  # text never holds these (§6.3.7): the frame was abandoned
            skipped += buf[i:interrupt.start()]
            i = interrupt.start()
            continue
        if end < 0:
            if n - i > _MAX_FRAME:
                skipped.append(b)
                i += 1
                continue
            break
        items.append(buf[i:end + 2])
        i = end + 2
    return StreamSplit(items, buf[i:], bytes(skipped))


# --- E1394 records --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AstmDelimiters:
    """The four delimiters a header defines (E1394 §7.1.2)."""

    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def problem(self) -> str | None:
        chars = (self.field, self.repeat, self.component, self.escape)
        if any(len(c) != 1 for c in chars):
            return "each delimiter is one character"
        if len(set(chars)) != 4:
            return "delimiters must differ"
        if any(not 0x21 <= ord(c) <= 0x7E or c.isalnum() for c in chars):
            return "delimiters must be printable, non-alphanumeric ASCII"
        return None

    def definition(self) -> str:
        return self.field + self.repeat + self.component + self.escape

    def unescape(self, value: str) -> str:
        """Undo the E1394 escape sequences &F& &S& &R& &E& (others are left as they are)."""
        e = self.escape
        table = {f"{e}F{e}": self.field, f"{e}S{e}": self.component, f"{e}R{e}": self.repeat,
                 f"{e}E{e}": e}
        return re.sub(re.escape(e) + "[FSRE]" + re.escape(e), lambda m: table[m.group(0)],
                      value)


DEFAULT_DELIMITERS = AstmDelimiters()


class AstmTerminationCode(Enum):
    """Terminator record codes (E1394 §13.1.3)."""

    NORMAL = "N"
    SENDER_ABORTED = "T"
    RECEIVER_ABORTED = "R"
    UNKNOWN_SYSTEM_ERROR = "E"
    QUERY_ERROR = "Q"
    NO_INFORMATION = "I"
    LAST_REQUEST_PROCESSED = "F"


class ReferenceMethod(Enum):
    """2nd component of a Contour result's units: what the value is calibrated to."""

    PLASMA = "P"
    WHOLE_BLOOD = "B"


class MealMarker(Enum):
    """Meal markers in a Contour result's flags field (F and D UNCONFIRMED)."""

    BEFORE_MEAL = "B"
    AFTER_MEAL = "A"
    FASTING = "F"
    DONT_FEEL_RIGHT = "D"


def _record_text(data: bytes) -> str:
    data = bytes(data)
    for i, b in enumerate(data):
        if b in RESTRICTED or b == CR:
            raise MalformedFrame(f"control character 0x{b:02X} inside a record", data, i)
    return data.decode("latin-1")


def _sequence(value: str, data: bytes, offset: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise MalformedFrame(f"sequence number {value!r} is not a decimal number", data, offset)
    if value != str(int(value)):
        raise MalformedFrame(f"sequence number {value!r} has leading zeros", data, offset)
    return int(value)


def parse_timestamp(value: str) -> dt.datetime:
    """An E1394 ``YYYYMMDDHHMM[SS]`` date-time as a naive (device-local) datetime."""
    raw = value.encode("latin-1", "replace")
    if not value.isascii() or not value.isdigit() or len(value) not in (12, 14):
        raise ValueOutOfRange(f"timestamp {value!r} is not YYYYMMDDHHMM[SS]", raw, 0)
    parts = [int(value[i:i + 2]) for i in range(4, len(value), 2)] + [0]
    try:
        return dt.datetime(int(value[:4]), parts[0], parts[1], parts[2], parts[3], parts[4])
    except ValueError as exc:
        raise ValueOutOfRange(f"timestamp {value!r} does not exist: {exc}", raw, 0) from None


def format_timestamp(value: dt.datetime, *, seconds: bool = False) -> str:
    return value.strftime("%Y%m%d%H%M%S" if seconds else "%Y%m%d%H%M")


class _FieldRecord:
    """Shared field handling: named optional fields (``None`` = not sent) plus ``extra``."""

    __slots__ = ()

    RECORD_TYPE: ClassVar[str]
    NAMED: ClassVar[tuple[str, ...]]
    extra: tuple[str, ...]

    @classmethod
    def _split(cls, data: bytes, delimiters: AstmDelimiters) -> tuple[str, list[str]]:
        text = _record_text(data)
        fields = text.split(delimiters.field)
        if fields[0] != cls.RECORD_TYPE:
            raise MalformedFrame(f"record type {fields[0][:1]!r} is not {cls.RECORD_TYPE!r}",
                                 bytes(data), 0)
        return text, fields[1:]

    @classmethod
    def _named(cls, values: list[str]) -> tuple[dict[str, str | None], tuple[str, ...]]:
        named: dict[str, str | None] = {
            name: values[i] if i < len(values) else None for i, name in enumerate(cls.NAMED)}
        return named, tuple(values[len(cls.NAMED):])

    def _values(self) -> list[str]:
        values: list[str] = []
        missing = None
        for name in self.NAMED:
            value = getattr(self, name)
            if value is None:
                missing = missing or name
                continue
            if missing is not None:
                raise ValueOutOfRange(f"field {name} is sent but earlier field {missing} is not")
            values.append(value)
        extra = self.extra
        if extra and missing is not None:
            raise ValueOutOfRange(f"extra fields are sent but field {missing} is not")
        return values + list(extra)

    @staticmethod
    def _join(head: list[str], values: list[str], delimiters: AstmDelimiters) -> bytes:
        for value in values:
            if delimiters.field in value:
                raise ValueOutOfRange(f"field value {value!r} contains the field delimiter")
        text = delimiters.field.join(head + values)
        raw = _check_text(text, "record")
        if b"\r" in raw:
            raise ValueOutOfRange("a record must not contain CR")
        return raw


@dataclass(frozen=True, slots=True)
class AstmHeader(_FieldRecord):
    """Message header record ``H`` (E1394 §7.1); it defines the delimiters of the message."""

    delimiters: AstmDelimiters = DEFAULT_DELIMITERS
    message_control_id: str | None = None  # §7.1.3
    access_password: str | None = None  # §7.1.4
    sender: str | None = None  # §7.1.5 sender name or ID
    sender_address: str | None = None  # §7.1.6 (Contour: meter settings)
    reserved: str | None = None  # §7.1.7 (Contour: number of results, UNCONFIRMED)
    sender_phone: str | None = None  # §7.1.8
    sender_characteristics: str | None = None  # §7.1.9
    receiver_id: str | None = None  # §7.1.10
    comment: str | None = None  # §7.1.11
    processing_id: str | None = None  # §7.1.12
    version: str | None = None  # §7.1.13
    timestamp: str | None = None  # §7.1.14 YYYYMMDDHHMM[SS]
    extra: tuple[str, ...] = ()

    RECORD_TYPE: ClassVar[str] = "H"
    NAMED: ClassVar[tuple[str, ...]] = (
        "message_control_id", "access_password", "sender", "sender_address", "reserved",
        "sender_phone", "sender_characteristics", "receiver_id", "comment", "processing_id",
        "version", "timestamp")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        text = _record_text(data)
        if not text.startswith("H"):
            raise MalformedFrame("header record does not start with H", data, 0)
        if len(text) < 5:
            raise TruncatedFrame("header needs H and four delimiter characters", data,
                                 len(text))
        delimiters = AstmDelimiters(text[1], text[2], text[3], text[4])
        problem = delimiters.problem()
        if problem:
            raise MalformedFrame(f"delimiter definition: {problem}", data, 1)
        if len(text) == 5:
            return cls(delimiters)
        if text[5] != delimiters.field:
            raise MalformedFrame("delimiter definition is not followed by a field delimiter",
                                 data, 5)
        named, extra = cls._named(text[6:].split(delimiters.field))
        return cls(delimiters, **named, extra=extra)

    def __bytes__(self) -> bytes:
        problem = self.delimiters.problem()
        if problem:
            raise ValueOutOfRange(f"delimiter definition: {problem}")
        values = self._values()
        for value in values:
            if self.delimiters.field in value:
                raise ValueOutOfRange(f"field value {value!r} contains the field delimiter")
        head = "H" + self.delimiters.definition()
        text = self.delimiters.field.join([head, *values])
        raw = _check_text(text, "record")
        if b"\r" in raw:
            raise ValueOutOfRange("a record must not contain CR")
        return raw

    # --- typed accessors ---

    def sender_components(self) -> list[str]:
        """Components of the sender field (Contour: product code, versions, serial, SKU)."""
        return [] if self.sender is None else self.sender.split(self.delimiters.component)

    @property
    def product_code(self) -> str | None:
        parts = self.sender_components()
        return parts[0] if parts else None

    @property
    def software_versions(self) -> list[str]:
        parts = self.sender_components()
        return parts[1].split(self.delimiters.repeat) if len(parts) > 1 else []

    @property
    def serial_number(self) -> str | None:
        parts = self.sender_components()
        return parts[2] if len(parts) > 2 else None

    def meter_settings(self) -> dict[str, str]:
        """Contour ``KEY=value`` settings in the sender-address field."""
        settings: dict[str, str] = {}
        for part in (self.sender_address or "").split(self.delimiters.component):
            key, sep, value = part.partition("=")
            if sep:
                settings[key] = value
        return settings

    @property
    def device_time(self) -> dt.datetime | None:
        return parse_timestamp(self.timestamp) if self.timestamp else None


@dataclass(frozen=True, slots=True)
class AstmPatient(_FieldRecord):
    """Patient information record ``P`` (E1394 §8.1); fields from §8.1.10 on are in ``extra``."""

    sequence: int = 1
    practice_patient_id: str | None = None  # §8.1.3
    laboratory_patient_id: str | None = None  # §8.1.4
    patient_id_3: str | None = None  # §8.1.5
    patient_name: str | None = None  # §8.1.6
    mothers_maiden_name: str | None = None  # §8.1.7
    birthdate: str | None = None  # §8.1.8
    sex: str | None = None  # §8.1.9
    extra: tuple[str, ...] = ()

    RECORD_TYPE: ClassVar[str] = "P"
    NAMED: ClassVar[tuple[str, ...]] = (
        "practice_patient_id", "laboratory_patient_id", "patient_id_3", "patient_name",
        "mothers_maiden_name", "birthdate", "sex")

    @classmethod
    def from_bytes(cls, data: bytes, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> Self:
        data = bytes(data)
        _text, values = cls._split(data, delimiters)
        if not values:
            raise TruncatedFrame("patient record needs a sequence number", data, len(data))
        sequence = _sequence(values[0], data, 2)
        named, extra = cls._named(values[1:])
        return cls(sequence, **named, extra=extra)

    def to_bytes(self, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> bytes:
        return self._join([self.RECORD_TYPE, _seq_text(self.sequence)], self._values(),
                          delimiters)

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _seq_text(sequence: int) -> str:
    if not 0 <= sequence <= 999_999_999:
        raise ValueOutOfRange(f"sequence number {sequence} outside 0…999999999")
    return str(sequence)


@dataclass(frozen=True, slots=True)
class AstmResult(_FieldRecord):
    """Result record ``R`` (E1394 §10.1); fields from §10.1.10 on are in ``extra``."""

    sequence: int = 1
    test_id: str | None = None  # §10.1.3 universal test ID, Contour ^^^Glucose
    value: str | None = None  # §10.1.4
    units: str | None = None  # §10.1.5, Contour mg/dL^P
    reference_ranges: str | None = None  # §10.1.6
    abnormal_flags: str | None = None  # §10.1.7, Contour markers such as B/M0/T1 or >
    nature_of_abnormality: str | None = None  # §10.1.8
    status: str | None = None  # §10.1.9 (Contour: test time)
    extra: tuple[str, ...] = ()

    RECORD_TYPE: ClassVar[str] = "R"
    NAMED: ClassVar[tuple[str, ...]] = (
        "test_id", "value", "units", "reference_ranges", "abnormal_flags",
        "nature_of_abnormality", "status")

    @classmethod
    def from_bytes(cls, data: bytes, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> Self:
        data = bytes(data)
        _text, values = cls._split(data, delimiters)
        if not values:
            raise TruncatedFrame("result record needs a sequence number", data, len(data))
        sequence = _sequence(values[0], data, 2)
        named, extra = cls._named(values[1:])
        return cls(sequence, **named, extra=extra)

    def to_bytes(self, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> bytes:
        return self._join([self.RECORD_TYPE, _seq_text(self.sequence)], self._values(),
                          delimiters)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    # --- typed accessors (default delimiters, as Contour meters use) ---

    @property
    def analyte(self) -> str:
        """Manufacturer's local test code: ``Glucose``, ``Insulin``, ``Carb`` on Contour."""
        parts = (self.test_id or "").split(DEFAULT_DELIMITERS.component)
        return parts[3] if len(parts) > 3 else parts[-1]

    @property
    def unit(self) -> str:
        return (self.units or "").split(DEFAULT_DELIMITERS.component)[0]

    @property
    def reference_method(self) -> ReferenceMethod | str | None:
        parts = (self.units or "").split(DEFAULT_DELIMITERS.component)
        if len(parts) < 2 or not parts[1]:
            return None
        code = parts[1]
        return ReferenceMethod(code) if code in ReferenceMethod._value2member_map_ else code

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(self.abnormal_flags.split("/")) if self.abnormal_flags else ()

    @property
    def is_high(self) -> bool:
        """Above the meter's measuring range (shown HI); the value is then the limit."""
        return any(m.strip() == ">" for m in self.markers)

    @property
    def is_low(self) -> bool:
        """Below the meter's measuring range (shown LO); the value is then the limit."""
        return any(m.strip() == "<" for m in self.markers)

    @property
    def is_control(self) -> bool:
        return "C" in self.markers

    @property
    def meal(self) -> MealMarker | None:
        for marker in self.markers:
            if marker in MealMarker._value2member_map_:
                return MealMarker(marker)
        return None

    @property
    def glucose_mg_dl(self) -> float | None:
        """The value in mg/dL for a glucose result in mg/dL or mmol/L, else ``None``."""
        if self.analyte != "Glucose" or not self.value:
            return None
        try:
            number = float(self.value)
        except ValueError:
            raise ValueOutOfRange(f"glucose value {self.value!r} is not a number",
                                  bytes(self), None) from None
        if self.unit == "mg/dL":
            return number
        if self.unit == "mmol/L":
            return mmol_l_to_mg_dl(number)
        return None

    @property
    def test_time(self) -> dt.datetime | None:
        """E1394 §10.1.13 completion time if sent, else the Contour time in field 9."""
        if len(self.extra) > 3 and self.extra[3]:
            return parse_timestamp(self.extra[3])
        if self.status and self.status.isdigit():
            return parse_timestamp(self.status)
        return None


@dataclass(frozen=True, slots=True)
class AstmTerminator(_FieldRecord):
    """Message terminator record ``L`` (E1394 §13.1)."""

    sequence: int = 1
    termination_code: str | None = None  # §13.1.3
    extra: tuple[str, ...] = ()

    RECORD_TYPE: ClassVar[str] = "L"
    NAMED: ClassVar[tuple[str, ...]] = ("termination_code",)

    @classmethod
    def from_bytes(cls, data: bytes, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> Self:
        data = bytes(data)
        _text, values = cls._split(data, delimiters)
        if not values:
            raise TruncatedFrame("terminator record needs a sequence number", data, len(data))
        sequence = _sequence(values[0], data, 2)
        named, extra = cls._named(values[1:])
        return cls(sequence, **named, extra=extra)

    def to_bytes(self, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> bytes:
        return self._join([self.RECORD_TYPE, _seq_text(self.sequence)], self._values(),
                          delimiters)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @property
    def termination(self) -> AstmTerminationCode | str | None:
        """Field 3, or field 4 where Contour meters put it (``L|1||N``)."""
        code = self.termination_code or (self.extra[0] if self.extra else None)
        if not code:
            return None
        return (AstmTerminationCode(code) if code in AstmTerminationCode._value2member_map_
                else code)


AstmRecord = AstmHeader | AstmPatient | AstmResult | AstmTerminator

#: Record types E1394 defines that this module does not decode (order, comment, request
#: information, scientific, manufacturer information).
UNSUPPORTED_RECORD_TYPES = frozenset("OCQSM")


def decode_record(data: bytes, delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> AstmRecord:
    """One record (text without CR), dispatching on its record type character."""
    data = bytes(data)
    if not data:
        raise TruncatedFrame("record needs a record type", data, 0)
    kind = chr(data[0])
    if kind == "H":
        return AstmHeader.from_bytes(data)
    if kind == "P":
        return AstmPatient.from_bytes(data, delimiters)
    if kind == "R":
        return AstmResult.from_bytes(data, delimiters)
    if kind == "L":
        return AstmTerminator.from_bytes(data, delimiters)
    if kind in UNSUPPORTED_RECORD_TYPES:
        raise UnknownOpCode(f"E1394 record type {kind!r} is not supported", data, 0)
    raise UnknownOpCode(f"unknown E1394 record type 0x{data[0]:02X}", data, 0)


def decode_records(texts: Iterable[str | bytes]) -> list[AstmRecord]:
    """Decode a message's records; a header's delimiters apply to the records after it."""
    delimiters = DEFAULT_DELIMITERS
    out: list[AstmRecord] = []
    for text in texts:
        if isinstance(text, str):
            try:
                raw = text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueOutOfRange(f"record {text!r} has characters outside ISO 8859-1"
                                      ) from None
        else:
            raw = bytes(text)
        record = decode_record(raw, delimiters)
        if isinstance(record, AstmHeader):
            delimiters = record.delimiters
        out.append(record)
    return out


def encode_record(record: AstmRecord,
                  delimiters: AstmDelimiters = DEFAULT_DELIMITERS) -> bytes:
    if isinstance(record, AstmHeader):
        return bytes(record)
    return record.to_bytes(delimiters)


def encode_records(records: Sequence[AstmRecord]) -> list[str]:
    """Record texts for :func:`frames_for_records`, using each header's delimiters."""
    delimiters = DEFAULT_DELIMITERS
    texts: list[str] = []
    for record in records:
        if isinstance(record, AstmHeader):
            delimiters = record.delimiters
        texts.append(encode_record(record, delimiters).decode("latin-1"))
    return texts


CODECS = (
    MessageCodec("astm-control", "ASTM E1381 link-control byte (ENQ, ACK, NAK, EOT)",
                 decode_control, encode_control),
    MessageCodec("astm-frame", "ASTM E1381 frame (STX FN text ETB|ETX C1 C2 CR LF)",
                 AstmFrame.from_bytes),
    MessageCodec("astm-record", "ASTM E1394 record (H, P, R, L; text without CR)",
                 decode_record, encode_record),
)
