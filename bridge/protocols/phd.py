"""IEEE 11073-20601 optimized exchange protocol: APDUs in MDER, for personal health devices.

An APDU is a CHOICE (IEEE 11073-20601 Annex A): INT-U16 tag, INT-U16 length, content.
Association uses AARQ/AARE (0xE200/0xE300), release RLRQ/RLRE (0xE400/0xE500), abort ABRT
(0xE600); everything else travels in PRST (0xE700), an OCTET STRING holding a DataApdu
(invoke-id, then a CHOICE of remote operation invoke/result/error/reject, Annex A).

The decoder understands what a glucose meter agent (IEEE 11073-10417) and its manager
exchange: association, MDS GET, configuration reports, fixed/variable scan reports and release.
Other event types and action arguments are kept as raw bytes, so every frame still
re-encodes byte-exactly. Every nested length is checked against its content
(see :mod:`bridge.protocols.phd_attributes`).

The last part of the module is a small, pure glucose-meter layer: the objects implied by the
standard configuration 1700 (0x06A4), an example extended configuration, and
:func:`decode_fixed_observations`, which turns a fixed scan report into typed readings using
each object's Attribute-Value-Map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from functools import partial
from typing import Any, ClassVar, Self

from bridge.errors import MalformedFrame, TruncatedFrame, UnknownOpCode, ValueOutOfRange
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.layout import Field, Fields, LaidOut, Part, Uint, read_fields, write_fields
from bridge.protocols.mdc import (
    ActionCode,
    AttrId,
    Dim,
    NotiCode,
    ObjClass,
    Partition,
    PhdDm,
    Scada,
)
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.phd_attributes import (
    AbsoluteTime,
    AttributeList,
    AttributeValue,
    AttrValMap,
    AttrValMapEntry,
    Ava,
    MetricSpecSmall,
    TypeCode,
    decode_attribute,
    encode_attribute,
    fixed_size,
    mder_reader,
    mder_writer,
    read_any,
    read_octet_string,
    read_sequence,
    within,
    write_any,
    write_octet_string,
    write_sequence,
)
from bridge.protocols.wire import Reader, Writer

# ------------------------------------------------------------------------------------------------
# Codes (IEEE 11073-20601 Annex A)
# ------------------------------------------------------------------------------------------------


class ApduType(IntEnum):
    """The APDU CHOICE tags (Annex A)."""

    AARQ = 0xE200
    AARE = 0xE300
    RLRQ = 0xE400
    RLRE = 0xE500
    ABRT = 0xE600
    PRST = 0xE700


class AssociationVersion(IntFlag):
    """AssociationVersion BITS-32 (Annex A); ASN.1 bit 0 is the most significant bit."""

    ASSOC_VERSION1 = 0x80000000


class DataProtoId(IntEnum):
    """DataProtoId (Annex A)."""

    DATA_PROTO_ID_EMPTY = 0
    DATA_PROTO_ID_20601 = 20601  # 0x5079
    DATA_PROTO_ID_EXTERNAL = 65535


class ProtocolVersion(IntFlag):
    """ProtocolVersion BITS-32 (Annex A)."""

    PROTOCOL_VERSION1 = 0x80000000
    PROTOCOL_VERSION2 = 0x40000000
    PROTOCOL_VERSION3 = 0x20000000


class EncodingRules(IntFlag):
    """EncodingRules BITS-16 (Annex A): MDER is mandatory, XER and PER optional."""

    MDER = 0x8000
    XER = 0x4000
    PER = 0x2000


class NomenclatureVersion(IntFlag):
    NOM_VERSION1 = 0x80000000


class FunctionalUnits(IntFlag):
    FUN_UNITS_UNIDIRECTIONAL = 0x80000000
    FUN_UNITS_HAVETESTCAP = 0x40000000
    FUN_UNITS_CREATETESTASSOC = 0x20000000


class SystemType(IntFlag):
    SYS_TYPE_MANAGER = 0x80000000
    SYS_TYPE_AGENT = 0x00800000


class DataReqModeFlags(IntFlag):
    """DataReqModeFlags BITS-16 (Annex A)."""

    DATA_REQ_SUPP_STOP = 0x8000
    DATA_REQ_SUPP_SCOPE_ALL = 0x0800
    DATA_REQ_SUPP_SCOPE_CLASS = 0x0400
    DATA_REQ_SUPP_SCOPE_HANDLE = 0x0200
    DATA_REQ_SUPP_MODE_SINGLE_RSP = 0x0080
    DATA_REQ_SUPP_MODE_TIME_PERIOD = 0x0040
    DATA_REQ_SUPP_MODE_TIME_NO_LIMIT = 0x0020
    DATA_REQ_SUPP_PERSON_ID = 0x0010
    DATA_REQ_SUPP_INIT_AGENT = 0x0001


class AssociateResult(IntEnum):
    """AARE result (Annex A)."""

    ACCEPTED = 0
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2
    ACCEPTED_UNKNOWN_CONFIG = 3
    REJECTED_NO_COMMON_PROTOCOL = 4
    REJECTED_NO_COMMON_PARAMETER = 5
    REJECTED_UNKNOWN = 6
    REJECTED_UNAUTHORIZED = 7
    REJECTED_UNSUPPORTED_ASSOC_VERSION = 8


class ReleaseRequestReason(IntEnum):
    NORMAL = 0
    NO_MORE_CONFIGURATIONS = 1
    CONFIGURATION_CHANGED = 2


class ReleaseResponseReason(IntEnum):
    NORMAL = 0


class AbortReason(IntEnum):
    UNDEFINED = 0
    BUFFER_OVERFLOW = 1
    RESPONSE_TIMEOUT = 2
    CONFIGURATION_TIMEOUT = 3


class DataApduChoice(IntEnum):
    """The DataApdu message CHOICE tags (Annex A): invoke 0x01xx, result 0x02xx."""

    ROIV_CMIP_EVENT_REPORT = 0x0100
    ROIV_CMIP_CONFIRMED_EVENT_REPORT = 0x0101
    ROIV_CMIP_GET = 0x0103
    ROIV_CMIP_SET = 0x0104
    ROIV_CMIP_CONFIRMED_SET = 0x0105
    ROIV_CMIP_ACTION = 0x0106
    ROIV_CMIP_CONFIRMED_ACTION = 0x0107
    RORS_CMIP_CONFIRMED_EVENT_REPORT = 0x0201
    RORS_CMIP_GET = 0x0203
    RORS_CMIP_CONFIRMED_SET = 0x0205
    RORS_CMIP_CONFIRMED_ACTION = 0x0207
    ROER = 0x0300
    RORJ = 0x0400


class ConfigResult(IntEnum):
    """ConfigReportRsp.config-result (Annex A)."""

    ACCEPTED_CONFIG = 0
    UNSUPPORTED_CONFIG = 1
    STANDARD_CONFIG_UNKNOWN = 2


class ErrorValue(IntEnum):
    """ErrorResult.error-value of a ROER (Annex A)."""

    NO_SUCH_OBJECT_INSTANCE = 1
    ACCESS_DENIED = 2
    NO_SUCH_ACTION = 9
    INVALID_OBJECT_INSTANCE = 17
    PROTOCOL_VIOLATION = 23
    NOT_ALLOWED_BY_OBJECT = 24
    ACTION_TIMED_OUT = 25
    ACTION_ABORTED = 26


class RorjProblem(IntEnum):
    """RejectResult.problem of a RORJ (Annex A)."""

    UNRECOGNIZED_APDU = 0
    BADLY_STRUCTURED_APDU = 2
    UNRECOGNIZED_OPERATION = 101
    RESOURCE_LIMITATION = 103
    UNEXPECTED_ERROR = 303


class ModifyOperator(IntEnum):
    """AttributeModEntry.modify-operator of a SET (Annex A)."""

    REPLACE = 0
    ADD_VALUES = 1
    REMOVE_VALUES = 2
    SET_TO_DEFAULT = 3


# dev-config-id ranges (IEEE 11073-20601 Annex A, ConfigId) and the -10417 standard id.
MANAGER_CONFIG_RESPONSE = 0x0000
STANDARD_CONFIG_START = 0x0001
STANDARD_CONFIG_END = 0x3FFF
EXTENDED_CONFIG_START = 0x4000
EXTENDED_CONFIG_END = 0x7FFF
GLUCOSE_STANDARD_CONFIG_ID = 0x06A4  # 1700, IEEE 11073-10417
# data-req-id of reports the agent sends on its own initiative (Annex A).
DATA_REQ_ID_AGENT_INITIATED = 0xF000
MDS_HANDLE = 0


# ------------------------------------------------------------------------------------------------
# Field kinds of MDER (Annex F), named in messages by their ASN.1 names (Annex A)
# ------------------------------------------------------------------------------------------------


def _asn1(attr: str) -> str:
    return attr.replace("_", "-")


def _uint(attr: str, size: int, codes: type[IntEnum] | type[IntFlag] | None = None) -> Uint:
    """INT-U8/U16/U32, or an enumeration or BITS field of that size."""
    return Uint(attr, size, codes, what=_asn1(attr))


class _OctetString(Field):
    """OCTET STRING: INT-U16 length, then the bytes."""

    __slots__ = ()

    def __init__(self, attr: str) -> None:
        super().__init__(attr, what=_asn1(attr))

    def read(self, r: Reader) -> Any:
        return read_octet_string(r, self.what)

    def write(self, w: Writer, value: Any) -> None:
        write_octet_string(w, value, self.what)


class _Any(Part):
    """ANY DEFINED BY / OCTET STRING holding one value: INT-U16 length, then the value."""

    __slots__ = ()

    def read(self, r: Reader) -> Any:
        return read_any(r, self.what, self.parse)

    def write(self, w: Writer, value: Any) -> None:
        write_any(w, value.write, self.what)


def _write_item(w: Writer, item: Any) -> None:
    item.write(w)


class _SequenceOf(Field):
    """SEQUENCE OF: INT-U16 count, INT-U16 length, then the elements."""

    __slots__ = ("read_item", "write_item")

    def __init__(self, attr: str, read_item: Callable[[Reader], Any],
                 write_item: Callable[[Writer, Any], None] = _write_item) -> None:
        super().__init__(attr, what=_asn1(attr))
        self.read_item = read_item
        self.write_item = write_item

    def read(self, r: Reader) -> Any:
        return read_sequence(r, self.what, self.read_item)

    def write(self, w: Writer, value: Any) -> None:
        write_sequence(w, value, self.write_item, self.what)


def _attributes(attr: str) -> Part:
    """An AttributeList."""
    return Part(attr, partial(AttributeList.read, what=_asn1(attr)))


_OBJ_HANDLE = _uint("obj_handle", 2)
_SCAN_REPORT_HEAD: Fields = (_uint("data_req_id", 2), _uint("scan_report_no", 2))


# ------------------------------------------------------------------------------------------------
# Association (Annex A)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataReqModeCapab(LaidOut):
    data_req_mode_flags: DataReqModeFlags
    data_req_init_agent_count: int
    data_req_init_manager_count: int

    FIELDS: ClassVar[Fields] = (_uint("data_req_mode_flags", 2, DataReqModeFlags),
                                _uint("data_req_init_agent_count", 1),
                                _uint("data_req_init_manager_count", 1))


@dataclass(frozen=True, slots=True)
class PhdAssociationInformation(LaidOut):
    """The data-proto-info of DataProto 20601 (Annex A)."""

    protocol_version: ProtocolVersion
    encoding_rules: EncodingRules
    nomenclature_version: NomenclatureVersion
    functional_units: FunctionalUnits
    system_type: SystemType
    system_id: bytes
    dev_config_id: int
    data_req_mode_capab: DataReqModeCapab
    option_list: AttributeList = field(default_factory=AttributeList)

    FIELDS: ClassVar[Fields] = (
        _uint("protocol_version", 4, ProtocolVersion), _uint("encoding_rules", 2, EncodingRules),
        _uint("nomenclature_version", 4, NomenclatureVersion),
        _uint("functional_units", 4, FunctionalUnits), _uint("system_type", 4, SystemType),
        _OctetString("system_id"), _uint("dev_config_id", 2),
        Part("data_req_mode_capab", DataReqModeCapab.read), _attributes("option_list"))

    @classmethod
    def agent(cls, system_id: bytes, dev_config_id: int, *,
              data_req_mode_capab: DataReqModeCapab | None = None) -> Self:
        """What an agent proposes: MDER, version 1, agent-initiated data (IEEE 11073-10417)."""
        capab = data_req_mode_capab or DataReqModeCapab(
            DataReqModeFlags.DATA_REQ_SUPP_INIT_AGENT, 1, 0)
        return cls(ProtocolVersion.PROTOCOL_VERSION1, EncodingRules.MDER,
                   NomenclatureVersion.NOM_VERSION1, FunctionalUnits(0),
                   SystemType.SYS_TYPE_AGENT, system_id, dev_config_id, capab)

    @classmethod
    def manager(cls, system_id: bytes) -> Self:
        """What a manager answers in an AARE: dev-config-id is manager-config-response (0)."""
        return cls(ProtocolVersion.PROTOCOL_VERSION1, EncodingRules.MDER,
                   NomenclatureVersion.NOM_VERSION1, FunctionalUnits(0),
                   SystemType.SYS_TYPE_MANAGER, system_id, MANAGER_CONFIG_RESPONSE,
                   DataReqModeCapab(DataReqModeFlags(0), 0, 0))


@dataclass(frozen=True, slots=True)
class DataProto:
    """DataProto ::= SEQUENCE { data-proto-id, data-proto-info ANY DEFINED BY data-proto-id }.

    The info of protocol 20601 is decoded; any other protocol's info is kept as raw bytes.
    """

    data_proto_id: DataProtoId | int
    data_proto_info: PhdAssociationInformation | bytes

    def __post_init__(self) -> None:
        is_phd = self.data_proto_id == DataProtoId.DATA_PROTO_ID_20601
        if is_phd != isinstance(self.data_proto_info, PhdAssociationInformation):
            raise ValueOutOfRange("data-proto-id 20601 goes with PhdAssociationInformation "
                                  "and only with it")

    @classmethod
    def read(cls, r: Reader) -> Self:
        proto_id = r.u16("data-proto-id")
        info: PhdAssociationInformation | bytes
        if proto_id == DataProtoId.DATA_PROTO_ID_20601:
            info = read_any(r, "data-proto-info", PhdAssociationInformation.read)
        else:
            info = read_octet_string(r, "data-proto-info")
        return cls(known(DataProtoId, proto_id), info)

    def write(self, w: Writer) -> None:
        w.u16(self.data_proto_id, "data-proto-id")
        info = self.data_proto_info
        if isinstance(info, PhdAssociationInformation):
            write_any(w, info.write, "data-proto-info")
        else:
            write_octet_string(w, info, "data-proto-info")


class _Apdu:
    """Shared framing of the APDU CHOICE: tag, length, content (Annex A); the content is
    ``FIELDS`` (see :mod:`bridge.protocols.layout`)."""

    __slots__ = ()
    TAG: ClassVar[ApduType]
    FIELDS: ClassVar[Fields] = ()

    @classmethod
    def read_content(cls, r: Reader) -> Self:
        return cls(**read_fields(r, cls.FIELDS))

    def write_content(self, w: Writer) -> None:
        write_fields(w, self, self.FIELDS)

    def __bytes__(self) -> bytes:
        w = mder_writer()
        w.u16(self.TAG, "APDU choice")
        write_any(w, self.write_content, "APDU")
        return bytes(w)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        apdu = decode_apdu(data)
        if not isinstance(apdu, cls):
            raise UnknownOpCode(
                f"expected a {cls.__name__}, got APDU choice 0x{apdu.TAG:04X}", data, 0)
        return apdu


@dataclass(frozen=True, slots=True)
class AarqApdu(_Apdu):
    """Association request (Annex A), sent by the agent."""

    assoc_version: AssociationVersion
    data_proto_list: tuple[DataProto, ...]
    TAG: ClassVar[ApduType] = ApduType.AARQ
    FIELDS: ClassVar[Fields] = (_uint("assoc_version", 4, AssociationVersion),
                                _SequenceOf("data_proto_list", DataProto.read))

    @classmethod
    def for_agent(cls, system_id: bytes, dev_config_id: int) -> Self:
        info = PhdAssociationInformation.agent(system_id, dev_config_id)
        return cls(AssociationVersion.ASSOC_VERSION1,
                   (DataProto(DataProtoId.DATA_PROTO_ID_20601, info),))

    @property
    def phd_info(self) -> PhdAssociationInformation | None:
        """The 20601 association information the agent proposes, if any."""
        return next((p.data_proto_info for p in self.data_proto_list
                     if isinstance(p.data_proto_info, PhdAssociationInformation)), None)


@dataclass(frozen=True, slots=True)
class AareApdu(_Apdu):
    """Association response (Annex A), sent by the manager."""

    result: AssociateResult | int
    selected_data_proto: DataProto
    TAG: ClassVar[ApduType] = ApduType.AARE
    FIELDS: ClassVar[Fields] = (_uint("result", 2, AssociateResult),
                                Part("selected_data_proto", DataProto.read))

    @classmethod
    def for_manager(cls, result: AssociateResult, system_id: bytes) -> Self:
        return cls(result, DataProto(DataProtoId.DATA_PROTO_ID_20601,
                                     PhdAssociationInformation.manager(system_id)))


@dataclass(frozen=True, slots=True)
class RlrqApdu(_Apdu):
    """Release request (Annex A)."""

    reason: ReleaseRequestReason | int = ReleaseRequestReason.NORMAL
    TAG: ClassVar[ApduType] = ApduType.RLRQ
    FIELDS: ClassVar[Fields] = (_uint("reason", 2, ReleaseRequestReason),)


@dataclass(frozen=True, slots=True)
class RlreApdu(_Apdu):
    """Release response (Annex A)."""

    reason: ReleaseResponseReason | int = ReleaseResponseReason.NORMAL
    TAG: ClassVar[ApduType] = ApduType.RLRE
    FIELDS: ClassVar[Fields] = (_uint("reason", 2, ReleaseResponseReason),)


@dataclass(frozen=True, slots=True)
class AbrtApdu(_Apdu):
    """Abort (Annex A)."""

    reason: AbortReason | int = AbortReason.UNDEFINED
    TAG: ClassVar[ApduType] = ApduType.ABRT
    FIELDS: ClassVar[Fields] = (_uint("reason", 2, AbortReason),)


# ------------------------------------------------------------------------------------------------
# Event information (Annex A)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigObject(LaidOut):
    """ConfigObject ::= SEQUENCE { obj-class OID-Type, obj-handle HANDLE, attributes }."""

    obj_class: ObjClass | int
    obj_handle: int
    attributes: AttributeList

    FIELDS: ClassVar[Fields] = (_uint("obj_class", 2, ObjClass), _OBJ_HANDLE,
                                _attributes("attributes"))


@dataclass(frozen=True, slots=True)
class ConfigReport(LaidOut):
    """ConfigReport (MDC_NOTI_CONFIG event-info): the agent's objects and their attributes."""

    config_report_id: int
    config_obj_list: tuple[ConfigObject, ...]

    EVENT_TYPE: ClassVar[NotiCode] = NotiCode.MDC_NOTI_CONFIG
    FIELDS: ClassVar[Fields] = (_uint("config_report_id", 2),
                                _SequenceOf("config_obj_list", ConfigObject.read))

    def object(self, obj_handle: int) -> ConfigObject | None:
        return next((o for o in self.config_obj_list if o.obj_handle == obj_handle), None)


