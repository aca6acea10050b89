"""IEEE 11073-20601 APDU codec: MDER framing, attribute types and the glucose meter layer."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    MalformedFrame,
    TrailingBytes,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.mdc import (
    ActionCode,
    AttrId,
    DevSpecProfile,
    Dim,
    NotiCode,
    ObjClass,
    Partition,
    PhdDm,
    Scada,
)
from bridge.protocols.mder_float import MderFloat, SFloat
from bridge.protocols.phd import (
    AareApdu,
    AarqApdu,
    AbrtApdu,
    ActionArgumentSimple,
    ActionResultSimple,
    Apdu,
    AssociateResult,
    AssociationVersion,
    AttributeModEntry,
    ConfigObject,
    ConfigReport,
    ConfigReportRsp,
    ConfigResult,
    DataApdu,
    DataApduChoice,
    DataMessage,
    DataProto,
    DataProtoId,
    DataReqModeCapab,
    DataReqModeFlags,
    EncodingRules,
    ErrorResult,
    EventReportArgumentSimple,
    EventReportResultSimple,
    FunctionalUnits,
    GetArgumentSimple,
    GetResultSimple,
    NomenclatureVersion,
    ObservationScan,
    ObservationScanFixed,
    PhdAssociationInformation,
    ProtocolVersion,
    PrstApdu,
    RejectResult,
    RlreApdu,
    RlrqApdu,
    ScanReportInfoFixed,
    ScanReportInfoMPFixed,
    ScanReportInfoMPVar,
    ScanReportInfoVar,
    ScanReportPerFixed,
    ScanReportPerVar,
    SetArgumentSimple,
    SetResultSimple,
    SystemType,
    apdu_frame_size,
    decode_apdu,
    decode_fixed_observations,
    decode_var_observations,
    encode_fixed_observation,
    example_extended_config,
    standard_config,
    standard_config_1700,
)
from bridge.protocols.phd_attributes import (
    ATTRIBUTE_TYPES,
    AbsoluteTime,
    AttributeList,
    AttributeValue,
    AttrValMap,
    AttrValMapEntry,
    Ava,
    MetricSpecSmall,
    ProdSpecEntry,
    ProdSpecType,
    ProductionSpec,
    SystemModel,
    TypeCode,
    TypeVer,
    TypeVerList,
    decode_attribute,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


AGENT_ID = h("02 00 00 ff fe 17 00 01")
MANAGER_ID = h("02 00 00 ff fe 00 00 10")
AARQ_1700 = h("""e2 00 00 32 80 00 00 00 00 01 00 2a 50 79 00 26 80 00 00 00 80 00 80 00 00 00
                 00 00 00 00 00 80 00 00 00 08 02 00 00 ff fe 17 00 01 06 a4 00 01 01 00
                 00 00 00 00""")
AARE_ACCEPTED = h("""e3 00 00 2c 00 00 50 79 00 26 80 00 00 00 80 00 80 00 00 00 00 00 00 00
                     80 00 00 00 00 08 02 00 00 ff fe 00 00 10 00 00 00 00 00 00 00 00 00 00""")
GET_MDS = h("e7 00 00 0e 00 0c 00 01 01 03 00 06 00 00 00 00 00 00")
SCAN_1700 = h("""e7 00 00 44 00 42 00 02 01 01 00 3c 00 00 00 00 00 00 0d 1d 00 32 f0 00 00 00
                 00 03 00 2a
                 00 01 00 0a 00 69 20 24 05 14 07 15 00 00
                 00 01 00 0a 00 8e 20 24 05 14 12 40 30 00
                 00 01 00 0a 00 62 20 24 05 14 18 05 00 00""")
SCAN_ACK = h("e7 00 00 12 00 10 00 02 02 01 00 0a 00 00 00 00 00 00 0d 1d 00 00")
CONFIG_REPORT_4000 = h("""40 00 00 02 00 52
    00 06 00 01 00 04 00 24 09 2f 00 04 00 02 71 bc 0a 46 00 02 f0 40 09 96 00 02 12 72
    0a 55 00 0c 00 02 00 08 0a 4c 00 02 09 90 00 08
    00 05 00 02 00 03 00 1e 09 2f 00 04 00 80 72 48 0a 46 00 02 f0 48
    0a 55 00 0c 00 02 00 08 0a 49 00 02 09 90 00 08""")


def _scan(apdu: Apdu) -> ScanReportInfoFixed:
    assert isinstance(apdu, PrstApdu)
    message = apdu.data.message
    assert isinstance(message, EventReportArgumentSimple)
    assert isinstance(message.event_info, ScanReportInfoFixed)
    return message.event_info


# --- framing -----------------------------------------------------------------------------------


def test_builders_produce_the_transcript_frames() -> None:
    assert bytes(AarqApdu.for_agent(AGENT_ID, 1700)) == AARQ_1700
    assert bytes(AareApdu.for_manager(AssociateResult.ACCEPTED, MANAGER_ID)) == AARE_ACCEPTED
    assert bytes(PrstApdu(DataApdu.get_mds(1))) == GET_MDS
    scan = _scan(decode_apdu(SCAN_1700))
    report = DataApdu.confirmed_event_report(2, scan)
    assert bytes(PrstApdu(report)) == SCAN_1700
    assert bytes(PrstApdu(report.event_report_result())) == SCAN_ACK
    assert bytes(RlrqApdu()) == h("e4 00 00 02 00 00")
    assert bytes(RlreApdu()) == h("e5 00 00 02 00 00")


def test_aarq_exposes_the_proposal() -> None:
    aarq = AarqApdu.from_bytes(AARQ_1700)
    info = aarq.phd_info
    assert info is not None
    assert info.dev_config_id == 1700
    assert info.system_id == AGENT_ID
    assert SystemType.SYS_TYPE_AGENT in info.system_type
    assert EncodingRules.MDER in info.encoding_rules


def test_from_bytes_of_the_wrong_apdu_class() -> None:
    with pytest.raises(UnknownOpCode):
        AareApdu.from_bytes(AARQ_1700)


def test_apdu_frame_size_for_stream_transports() -> None:
    assert apdu_frame_size(AARQ_1700[:4]) == len(AARQ_1700)
    assert apdu_frame_size(SCAN_1700) == len(SCAN_1700)
    with pytest.raises(TruncatedFrame):
        apdu_frame_size(b"\xe7\x00\x00")
    with pytest.raises(UnknownOpCode):
        apdu_frame_size(h("e8 00 00 02"))


@pytest.mark.parametrize("cut", range(1, len(SCAN_1700)))
def test_every_truncation_of_a_scan_report_is_refused(cut: int) -> None:
    with pytest.raises(TruncatedFrame):
        decode_apdu(SCAN_1700[:cut])


def test_sequence_count_and_length_must_agree() -> None:
    # Attribute-id-list of a GET: count 2 but a length covering one id.
    frame = h("e7 00 00 10 00 0e 00 05 01 03 00 08 00 00 00 02 00 02 09 87")
    with pytest.raises(MalformedFrame):
        decode_apdu(frame)
    # Count 0 with a length of 2 leaves an id over.
    frame = h("e7 00 00 10 00 0e 00 05 01 03 00 08 00 00 00 00 00 02 09 87")
    with pytest.raises(MalformedFrame):
        decode_apdu(frame)


def test_trailing_bytes_after_a_data_apdu() -> None:
    with pytest.raises(TrailingBytes):
        DataApdu.from_bytes(GET_MDS[6:] + b"\x00")


def test_value_objects_refuse_impossible_combinations() -> None:
    with pytest.raises(ValueOutOfRange):
        DataApdu(1, DataApduChoice.ROIV_CMIP_GET, RejectResult(0))
    with pytest.raises(ValueOutOfRange):
        EventReportArgumentSimple(0, 0, NotiCode.MDC_NOTI_CONFIG, b"\x00\x00")
    with pytest.raises(ValueOutOfRange):
        EventReportArgumentSimple(0, 0, NotiCode.MDC_NOTI_SEGMENT_DATA,
                                  standard_config_1700())
    with pytest.raises(ValueOutOfRange):
        EventReportResultSimple(0, 0, NotiCode.MDC_NOTI_CONFIG, b"")
    with pytest.raises(ValueOutOfRange):
        DataProto(DataProtoId.DATA_PROTO_ID_20601, b"")
    with pytest.raises(ValueOutOfRange):
        bytes(RlrqApdu(0x10000))
    with pytest.raises(ValueOutOfRange):
        bytes(DataApdu(1, DataApduChoice.ROER, ErrorResult(1, bytes(70000))))


# --- attributes --------------------------------------------------------------------------------


def test_absolute_time_bcd_and_datetime() -> None:
    t = AbsoluteTime.from_bytes(h("20 24 05 14 07 30 15 50"))
    assert t.to_datetime() == dt.datetime(2024, 5, 14, 7, 30, 15, 500_000)
    assert AbsoluteTime.from_datetime(dt.datetime(1999, 12, 31, 23, 59, 58, 990_000)) == \
        AbsoluteTime(19, 99, 12, 31, 23, 59, 58, 99)
    assert bytes(AbsoluteTime(19, 99, 12, 31, 23, 59, 58, 99)).hex() == "1999123123595899"
    with pytest.raises(ValueOutOfRange):
        AbsoluteTime.from_bytes(h("20 24 05 14 07 3a 00 00"))
    with pytest.raises(ValueOutOfRange):
        AbsoluteTime.from_bytes(h("00 00 00 00 00 00 00 00")).to_datetime()
    with pytest.raises(ValueOutOfRange):
        AbsoluteTime(20, 24, 2, 30, 0, 0, 0, 100)


def test_attribute_list_typed_access() -> None:
    attrs = AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.SCADA, Scada.MDC_CONC_GLU_CAPILLARY_PLASMA),
        AttrId.MDC_ATTR_UNIT_CODE: Dim.MDC_DIM_MILLI_MOLE_PER_L,
        AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: SFloat(54, -1),
        AttrId.MDC_ATTR_SYS_ID: AGENT_ID,
        AttrId.MDC_ATTR_ID_PROD_SPECN: ProductionSpec((
            ProdSpecEntry(ProdSpecType.SERIAL_NUMBER, 0, b"SN1"),)),
    })
    assert bytes(attrs)[:4] == h("00 05 00 33")
    assert attrs.raw(AttrId.MDC_ATTR_NU_VAL_OBS_BASIC) == h("f0 36")  # big-endian SFLOAT
    assert attrs.get(AttrId.MDC_ATTR_UNIT_CODE) is Dim.MDC_DIM_MILLI_MOLE_PER_L
    type_code = attrs.get(AttrId.MDC_ATTR_ID_TYPE)
    assert isinstance(type_code, TypeCode)
    assert type_code.mdc == 2 << 16 | 29116
    assert type_code.name == "MDC_CONC_GLU_CAPILLARY_PLASMA"
    assert attrs.get(AttrId.MDC_ATTR_SYS_ID) == AGENT_ID
    spec = attrs.get(AttrId.MDC_ATTR_ID_PROD_SPECN)
    assert isinstance(spec, ProductionSpec)
    assert spec.get(ProdSpecType.SERIAL_NUMBER) == b"SN1"
    assert attrs.get(AttrId.MDC_ATTR_TIME_ABS) is None
    assert AttrId.MDC_ATTR_SYS_ID in attrs
    assert AttributeList.from_bytes(bytes(attrs)) == attrs


def test_ava_of_refuses_the_wrong_type() -> None:
    with pytest.raises(ValueOutOfRange):
        Ava.of(AttrId.MDC_ATTR_TIME_STAMP_ABS, SFloat(1, 0))
    with pytest.raises(ValueOutOfRange):
        Ava.of(AttrId.MDC_ATTR_UNIT_CODE, True)
    with pytest.raises(ValueOutOfRange):
        Ava.of(2325, 5)  # no known type: raw bytes only
    assert Ava.of(2325, b"\x00\x05").value == b"\x00\x05"


# --- glucose layer -----------------------------------------------------------------------------


def test_standard_config_1700_layout() -> None:
    config = standard_config_1700()
    assert standard_config(0x06A4) == config
    assert standard_config(0x4000) is None
    (obj,) = config.config_obj_list
    assert obj.obj_class is ObjClass.MDC_MOC_VMO_METRIC_NU
    assert obj.obj_handle == 1
    assert bytes(obj.attributes) == h("""00 04 00 24
        09 2f 00 04 00 02 71 b8  0a 46 00 02 f0 40  09 96 00 02 08 52
        0a 55 00 0c 00 02 00 08 0a 4c 00 02 09 90 00 08""")


def test_example_extended_config_matches_the_transcript() -> None:
    w_bytes = DataApdu.confirmed_event_report(0, example_extended_config())
    message = w_bytes.message
    assert isinstance(message, EventReportArgumentSimple)
    assert message.event_type is NotiCode.MDC_NOTI_CONFIG
    assert bytes(w_bytes)[-len(CONFIG_REPORT_4000):] == CONFIG_REPORT_4000
    reply = w_bytes.event_report_result(ConfigReportRsp(0x4000, ConfigResult.ACCEPTED_CONFIG))
    assert bytes(PrstApdu(reply)) == h("""e7 00 00 16 00 14 00 00 02 01 00 0e
        00 00 00 00 00 00 0d 1c 00 04 40 00 00 00""")


def test_decode_fixed_observations_standard_config() -> None:
    readings = decode_fixed_observations(standard_config_1700(), _scan(decode_apdu(SCAN_1700)))
    assert [r.value for r in readings] == [SFloat(105, 0), SFloat(142, 0), SFloat(98, 0)]
    assert [r.unit_code for r in readings] == [Dim.MDC_DIM_MILLI_G_PER_DL] * 3
    first = readings[0]
    assert first.metric_type == TypeCode(Partition.SCADA, Scada.MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD)
    assert first.timestamp is not None
    assert first.timestamp.to_datetime() == dt.datetime(2024, 5, 14, 7, 15)
    stamp = readings[1].timestamp
    assert stamp is not None
    assert stamp.to_datetime() == dt.datetime(2024, 5, 14, 12, 40, 30)


def test_decode_fixed_observations_extended_config() -> None:
    config = example_extended_config()
    scan = ScanReportInfoFixed(0xF000, 0, (
        ObservationScanFixed(1, h("f0 36 20 24 05 14 07 20 00 00")),
        ObservationScanFixed(2, h("72 4c 20 24 05 14 07 20 00 00")),
    ))
    glucose, meal = decode_fixed_observations(config, scan)
    assert isinstance(glucose.value, SFloat)
    assert glucose.value.to_decimal() == Decimal("5.4")
    assert glucose.unit_code is Dim.MDC_DIM_MILLI_MOLE_PER_L
    assert meal.value == PhdDm.MDC_CTXT_GLU_MEAL_PREPRANDIAL
    assert meal.obj_class is ObjClass.MDC_MOC_VMO_METRIC_ENUM
    assert meal.unit_code is None


def test_encode_fixed_observation_round_trip() -> None:
    config = standard_config_1700()
    stamp = AbsoluteTime.from_datetime(dt.datetime(2024, 5, 14, 18, 5))
    obs = encode_fixed_observation(config, 1, {
        AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: SFloat.from_value(98),
        AttrId.MDC_ATTR_TIME_STAMP_ABS: stamp,
    })
    assert obs.obs_val_data == h("00 62 20 24 05 14 18 05 00 00")
    (reading,) = decode_fixed_observations(config, ScanReportInfoFixed(0xF000, 0, (obs,)))
    assert reading.timestamp == stamp
    with pytest.raises(ValueOutOfRange):
        encode_fixed_observation(config, 1, {AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: SFloat(1, 0)})
    with pytest.raises(ValueOutOfRange):
        encode_fixed_observation(config, 9, {})


@pytest.mark.parametrize(
    ("obj_handle", "data", "error"),
    [
        (1, "00 62 20 24 05 14 18 05 00", MalformedFrame),        # one byte short
        (1, "00 62 20 24 05 14 18 05 00 00 00", MalformedFrame),  # one byte over
        (1, "00 62 20 24 05 14 18 5a 00 00", ValueOutOfRange),    # bad BCD minute
        (7, "00 62 20 24 05 14 18 05 00 00", ValueOutOfRange),    # handle not configured
    ],
)
def test_decode_fixed_observations_refuses_data_that_does_not_fit(
        obj_handle: int, data: str, error: type[Exception]) -> None:
    scan = ScanReportInfoFixed(0xF000, 0, (ObservationScanFixed(obj_handle, h(data)),))
    with pytest.raises(error):
        decode_fixed_observations(standard_config_1700(), scan)


def test_decode_fixed_observations_checks_the_map_itself() -> None:
    scan = ScanReportInfoFixed(0xF000, 0, (ObservationScanFixed(1, h("00 00 00 62")),))
    wide_map = ConfigReport(0x4001, (ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_NU, 1,
                                                  AttributeList.of({
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttrValMap((
            AttrValMapEntry(AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, 4),)),
    })),))
    with pytest.raises(MalformedFrame):
        decode_fixed_observations(wide_map, scan)
    no_map = ConfigReport(0x4002, (ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_NU, 1,
                                                AttributeList()),))
    with pytest.raises(MalformedFrame):
        decode_fixed_observations(no_map, scan)


def test_decode_var_observations() -> None:
    attrs = AttributeList.of({AttrId.MDC_ATTR_NU_VAL_OBS_SIMP: MderFloat(7484, -3)})
    scan = ScanReportInfoVar(0xF000, 1, (ObservationScan(1, attrs),))
    (obs,) = decode_var_observations(standard_config_1700(), scan)
    assert obs.value == MderFloat(7484, -3)
    assert obs.timestamp is None


# --- property tests ----------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
small_bytes = st.binary(max_size=12)
two_digits = st.integers(0, 99)

absolute_times = st.builds(AbsoluteTime, two_digits, two_digits, two_digits, two_digits,
                           two_digits, two_digits, two_digits, two_digits)
type_codes = st.builds(TypeCode.of, u16, u16)
attr_val_maps = st.builds(AttrValMap, st.lists(
    st.builds(AttrValMapEntry, u16, u16), max_size=3).map(tuple))

_VALUES_BY_TYPE: dict[str, st.SearchStrategy[AttributeValue]] = {
    "TYPE": type_codes,
    "INT-U16": u16,
    "OID-Type (unit)": u16,
    "MetricSpecSmall": u16.map(MetricSpecSmall),
    "AttrValMap": attr_val_maps,
    "SFLOAT-Type": u16.map(SFloat.from_int),
    "FLOAT-Type": u32.map(MderFloat.from_int),
    "AbsoluteTime": absolute_times,
    "OCTET STRING": small_bytes,
    "SystemModel": st.builds(SystemModel, small_bytes, small_bytes),
    "ProductionSpec": st.builds(ProductionSpec, st.lists(
        st.builds(ProdSpecEntry, u16, u16, small_bytes), max_size=3).map(tuple)),
    "TypeVerList": st.builds(TypeVerList, st.lists(
        st.builds(TypeVer, u16, u16), max_size=3).map(tuple)),
}
assert {spec.name for spec in ATTRIBUTE_TYPES.values()} <= set(_VALUES_BY_TYPE)

known_avas = st.sampled_from(sorted(ATTRIBUTE_TYPES)).flatmap(
    lambda attr: _VALUES_BY_TYPE[ATTRIBUTE_TYPES[attr].name].map(
        lambda value: Ava.of(attr, value)))
unknown_avas = st.builds(Ava, u16.filter(lambda a: a not in ATTRIBUTE_TYPES), small_bytes)
avas = st.one_of(known_avas, unknown_avas)
attribute_lists = st.builds(AttributeList, st.lists(avas, max_size=4).map(tuple))

config_reports = st.builds(ConfigReport, u16, st.lists(
    st.builds(ConfigObject, u16, u16, attribute_lists), max_size=3).map(tuple))
fixed_scans = st.lists(st.builds(ObservationScanFixed, u16, small_bytes), max_size=3).map(tuple)
var_scans = st.lists(st.builds(ObservationScan, u16, attribute_lists), max_size=3).map(tuple)
event_infos = st.one_of(
    config_reports,
    st.builds(ScanReportInfoFixed, u16, u16, fixed_scans),
    st.builds(ScanReportInfoVar, u16, u16, var_scans),
    st.builds(ScanReportInfoMPFixed, u16, u16, st.lists(
        st.builds(ScanReportPerFixed, u16, fixed_scans), max_size=2).map(tuple)),
    st.builds(ScanReportInfoMPVar, u16, u16, st.lists(
        st.builds(ScanReportPerVar, u16, var_scans), max_size=2).map(tuple)),
)
raw_event_types = u16.filter(lambda t: not 3356 <= t <= 3360)
event_reports = st.one_of(
    st.builds(lambda handle, time, info: EventReportArgumentSimple(
        handle, time, info.EVENT_TYPE, info), u16, u32, event_infos),
    st.builds(EventReportArgumentSimple, u16, u32, raw_event_types, small_bytes),
)
event_results = st.one_of(
    st.builds(EventReportResultSimple, u16, u32, st.just(NotiCode.MDC_NOTI_CONFIG),
              st.builds(ConfigReportRsp, u16, u16)),
    st.builds(EventReportResultSimple, u16, u32, u16.filter(lambda t: t != 3356), small_bytes),
)
attribute_ids = st.lists(u16, max_size=4).map(tuple)
set_arguments = st.builds(SetArgumentSimple, u16, st.lists(
    st.builds(AttributeModEntry, u16, avas), max_size=3).map(tuple))
actions = st.builds(ActionArgumentSimple, u16, u16, small_bytes)
action_results = st.builds(ActionResultSimple, u16, u16, small_bytes)

_MESSAGES: dict[DataApduChoice, st.SearchStrategy[DataMessage]] = {
    DataApduChoice.ROIV_CMIP_EVENT_REPORT: event_reports,
    DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT: event_reports,
    DataApduChoice.ROIV_CMIP_GET: st.builds(GetArgumentSimple, u16, attribute_ids),
    DataApduChoice.ROIV_CMIP_SET: set_arguments,
    DataApduChoice.ROIV_CMIP_CONFIRMED_SET: set_arguments,
    DataApduChoice.ROIV_CMIP_ACTION: actions,
    DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION: actions,
    DataApduChoice.RORS_CMIP_CONFIRMED_EVENT_REPORT: event_results,
    DataApduChoice.RORS_CMIP_GET: st.builds(GetResultSimple, u16, attribute_lists),
    DataApduChoice.RORS_CMIP_CONFIRMED_SET: st.builds(SetResultSimple, u16, attribute_lists),
    DataApduChoice.RORS_CMIP_CONFIRMED_ACTION: action_results,
    DataApduChoice.ROER: st.builds(ErrorResult, u16, small_bytes),
    DataApduChoice.RORJ: st.builds(RejectResult, u16),
}
assert set(_MESSAGES) == set(DataApduChoice)

data_apdus = st.sampled_from(list(DataApduChoice)).flatmap(
    lambda choice: st.builds(DataApdu, u16, st.just(choice), _MESSAGES[choice]))

phd_infos = st.builds(
    PhdAssociationInformation,
    u32.map(ProtocolVersion), u16.map(EncodingRules), u32.map(NomenclatureVersion),
    u32.map(FunctionalUnits), u32.map(SystemType), small_bytes, u16,
    st.builds(DataReqModeCapab, u16.map(DataReqModeFlags), u8, u8), attribute_lists)
data_protos = st.one_of(
    st.builds(DataProto, st.just(DataProtoId.DATA_PROTO_ID_20601), phd_infos),
    st.builds(DataProto, u16.filter(lambda p: p != 20601), small_bytes),
)
apdus: st.SearchStrategy[Apdu] = st.one_of(
    st.builds(AarqApdu, u32.map(AssociationVersion),
              st.lists(data_protos, max_size=2).map(tuple)),
    st.builds(AareApdu, u16, data_protos),
    st.builds(RlrqApdu, u16),
    st.builds(RlreApdu, u16),
    st.builds(AbrtApdu, u16),
    st.builds(PrstApdu, data_apdus),
)


@given(apdus)
def test_apdu_round_trip(apdu: Apdu) -> None:
    frame = bytes(apdu)
    decoded = decode_apdu(frame)
    assert decoded == apdu
    assert bytes(decoded) == frame
    assert apdu_frame_size(frame[:4]) == len(frame)


@given(data_apdus)
def test_data_apdu_round_trip(data: DataApdu) -> None:
    frame = bytes(data)
    assert DataApdu.from_bytes(frame) == data


@given(attribute_lists)
def test_attribute_list_round_trip(attrs: AttributeList) -> None:
    frame = bytes(attrs)
    decoded = AttributeList.from_bytes(frame)
    assert decoded == attrs
    for ava in decoded:
        value = ava.decoded
        if ava.attribute_id in ATTRIBUTE_TYPES:
            assert Ava.of(ava.attribute_id, value) == ava
        assert value == decode_attribute(ava.attribute_id, ava.value)


@given(absolute_times)
def test_absolute_time_round_trip(value: AbsoluteTime) -> None:
    assert AbsoluteTime.from_bytes(bytes(value)) == value


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_absolute_time_from_datetime(value: dt.datetime) -> None:
    expected = value.replace(microsecond=value.microsecond // 10_000 * 10_000)
    assert AbsoluteTime.from_datetime(value).to_datetime() == expected


@given(st.lists(st.tuples(u16.map(SFloat.from_int), absolute_times), min_size=1, max_size=4))
def test_fixed_observations_round_trip(readings: list[tuple[SFloat, AbsoluteTime]]) -> None:
    config = standard_config_1700()
    scan = ScanReportInfoFixed(0xF000, 0, tuple(
        encode_fixed_observation(config, 1, {AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: value,
                                             AttrId.MDC_ATTR_TIME_STAMP_ABS: stamp})
        for value, stamp in readings))
    decoded = decode_fixed_observations(config, _scan(decode_apdu(bytes(PrstApdu(
        DataApdu.confirmed_event_report(1, scan))))))
    assert [(o.value, o.timestamp) for o in decoded] == readings


def test_known_enums_are_used_when_defined() -> None:
    get = DataApdu.get_mds(1, AttrId.MDC_ATTR_TIME_ABS, 2325)
    assert isinstance(get.message, GetArgumentSimple)
    assert get.message.attribute_id_list == (AttrId.MDC_ATTR_TIME_ABS, 2325)
    decoded = DataApdu.from_bytes(bytes(get))
    assert isinstance(decoded.message, GetArgumentSimple)
    assert decoded.message.attribute_id_list[0] is AttrId.MDC_ATTR_TIME_ABS
    assert type(decoded.message.attribute_id_list[1]) is int
    action = DataApdu.from_bytes(bytes(DataApdu(
        3, DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION,
        ActionArgumentSimple(0, ActionCode.MDC_ACT_SET_TIME, b""))))
    assert isinstance(action.message, ActionArgumentSimple)
    assert action.message.action_type is ActionCode.MDC_ACT_SET_TIME
    tv = decode_attribute(AttrId.MDC_ATTR_SYS_TYPE_SPEC_LIST, h("00 01 00 04 10 11 00 01"))
    assert isinstance(tv, TypeVerList)
    assert tv.entries[0].type_id is DevSpecProfile.MDC_DEV_SPEC_PROFILE_GLUCOSE
