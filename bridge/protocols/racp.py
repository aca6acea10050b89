"""Record Access Control Point (0x2A52), shared by the Glucose and the CGM Service.

Layout (GLS 1.0 §3.4; the CGM Service uses the same characteristic): ``op code u8``,
``operator u8``, then an operand whose meaning depends on the op code and operator:

* report (1), delete (2), count (4) with operator ≤ (2), ≥ (3) or range (4): a ``filter
  type u8`` and one value (≤, ≥) or two (range, minimum first). GLS defines filter type 0x01
  Sequence Number (u16) and 0x02 User Facing Time (Date Time, 7 bytes); CGMS defines 0x01
  Time Offset (u16 minutes). Hence two message names, ``gls-racp`` and ``cgm-racp``.
* operators All (1), First (5), Last (6) and Null (0): no operand.
* Number of Stored Records Response (5): operator Null, ``u16`` count.
* Response Code (6): operator Null, ``request op code u8``, ``response code u8``.

Decoding is strict (a frame is decoded exactly or refused with a ``ProtocolError``); an op
code outside 1–6 raises ``UnknownOpCode``. A server must not just refuse a bad request but
answer it with the right Response Code, so :func:`check_request` classifies any written
bytes — including ones the strict decoder refuses — into the code a compliant server
indicates, and :meth:`RacpResponse.for_request` builds that indication.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Self

from bridge.errors import ProtocolError, UnknownOpCode, ValueOutOfRange
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.date_time import DateTime
from bridge.protocols.wire import Reader, Writer

RACP_UUID = 0x2A52


class RacpOpCode(IntEnum):
    """Op Code (GLS 1.0 §3.4); 0 and 7–255 are reserved."""

    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_STORED_RECORDS = 4
    NUMBER_OF_STORED_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


#: The op codes a client writes (5 and 6 only ever come from the server).
REQUEST_OP_CODES = frozenset({RacpOpCode.REPORT_STORED_RECORDS,
                              RacpOpCode.DELETE_STORED_RECORDS,
                              RacpOpCode.ABORT_OPERATION,
                              RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS})


class RacpOperator(IntEnum):
    """Operator (GLS 1.0 §3.4); 7–255 are reserved."""

    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL_TO = 2
    GREATER_THAN_OR_EQUAL_TO = 3
    WITHIN_RANGE_OF = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6


#: Operators followed by a filter type and its value(s).
FILTERED_OPERATORS = frozenset({RacpOperator.LESS_THAN_OR_EQUAL_TO,
                                RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                                RacpOperator.WITHIN_RANGE_OF})
#: Operators that select records without an operand.
UNFILTERED_OPERATORS = frozenset({RacpOperator.ALL_RECORDS, RacpOperator.FIRST_RECORD,
                                  RacpOperator.LAST_RECORD})


class RacpResponseCode(IntEnum):
    """Response Code Value (GLS 1.0 §3.4); 0 and 10–255 are reserved."""

    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


class GlsFilterType(IntEnum):
    """GLS filter types (GLS 1.0 §3.4); others are reserved."""

    SEQUENCE_NUMBER = 0x01
    USER_FACING_TIME = 0x02


class CgmFilterType(IntEnum):
    """CGMS filter types (CGMS 1.0.1, Record Access Control Point); others are reserved."""

    TIME_OFFSET = 0x01


class RacpService(Enum):
    """Which service's filter types an operand uses."""

    GLS = "gls"
    CGM = "cgm"

    @property
    def filter_types(self) -> type[GlsFilterType] | type[CgmFilterType]:
        return GlsFilterType if self is RacpService.GLS else CgmFilterType






FilterValue = int | DateTime


def _is_time_filter(filter_type: int, service: RacpService) -> bool:
    return service is RacpService.GLS and filter_type == GlsFilterType.USER_FACING_TIME


def _read_filter_value(r: Reader, filter_type: int, service: RacpService) -> FilterValue:
    if _is_time_filter(filter_type, service):
        return DateTime.read(r)
    # GLS Sequence Number and CGMS Time Offset are both uint16.
    return r.u16("filter value")