@dataclass(frozen=True, slots=True)
class ConfigReportRsp(LaidOut):
    """ConfigReportRsp (the event-reply-info to MDC_NOTI_CONFIG)."""

    config_report_id: int
    config_result: ConfigResult | int

    FIELDS: ClassVar[Fields] = (_uint("config_report_id", 2),
                                _uint("config_result", 2, ConfigResult))


@dataclass(frozen=True, slots=True)
class ObservationScanFixed(LaidOut):
    """ObservationScanFixed: obj-handle and obs-val-data laid out by the Attribute-Value-Map."""

    obj_handle: int
    obs_val_data: bytes

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE, _OctetString("obs_val_data"))


@dataclass(frozen=True, slots=True)
class ObservationScan(LaidOut):
    """ObservationScan: obj-handle and a full AttributeList (variable format)."""

    obj_handle: int
    attributes: AttributeList

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE, _attributes("attributes"))


@dataclass(frozen=True, slots=True)
class _ScanReportInfo(LaidOut):
    """The head every scan report event-info starts with: data-req-id, scan-report-no
    (Annex A)."""

    data_req_id: int
    scan_report_no: int


@dataclass(frozen=True, slots=True)
class ScanReportInfoFixed(_ScanReportInfo):
    """MDC_NOTI_SCAN_REPORT_FIXED event-info."""

    obs_scan_fixed: tuple[ObservationScanFixed, ...]

    EVENT_TYPE: ClassVar[NotiCode] = NotiCode.MDC_NOTI_SCAN_REPORT_FIXED
    FIELDS: ClassVar[Fields] = (*_SCAN_REPORT_HEAD,
                                _SequenceOf("obs_scan_fixed", ObservationScanFixed.read))


@dataclass(frozen=True, slots=True)
class ScanReportInfoVar(_ScanReportInfo):
    """MDC_NOTI_SCAN_REPORT_VAR event-info."""

    obs_scan_var: tuple[ObservationScan, ...]

    EVENT_TYPE: ClassVar[NotiCode] = NotiCode.MDC_NOTI_SCAN_REPORT_VAR
    FIELDS: ClassVar[Fields] = (*_SCAN_REPORT_HEAD,
                                _SequenceOf("obs_scan_var", ObservationScan.read))


@dataclass(frozen=True, slots=True)
class ScanReportPerFixed(LaidOut):
    person_id: int
    obs_scan_fixed: tuple[ObservationScanFixed, ...]

    FIELDS: ClassVar[Fields] = (_uint("person_id", 2),
                                _SequenceOf("obs_scan_fixed", ObservationScanFixed.read))


@dataclass(frozen=True, slots=True)
class ScanReportInfoMPFixed(_ScanReportInfo):
    """MDC_NOTI_SCAN_REPORT_MP_FIXED event-info (multiple persons)."""

    scan_per_fixed: tuple[ScanReportPerFixed, ...]

    EVENT_TYPE: ClassVar[NotiCode] = NotiCode.MDC_NOTI_SCAN_REPORT_MP_FIXED
    FIELDS: ClassVar[Fields] = (*_SCAN_REPORT_HEAD,
                                _SequenceOf("scan_per_fixed", ScanReportPerFixed.read))