@dataclass(frozen=True, slots=True)
class RacpFilter:
    """A filter-type operand: ``minimum`` is set for ≥ and range, ``maximum`` for ≤ and range.

    Values are ``int`` (GLS sequence number, CGMS time offset in minutes) or
    :class:`DateTime` (GLS user facing time). ``raw`` holds the value bytes of a filter type
    the service does not define; min/max are ``None`` then.
    """

    filter_type: GlsFilterType | CgmFilterType | int
    minimum: FilterValue | None = None
    maximum: FilterValue | None = None
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not self.is_defined:
            if self.minimum is not None or self.maximum is not None:
                raise ValueOutOfRange(
                    f"filter type {self.filter_type} is not a GlsFilterType/CgmFilterType "
                    "member; its values can only be kept as raw bytes")
            return
        if self.raw:
            raise ValueOutOfRange("raw bytes are only kept for reserved filter types")
        want_time = self.filter_type is GlsFilterType.USER_FACING_TIME
        for value in (self.minimum, self.maximum):
            if value is not None and isinstance(value, DateTime) != want_time:
                raise ValueOutOfRange(
                    f"{self.filter_type!r} filter takes "
                    + ("a DateTime" if want_time else "an int") + f", not {value!r}")

    @property
    def is_defined(self) -> bool:
        """Whether the filter type is one the service defines (values decoded)."""
        return isinstance(self.filter_type, GlsFilterType | CgmFilterType)

    def write(self, w: Writer) -> None:
        w.u8(int(self.filter_type), "filter type")
        for value in (self.minimum, self.maximum):
            if isinstance(value, DateTime):
                value.write(w)
            elif value is not None:
                w.u16(value, "filter value")
        w.raw(self.raw)


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A request written by the client: report (1), delete (2), abort (3) or count (4).

    ``filter`` is present exactly for the operators ≤, ≥ and range. ``operand`` keeps the
    bytes after an operator the specification reserves (their layout is unknown).
    """

    op_code: RacpOpCode
    operator: RacpOperator | int
    filter: RacpFilter | None = None
    operand: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_code", RacpOpCode(self.op_code))
        if self.op_code not in REQUEST_OP_CODES:
            raise ValueOutOfRange(f"{self.op_code.name} is a response, not a request")
        object.__setattr__(self, "operator", known(RacpOperator, self.operator))
        operator = self.operator
        f = self.filter
        if operator in FILTERED_OPERATORS:
            if f is None:
                raise ValueOutOfRange(f"operator {operator!r} needs a filter")
            if f.is_defined:
                want_min = operator != RacpOperator.LESS_THAN_OR_EQUAL_TO
                want_max = operator != RacpOperator.GREATER_THAN_OR_EQUAL_TO
                if (f.minimum is not None) != want_min or (f.maximum is not None) != want_max:
                    raise ValueOutOfRange(
                        f"operator {operator!r} takes "
                        + ("minimum and maximum" if want_min and want_max
                           else "a minimum" if want_min else "a maximum"))
        elif f is not None:
            raise ValueOutOfRange(f"operator {operator!r} takes no filter")
        if self.operand and isinstance(operator, RacpOperator):
            raise ValueOutOfRange("raw operand bytes are only kept for reserved operators")

    @classmethod
    def read(cls, r: Reader, service: RacpService) -> Self:
        op_code = RacpOpCode(r.u8("op code"))
        operator = r.u8("operator")
        flt: RacpFilter | None = None
        operand = b""
        if operator in FILTERED_OPERATORS:
            filter_type = r.u8("filter type")
            if filter_type in service.filter_types._value2member_map_:
                minimum = maximum = None
                if operator != RacpOperator.LESS_THAN_OR_EQUAL_TO:
                    minimum = _read_filter_value(r, filter_type, service)
                if operator != RacpOperator.GREATER_THAN_OR_EQUAL_TO:
                    maximum = _read_filter_value(r, filter_type, service)
                flt = RacpFilter(known(service.filter_types, filter_type), minimum, maximum)
            else:
                flt = RacpFilter(filter_type, raw=r.rest())
        elif operator not in RacpOperator._value2member_map_:
            operand = r.rest()
        return cls(op_code, operator, flt, operand)

    @classmethod
    def from_bytes(cls, data: bytes, service: RacpService = RacpService.GLS) -> Self:
        r = Reader(data)
        op = r.u8("op code")
        if op not in REQUEST_OP_CODES:
            raise UnknownOpCode(f"RACP op code {op} is not a request", r.data, 0)
        r.offset = 0
        value = cls.read(r, service)
        r.expect_end("RACP operand")
        return value

    def write(self, w: Writer) -> None:
        w.u8(int(self.op_code), "op code").u8(int(self.operator), "operator")
        if self.filter is not None:
            self.filter.write(w)
        w.raw(self.operand)

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return bytes(w)


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    """Number of Stored Records Response (op code 5): ``05 00 <u16 count>``.

    GLS and CGMS both define the count as uint16. ``operator`` is Null per the spec; a
    different value is kept so the frame still round-trips.
    """

    count: int
    operator: RacpOperator | int = RacpOperator.NULL

    def __post_init__(self) -> None:
        object.__setattr__(self, "operator", known(RacpOperator, self.operator))

    @classmethod
    def read(cls, r: Reader) -> Self:
        op = r.u8("op code")
        if op != RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
            raise UnknownOpCode(f"op code {op} is not a number-of-records response",
                                r.data, r.offset - 1)
        operator = r.u8("operator")
        return cls(r.u16("number of records"), operator)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls.read(r)
        r.expect_end("number of stored records response")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, "op code")
                     .u8(int(self.operator), "operator").u16(self.count, "number of records"))


@dataclass(frozen=True, slots=True)
class RacpResponse:
    """Response Code (op code 6): ``06 00 <request op code> <response code>``.

    ``request_op_code`` echoes whatever the client wrote, so it is a plain int when that op
    code was not a defined one (the answer is then OP_CODE_NOT_SUPPORTED).
    """

    request_op_code: RacpOpCode | int
    response_code: RacpResponseCode | int
    operator: RacpOperator | int = RacpOperator.NULL

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_op_code", known(RacpOpCode, self.request_op_code))
        object.__setattr__(self, "response_code", known(RacpResponseCode, self.response_code))
        object.__setattr__(self, "operator", known(RacpOperator, self.operator))

    @classmethod
    def for_request(cls, request: bytes | RacpRequest,
                    response_code: RacpResponseCode | int) -> Self:
        """The indication a server sends for the request it was written (frame or value)."""
        if isinstance(request, RacpRequest):
            return cls(request.op_code, response_code)
        return cls(request[0] if request else 0, response_code)

    @property
    def is_success(self) -> bool:
        return self.response_code == RacpResponseCode.SUCCESS

    @classmethod
    def read(cls, r: Reader) -> Self:
        op = r.u8("op code")
        if op != RacpOpCode.RESPONSE_CODE:
            raise UnknownOpCode(f"op code {op} is not a response code", r.data, r.offset - 1)
        operator = r.u8("operator")
        return cls(r.u8("request op code"), r.u8("response code"), operator)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls.read(r)
        r.expect_end("response code")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(RacpOpCode.RESPONSE_CODE, "op code")
                     .u8(int(self.operator), "operator")
                     .u8(int(self.request_op_code), "request op code")
                     .u8(int(self.response_code), "response code"))


RacpMessage = RacpRequest | RacpNumberOfRecords | RacpResponse


def parse_racp(data: bytes, service: RacpService = RacpService.GLS) -> RacpMessage:
    """Decode any RACP value, choosing the class by op code; reserved op codes raise
    ``UnknownOpCode`` (a server answers them with :func:`check_request` instead)."""
    r = Reader(data)
    op = r.u8("op code")
    r.offset = 0
    value: RacpMessage
    if op == RacpOpCode.RESPONSE_CODE:
        value = RacpResponse.read(r)
    elif op == RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
        value = RacpNumberOfRecords.read(r)
    elif op in REQUEST_OP_CODES:
        value = RacpRequest.read(r, service)
    else:
        raise UnknownOpCode(f"RACP op code {op} is reserved", r.data, 0)
    r.expect_end("RACP value")
    return value


def parse_gls_racp(data: bytes) -> RacpMessage:
    return parse_racp(data, RacpService.GLS)


def parse_cgm_racp(data: bytes) -> RacpMessage:
    return parse_racp(data, RacpService.CGM)


# --------------------------------------------------------------------------------------------
# Server side: which Response Code a request deserves
# --------------------------------------------------------------------------------------------


def _filter_key(value: FilterValue) -> tuple[int, ...]:
    if isinstance(value, DateTime):
        return (value.year, value.month, value.day, value.hours, value.minutes, value.seconds)
    return (value,)


def check_request(
    data: bytes,
    service: RacpService = RacpService.GLS,
    *,
    supported_op_codes: Collection[int] = REQUEST_OP_CODES,
    supported_operators: Collection[int] = FILTERED_OPERATORS | UNFILTERED_OPERATORS,
    supported_filter_types: Collection[int] | None = None,
) -> RacpResponseCode | None:
    """The Response Code a compliant server answers a written request with, or ``None``
    when the request is well-formed and supported, so the server should carry it out (and
    then answer SUCCESS, NO_RECORDS_FOUND, ABORT_UNSUCCESSFUL or PROCEDURE_NOT_COMPLETED
    itself, which depend on its records and state).

    Pure: looks only at the bytes and the server's capabilities. ``supported_filter_types``
    defaults to every filter type the service defines. Checks, in this order (GLS 1.0
    §3.4, Response Code descriptions):

    1. no op code, a reserved one, a server-to-client one (5, 6) or one the server does
       not support → OP_CODE_NOT_SUPPORTED;
    2. no operator byte, Null for report/delete/count, or not Null for abort →
       INVALID_OPERATOR;
    3. a reserved operator (7–255) or one the server does not support →
       OPERATOR_NOT_SUPPORTED;
    4. an operand after abort, All, First or Last, or a missing filter type → INVALID_OPERAND;
    5. a reserved or unsupported filter type → OPERAND_NOT_SUPPORTED;
    6. filter values of the wrong length, an invalid Date Time, or a range whose minimum is
       above its maximum → INVALID_OPERAND.

    The Response Code table does not say which code a reserved operator deserves; "not
    supported" is chosen since no server can support an undefined operator. Conditions
    answered with an ATT error rather than a Response Code (a procedure already in progress,
    indications not enabled) depend on server state and are left to the server.
    """
    if not data or data[0] not in REQUEST_OP_CODES or data[0] not in supported_op_codes:
        return RacpResponseCode.OP_CODE_NOT_SUPPORTED
    op_code = data[0]
    if len(data) < 2:
        return RacpResponseCode.INVALID_OPERATOR
    operator = data[1]
    operand = data[2:]
    if op_code == RacpOpCode.ABORT_OPERATION:
        if operator != RacpOperator.NULL:
            return RacpResponseCode.INVALID_OPERATOR
        return RacpResponseCode.INVALID_OPERAND if operand else None
    if operator == RacpOperator.NULL:
        return RacpResponseCode.INVALID_OPERATOR
    if operator not in RacpOperator._value2member_map_ or operator not in supported_operators:
        return RacpResponseCode.OPERATOR_NOT_SUPPORTED
    if operator in UNFILTERED_OPERATORS:
        return RacpResponseCode.INVALID_OPERAND if operand else None
    if not operand:
        return RacpResponseCode.INVALID_OPERAND
    filter_type = operand[0]
    allowed = (service.filter_types._value2member_map_ if supported_filter_types is None
               else supported_filter_types)
    if (filter_type not in service.filter_types._value2member_map_
            or filter_type not in allowed):
        return RacpResponseCode.OPERAND_NOT_SUPPORTED
    try:
        request = RacpRequest.from_bytes(data, service)
    except ProtocolError:
        return RacpResponseCode.INVALID_OPERAND
    f = request.filter
    if (f is not None and f.minimum is not None and f.maximum is not None
            and _filter_key(f.minimum) > _filter_key(f.maximum)):
        return RacpResponseCode.INVALID_OPERAND
    return None


# --------------------------------------------------------------------------------------------
# Requests a collector sends
# --------------------------------------------------------------------------------------------


def report_all() -> RacpRequest:
    """``01 01``: send every stored record."""
    return RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS)


def report_from_sequence(sequence_number: int) -> RacpRequest:
    """``01 03 01 <u16>``: GLS records with sequence number ≥ N (incremental sync)."""
    return RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                       RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=sequence_number))


def report_from_time_offset(time_offset: int) -> RacpRequest:
    """``01 03 01 <u16>``: CGM records with time offset ≥ N minutes (incremental sync)."""
    return RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                       RacpFilter(CgmFilterType.TIME_OFFSET, minimum=time_offset))


def report_last() -> RacpRequest:
    """``01 06``: only the most recent record."""
    return RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.LAST_RECORD)


def count_all() -> RacpRequest:
    """``04 01``: ask for the number of stored records."""
    return RacpRequest(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.ALL_RECORDS)


def count_from_sequence(sequence_number: int) -> RacpRequest:
    """``04 03 01 <u16>``: number of GLS records with sequence number ≥ N."""
    return RacpRequest(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
                       RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                       RacpFilter(GlsFilterType.SEQUENCE_NUMBER, minimum=sequence_number))


def abort() -> RacpRequest:
    """``03 00``: stop the report in progress."""
    return RacpRequest(RacpOpCode.ABORT_OPERATION, RacpOperator.NULL)


CODECS = (
    MessageCodec("gls-racp", "Record Access Control Point (0x2A52), GLS filter types",
                 parse_gls_racp),
    MessageCodec("cgm-racp", "Record Access Control Point (0x2A52), CGMS filter types",
                 parse_cgm_racp),
)