@dataclass(frozen=True, slots=True)
class ScanReportPerVar(LaidOut):
    person_id: int
    obs_scan_var: tuple[ObservationScan, ...]

    FIELDS: ClassVar[Fields] = (_uint("person_id", 2),
                                _SequenceOf("obs_scan_var", ObservationScan.read))


@dataclass(frozen=True, slots=True)
class ScanReportInfoMPVar(_ScanReportInfo):
    """MDC_NOTI_SCAN_REPORT_MP_VAR event-info (multiple persons)."""

    scan_per_var: tuple[ScanReportPerVar, ...]

    EVENT_TYPE: ClassVar[NotiCode] = NotiCode.MDC_NOTI_SCAN_REPORT_MP_VAR
    FIELDS: ClassVar[Fields] = (*_SCAN_REPORT_HEAD,
                                _SequenceOf("scan_per_var", ScanReportPerVar.read))


EventInfo = (ConfigReport | ScanReportInfoFixed | ScanReportInfoVar | ScanReportInfoMPFixed
             | ScanReportInfoMPVar | bytes)

_EVENT_INFO_TYPES: dict[int, type[ConfigReport | ScanReportInfoFixed | ScanReportInfoVar
                                  | ScanReportInfoMPFixed | ScanReportInfoMPVar]] = {
    cls.EVENT_TYPE: cls
    for cls in (ConfigReport, ScanReportInfoFixed, ScanReportInfoVar, ScanReportInfoMPFixed,
                ScanReportInfoMPVar)
}


def _check_event_payload(event_type: int, payload: object, decoded: type | None,
                         what: str) -> None:
    """A decoded event type must carry its decoded class, any other type raw bytes, so that a
    value object always re-decodes to itself."""
    expected: type = decoded if decoded is not None else bytes
    if not isinstance(payload, expected):
        raise ValueOutOfRange(f"{what} of event type {event_type} must be a {expected.__name__},"
                              f" not {type(payload).__name__}")


# ------------------------------------------------------------------------------------------------
# Remote operation arguments and results (Annex A)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventReportArgumentSimple:
    """roiv-cmip-(confirmed-)event-report: obj-handle, event-time, event-type, event-info."""

    obj_handle: int
    event_time: int  # RelativeTime, 1/8 ms ticks; agents without a relative clock send 0
    event_type: NotiCode | int
    event_info: EventInfo

    def __post_init__(self) -> None:
        _check_event_payload(self.event_type, self.event_info,
                             _EVENT_INFO_TYPES.get(self.event_type), "event-info")

    @classmethod
    def of(cls, event_info: ConfigReport | ScanReportInfoFixed | ScanReportInfoVar
           | ScanReportInfoMPFixed | ScanReportInfoMPVar, *, obj_handle: int = MDS_HANDLE,
           event_time: int = 0) -> Self:
        """An event report whose event-type follows from the kind of ``event_info``."""
        return cls(obj_handle, event_time, event_info.EVENT_TYPE, event_info)

    def result(self, event_reply_info: ConfigReportRsp | bytes = b"", *,
               current_time: int = 0) -> EventReportResultSimple:
        """The manager's answer, echoing obj-handle and event-type."""
        return EventReportResultSimple(self.obj_handle, current_time, self.event_type,
                                       event_reply_info)

    @classmethod
    def read(cls, r: Reader) -> Self:
        obj_handle = r.u16("obj-handle")
        event_time = r.u32("event-time")
        event_type = r.u16("event-type")
        info_cls = _EVENT_INFO_TYPES.get(event_type)
        parse: Callable[[Reader], EventInfo] = (
            info_cls.read if info_cls is not None else Reader.rest)
        info = read_any(r, "event-info", parse)
        return cls(obj_handle, event_time, known(NotiCode, event_type), info)

    def write(self, w: Writer) -> None:
        w.u16(self.obj_handle, "obj-handle").u32(self.event_time, "event-time")
        w.u16(self.event_type, "event-type")
        info = self.event_info
        if isinstance(info, bytes):
            write_octet_string(w, info, "event-info")
        else:
            write_any(w, info.write, "event-info")


@dataclass(frozen=True, slots=True)
class EventReportResultSimple:
    """rors-cmip-confirmed-event-report: obj-handle, current-time, event-type, reply-info.

    The reply to MDC_NOTI_CONFIG is a :class:`ConfigReportRsp`; other replies (empty for scan
    reports) stay raw bytes.
    """

    obj_handle: int
    current_time: int
    event_type: NotiCode | int
    event_reply_info: ConfigReportRsp | bytes = b""

    def __post_init__(self) -> None:
        _check_event_payload(
            self.event_type, self.event_reply_info,
            ConfigReportRsp if self.event_type == NotiCode.MDC_NOTI_CONFIG else None,
            "event-reply-info")

    @classmethod
    def read(cls, r: Reader) -> Self:
        obj_handle = r.u16("obj-handle")
        current_time = r.u32("current-time")
        event_type = r.u16("event-type")
        parse: Callable[[Reader], ConfigReportRsp | bytes] = (
            ConfigReportRsp.read if event_type == NotiCode.MDC_NOTI_CONFIG else Reader.rest)
        info = read_any(r, "event-reply-info", parse)
        return cls(obj_handle, current_time, known(NotiCode, event_type), info)

    def write(self, w: Writer) -> None:
        w.u16(self.obj_handle, "obj-handle").u32(self.current_time, "current-time")
        w.u16(self.event_type, "event-type")
        info = self.event_reply_info
        if isinstance(info, bytes):
            write_octet_string(w, info, "event-reply-info")
        else:
            write_any(w, info.write, "event-reply-info")


def _read_oid(r: Reader) -> AttrId | int:
    return known(AttrId, r.u16("attribute-id"))


def _write_oid(w: Writer, attribute_id: int) -> None:
    w.u16(attribute_id, "attribute-id")


@dataclass(frozen=True, slots=True)
class GetArgumentSimple(LaidOut):
    """roiv-cmip-get: obj-handle and the attribute ids wanted (empty = all)."""

    obj_handle: int = MDS_HANDLE
    attribute_id_list: tuple[AttrId | int, ...] = ()

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE,
                                _SequenceOf("attribute_id_list", _read_oid, _write_oid))


@dataclass(frozen=True, slots=True)
class _HandleAttributes(LaidOut):
    """obj-handle and an AttributeList: the result of a GET and of a confirmed SET
    (Annex A)."""

    obj_handle: int
    attribute_list: AttributeList

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE, _attributes("attribute_list"))


@dataclass(frozen=True, slots=True)
class GetResultSimple(_HandleAttributes):
    """rors-cmip-get: obj-handle and its attribute list."""


@dataclass(frozen=True, slots=True)
class AttributeModEntry(LaidOut):
    modify_operator: ModifyOperator | int
    attribute: Ava

    FIELDS: ClassVar[Fields] = (_uint("modify_operator", 2, ModifyOperator),
                                Part("attribute", Ava.read))


@dataclass(frozen=True, slots=True)
class SetArgumentSimple(LaidOut):
    """roiv-cmip-(confirmed-)set: obj-handle and a modification list."""

    obj_handle: int
    modification_list: tuple[AttributeModEntry, ...]

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE,
                                _SequenceOf("modification_list", AttributeModEntry.read))


@dataclass(frozen=True, slots=True)
class SetResultSimple(_HandleAttributes):
    """rors-cmip-confirmed-set: obj-handle and the attributes as now set."""


@dataclass(frozen=True, slots=True)
class _Action(LaidOut):
    """obj-handle, action-type and the action-info-args, kept as raw bytes: the argument
    and the result of an ACTION (Annex A)."""

    obj_handle: int
    action_type: ActionCode | int
    action_info_args: bytes = b""

    FIELDS: ClassVar[Fields] = (_OBJ_HANDLE, _uint("action_type", 2, ActionCode),
                                _OctetString("action_info_args"))


@dataclass(frozen=True, slots=True)
class ActionArgumentSimple(_Action):
    """roiv-cmip-(confirmed-)action; the action-info-args stay raw bytes."""


@dataclass(frozen=True, slots=True)
class ActionResultSimple(_Action):
    """rors-cmip-confirmed-action; the action-info-args stay raw bytes."""


@dataclass(frozen=True, slots=True)
class ErrorResult(LaidOut):
    """roer: error-value and a parameter ANY DEFINED BY error-value (kept raw)."""

    error_value: ErrorValue | int
    parameter: bytes = b""

    FIELDS: ClassVar[Fields] = (_uint("error_value", 2, ErrorValue), _OctetString("parameter"))


@dataclass(frozen=True, slots=True)
class RejectResult(LaidOut):
    """rorj: the problem found with the invoke."""

    problem: RorjProblem | int

    FIELDS: ClassVar[Fields] = (_uint("problem", 2, RorjProblem),)


DataMessage = (EventReportArgumentSimple | EventReportResultSimple | GetArgumentSimple
               | GetResultSimple | SetArgumentSimple | SetResultSimple | ActionArgumentSimple
               | ActionResultSimple | ErrorResult | RejectResult)

_MESSAGE_TYPES: dict[DataApduChoice, Any] = {
    DataApduChoice.ROIV_CMIP_EVENT_REPORT: EventReportArgumentSimple,
    DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT: EventReportArgumentSimple,
    DataApduChoice.ROIV_CMIP_GET: GetArgumentSimple,
    DataApduChoice.ROIV_CMIP_SET: SetArgumentSimple,
    DataApduChoice.ROIV_CMIP_CONFIRMED_SET: SetArgumentSimple,
    DataApduChoice.ROIV_CMIP_ACTION: ActionArgumentSimple,
    DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION: ActionArgumentSimple,
    DataApduChoice.RORS_CMIP_CONFIRMED_EVENT_REPORT: EventReportResultSimple,
    DataApduChoice.RORS_CMIP_GET: GetResultSimple,
    DataApduChoice.RORS_CMIP_CONFIRMED_SET: SetResultSimple,
    DataApduChoice.RORS_CMIP_CONFIRMED_ACTION: ActionResultSimple,
    DataApduChoice.ROER: ErrorResult,
    DataApduChoice.RORJ: RejectResult,
}


@dataclass(frozen=True, slots=True)
class DataApdu:
    """DataApdu ::= SEQUENCE { invoke-id, message CHOICE } (Annex A).

    ``choice`` says which operation the message is (an event report argument can be
    confirmed or not); it must match the class of ``message``.
    """

    invoke_id: int
    choice: DataApduChoice
    message: DataMessage

    def __post_init__(self) -> None:
        expected = _MESSAGE_TYPES.get(self.choice)
        if expected is None or not isinstance(self.message, expected):
            raise ValueOutOfRange(
                f"DataApdu choice {self.choice!r} does not carry a {type(self.message).__name__}")

    @classmethod
    def read(cls, r: Reader) -> Self:
        invoke_id = r.u16("invoke-id")
        tag_at = r.offset
        tag = r.u16("message choice")
        choice = DataApduChoice._value2member_map_.get(tag)
        if not isinstance(choice, DataApduChoice):
            raise UnknownOpCode(f"DataApdu message choice 0x{tag:04X} is not defined",
                                r.data, tag_at)
        message = read_any(r, choice.name, _MESSAGE_TYPES[choice].read)
        return cls(invoke_id, choice, message)

    def write(self, w: Writer) -> None:
        w.u16(self.invoke_id, "invoke-id").u16(self.choice, "message choice")
        write_any(w, self.message.write, self.choice.name)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = mder_reader(data)
        value = cls.read(r)
        r.expect_end("DataApdu")
        return value

    def __bytes__(self) -> bytes:
        w = mder_writer()
        self.write(w)
        return bytes(w)

    # Constructors for the exchanges of a glucose meter association.
    @classmethod
    def confirmed_event_report(cls, invoke_id: int, event_info: ConfigReport
                               | ScanReportInfoFixed | ScanReportInfoVar
                               | ScanReportInfoMPFixed | ScanReportInfoMPVar) -> Self:
        return cls(invoke_id, DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT,
                   EventReportArgumentSimple.of(event_info))

    def event_report_result(self, event_reply_info: ConfigReportRsp | bytes = b"",
                            *, current_time: int = 0) -> DataApdu:
        """The manager's rors for this confirmed event report (same invoke-id)."""
        if not isinstance(self.message, EventReportArgumentSimple):
            raise ValueOutOfRange("only an event report has an event report result")
        return DataApdu(self.invoke_id, DataApduChoice.RORS_CMIP_CONFIRMED_EVENT_REPORT,
                        self.message.result(event_reply_info, current_time=current_time))

    @classmethod
    def get_mds(cls, invoke_id: int, *attribute_ids: int) -> Self:
        """roiv-cmip-get on the MDS (handle 0); no ids asks for all attributes."""
        ids = tuple(known(AttrId, a) for a in attribute_ids)
        return cls(invoke_id, DataApduChoice.ROIV_CMIP_GET, GetArgumentSimple(MDS_HANDLE, ids))


@dataclass(frozen=True, slots=True)
class PrstApdu(_Apdu):
    """Presentation APDU (Annex A): an OCTET STRING holding one DataApdu."""

    data: DataApdu
    TAG: ClassVar[ApduType] = ApduType.PRST
    FIELDS: ClassVar[Fields] = (_Any("data", DataApdu.read, what="PRST octet string"),)


Apdu = AarqApdu | AareApdu | RlrqApdu | RlreApdu | AbrtApdu | PrstApdu

_APDU_TYPES: dict[int, Any] = {
    cls.TAG: cls for cls in (AarqApdu, AareApdu, RlrqApdu, RlreApdu, AbrtApdu, PrstApdu)
}


def _apdu_class(data: bytes) -> Any:
    r = mder_reader(data)
    tag = r.u16("APDU choice")
    cls = _APDU_TYPES.get(tag)
    if cls is None:
        raise UnknownOpCode(f"APDU choice 0x{tag:04X} is not defined", data, 0)
    return cls


def decode_apdu(data: bytes) -> Apdu:
    """Any APDU. A frame shorter than its APDU length is ``TruncatedFrame`` (wait for more),
    bytes after it ``TrailingBytes``, nested lengths that disagree ``MalformedFrame``."""
    cls = _apdu_class(data)
    r = mder_reader(data)
    r.offset = 2
    length = r.u16("APDU length")
    apdu: Apdu = within(r, length, f"{ApduType(cls.TAG).name} APDU", cls.read_content)
    r.expect_end("APDU")
    return apdu


def apdu_frame_size(header: bytes) -> int:
    """The whole size of the APDU that starts with ``header`` (at least its first 4 bytes).

    Lets a byte-stream transport cut frames: tag and length come first (Annex A).
    """
    if len(header) < 4:
        raise TruncatedFrame("an APDU header needs 4 bytes", header, len(header))
    _apdu_class(header)
    return 4 + int.from_bytes(header[2:4], "big")


# ------------------------------------------------------------------------------------------------
# Glucose meter layer (IEEE 11073-10417), pure functions over the types above
# ------------------------------------------------------------------------------------------------

# mss-avail-intermittent, -stored-data, upd/msmt aperiodic, agent initiated (IEEE 11073-10417).
GLUCOSE_METRIC_SPEC = (MetricSpecSmall.MSS_AVAIL_INTERMITTENT
                       | MetricSpecSmall.MSS_AVAIL_STORED_DATA
                       | MetricSpecSmall.MSS_UPD_APERIODIC | MetricSpecSmall.MSS_MSMT_APERIODIC
                       | MetricSpecSmall.MSS_ACC_AGENT_INITIATED)
# Context entered by the user is additionally flagged as manual entry (mss-cat-manual).
GLUCOSE_CONTEXT_METRIC_SPEC = GLUCOSE_METRIC_SPEC | MetricSpecSmall.MSS_CAT_MANUAL

_GLUCOSE_VALUE_MAP = AttrValMap((
    AttrValMapEntry(AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, 2),
    AttrValMapEntry(AttrId.MDC_ATTR_TIME_STAMP_ABS, AbsoluteTime.SIZE),
))


def _numeric(obj_handle: int, glucose_type: Scada, unit: Dim) -> ConfigObject:
    return ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_NU, obj_handle, AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.SCADA, glucose_type),
        AttrId.MDC_ATTR_METRIC_SPEC_SMALL: GLUCOSE_METRIC_SPEC,
        AttrId.MDC_ATTR_UNIT_CODE: unit,
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: _GLUCOSE_VALUE_MAP,
    }))


def standard_config_1700() -> ConfigReport:
    """The objects the standard configuration 1700 (0x06A4) implies; an agent using it never
    sends them (IEEE 11073-10417): one numeric, handle 1, capillary whole-blood glucose in mg/dL,
    reported as SFLOAT value + absolute time stamp."""
    return ConfigReport(GLUCOSE_STANDARD_CONFIG_ID, (
        _numeric(1, Scada.MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD, Dim.MDC_DIM_MILLI_G_PER_DL),
    ))


def standard_config(dev_config_id: int) -> ConfigReport | None:
    """The implied objects of a standard configuration this project knows, else ``None``
    (then the manager answers accepted-unknown-config and waits for MDC_NOTI_CONFIG)."""
    if dev_config_id == GLUCOSE_STANDARD_CONFIG_ID:
        return standard_config_1700()
    return None


def example_extended_config(config_id: int = EXTENDED_CONFIG_START) -> ConfigReport:
    """An extended glucose configuration: capillary plasma glucose in mmol/L (handle 1) and
    the meal context as an enumeration (handle 2, an MDC_CTXT_GLU_MEAL_* code + time)."""
    meal = ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_ENUM, 2, AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.PHD_DM, PhdDm.MDC_CTXT_GLU_MEAL),
        AttrId.MDC_ATTR_METRIC_SPEC_SMALL: GLUCOSE_CONTEXT_METRIC_SPEC,
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttrValMap((
            AttrValMapEntry(AttrId.MDC_ATTR_ENUM_OBS_VAL_SIMP_OID, 2),
            AttrValMapEntry(AttrId.MDC_ATTR_TIME_STAMP_ABS, AbsoluteTime.SIZE),
        )),
    }))
    return ConfigReport(config_id, (
        _numeric(1, Scada.MDC_CONC_GLU_CAPILLARY_PLASMA, Dim.MDC_DIM_MILLI_MOLE_PER_L), meal,
    ))


@dataclass(frozen=True, slots=True)
class Observation:
    """One object's observation, with what the configuration says about the object."""

    obj_handle: int
    obj_class: ObjClass | int
    metric_type: TypeCode | None  # MDC_ATTR_ID_TYPE of the object
    unit_code: Dim | int | None
    attributes: AttributeList

    @property
    def value(self) -> SFloat | MderFloat | int | None:
        """The observed value: numeric (SFLOAT/FLOAT) or an enumeration OID."""
        for attr in (AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, AttrId.MDC_ATTR_NU_VAL_OBS_SIMP,
                     AttrId.MDC_ATTR_ENUM_OBS_VAL_SIMP_OID):
            found = self.attributes.get(attr)
            if isinstance(found, SFloat | MderFloat | int):
                return found
        return None

    @property
    def timestamp(self) -> AbsoluteTime | None:
        found = self.attributes.get(AttrId.MDC_ATTR_TIME_STAMP_ABS)
        return found if isinstance(found, AbsoluteTime) else None


def _config_object(config: ConfigReport, obj_handle: int, data: bytes) -> ConfigObject:
    obj = config.object(obj_handle)
    if obj is None:
        raise ValueOutOfRange(
            f"obj-handle {obj_handle} is not in configuration {config.config_report_id}", data)
    return obj


def _describe(obj: ConfigObject, attributes: AttributeList) -> Observation:
    type_code = obj.attributes.get(AttrId.MDC_ATTR_ID_TYPE)
    unit = obj.attributes.get(AttrId.MDC_ATTR_UNIT_CODE)
    return Observation(obj.obj_handle, obj.obj_class,
                       type_code if isinstance(type_code, TypeCode) else None,
                       unit if isinstance(unit, int) else None, attributes)


def _value_map(obj: ConfigObject, data: bytes) -> AttrValMap:
    value_map = obj.attributes.get(AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP)
    if not isinstance(value_map, AttrValMap):
        raise MalformedFrame(
            f"object {obj.obj_handle} has no Attribute-Value-Map, so its fixed-format data "
            "cannot be read", data)
    return value_map


def decode_fixed_observations(config: ConfigReport,
                              scan: ScanReportInfoFixed) -> tuple[Observation, ...]:
    """Split each obs-val-data by its object's Attribute-Value-Map (IEEE 11073-20601 clause 6).

    obs-val-data carries the mapped attribute values back to back with no lengths, so the map
    must cover it exactly and each entry must have the size its attribute type needs; anything
    else is a ``MalformedFrame`` (an invalid value, like a bad BCD digit, ``ValueOutOfRange``).
    """
    out: list[Observation] = []
    for scan_entry in scan.obs_scan_fixed:
        data = scan_entry.obs_val_data
        obj = _config_object(config, scan_entry.obj_handle, data)
        value_map = _value_map(obj, data)
        r = mder_reader(data)
        items: list[Ava] = []
        for entry in value_map.entries:
            size = fixed_size(entry.attribute_id)
            if size is not None and size != entry.attribute_len:
                raise MalformedFrame(
                    f"value map gives {entry.attribute_id!r} {entry.attribute_len} byte(s); "
                    f"its type needs {size}", data, r.offset)
            if entry.attribute_len > r.remaining:
                raise MalformedFrame(
                    f"obs-val-data of object {obj.obj_handle} ends before {entry.attribute_id!r}"
                    f" ({entry.attribute_len} byte(s) needed, {r.remaining} left)",
                    data, r.offset)
            raw = r.take(entry.attribute_len, str(entry.attribute_id))
            decode_attribute(entry.attribute_id, raw)  # refuse invalid values here
            items.append(Ava(entry.attribute_id, raw))
        if r.remaining:
            raise MalformedFrame(
                f"obs-val-data of object {obj.obj_handle} has {r.remaining} byte(s) more than "
                "its Attribute-Value-Map describes", data, r.offset)
        out.append(_describe(obj, AttributeList(tuple(items))))
    return tuple(out)


def decode_var_observations(config: ConfigReport,
                            scan: ScanReportInfoVar) -> tuple[Observation, ...]:
    """The observations of a variable-format scan report, described by the configuration."""
    return tuple(
        _describe(_config_object(config, o.obj_handle, bytes(o.attributes)), o.attributes)
        for o in scan.obs_scan_var)


def encode_fixed_observation(config: ConfigReport, obj_handle: int,
                             values: Mapping[int, AttributeValue]) -> ObservationScanFixed:
    """The agent side of :func:`decode_fixed_observations`: lay typed values out by the map."""
    obj = _config_object(config, obj_handle, b"")
    value_map = _value_map(obj, b"")
    parts: list[bytes] = []
    for entry in value_map.entries:
        if entry.attribute_id not in values:
            raise ValueOutOfRange(f"no value for {entry.attribute_id!r} of object {obj_handle}")
        raw = encode_attribute(entry.attribute_id, values[entry.attribute_id])
        if len(raw) != entry.attribute_len:
            raise ValueOutOfRange(f"{entry.attribute_id!r} encodes to {len(raw)} byte(s); the "
                                  f"value map gives {entry.attribute_len}")
        parts.append(raw)
    return ObservationScanFixed(obj_handle, b"".join(parts))


CODECS = (
    MessageCodec("phd-apdu", "IEEE 11073-20601 APDU (AARQ/AARE/RLRQ/RLRE/ABRT/PRST), MDER",
                 decode_apdu),
    MessageCodec("phd-data-apdu",
                 "IEEE 11073-20601 DataApdu (the content of a PRST octet string), MDER",
                 DataApdu.from_bytes),
)
