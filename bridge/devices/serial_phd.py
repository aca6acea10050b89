"""IEEE 11073-20601 manager for glucose meters (IEEE 11073-10417 agents) on a serial line.

On a byte stream the APDUs follow each other with no extra framing; each starts with its
CHOICE tag and length (IEEE 11073-20601 Annex A), which is how they are cut
(:func:`~bridge.protocols.phd.apdu_frame_size`). The manager, after the state machine of
IEEE 11073-20601 clause 8:

* Unassociated → Associating: the agent sends an AARQ. The manager accepts protocol 20601 with
  MDER (else AARE rejected-no-common-protocol / -parameter). A dev-config-id it knows — the
  glucose standard configuration 1700 (0x06A4), or an extended configuration it was given or
  learnt before — is answered "accepted"; any other "accepted-unknown-config".
* Configuring: the agent then sends its configuration (confirmed MDC_NOTI_CONFIG event report);
  the manager answers ConfigReportRsp "accepted-config" when the configuration is usable (a
  glucose numeric object with a unit and an Attribute-Value-Map this code can decode), else
  "unsupported-config" — the agent then releases or sends another configuration. No
  configuration within TO_config (10 s) → ABRT configuration-timeout.
* Operating: GET of the MDS (handle 0) → system id (``device_id``), model, production
  specification (serial number, revisions) and Absolute-Time (the clock observation); every
  confirmed event report is answered at once; fixed and variable scan reports are decoded
  through the configuration. The transfer is complete when the agent releases, or after
  ``idle_s`` without a report (stored-data meters push their memory and then wait).
* Release: RLRQ → RLRE. No answer within the timeout → ABRT response-timeout, and
  :class:`~bridge.devices.base.DeviceTimeout`. An ABRT from the agent ends the association
  (:class:`~bridge.devices.base.DeviceDisconnected`).

IEEE 11073-20601 has no checksum and no way to ask for one report again. A scan report whose
observations do not decode (e.g. a time stamp that is not BCD) is still confirmed — the agent
goes on with the rest — and the driver re-associates afterwards (closing and reopening the
port) to receive the memory again, up to ``retries`` times, filling in the reports that failed
by their scan-report number.

Incremental sync: agent-initiated stored data has no "since" filter, the agent sends its whole
memory oldest first. The state keeps the fingerprint of the newest reading (its device time is
its identity) and the learnt extended configuration (so the next association is accepted
directly, as IEEE 11073-20601 lets a manager remember an agent's configuration).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    midpoint,
    provisional_utc,
    since_anchor,
)
from bridge.errors import ProtocolError
from bridge.protocols.mdc import AttrId, Dim, ObjClass, Partition, PhdDm, Scada
from bridge.protocols.mder_float import MderFloat, SFloat, Special
from bridge.protocols.phd import (
    AareApdu,
    AarqApdu,
    AbortReason,
    AbrtApdu,
    Apdu,
    AssociateResult,
    AssociationVersion,
    ConfigReport,
    ConfigReportRsp,
    ConfigResult,
    DataApdu,
    DataApduChoice,
    EncodingRules,
    EventReportArgumentSimple,
    GetResultSimple,
    Observation,
    PrstApdu,
    RejectResult,
    RlreApdu,
    RlrqApdu,
    RorjProblem,
    ScanReportInfoFixed,
    ScanReportInfoVar,
    apdu_frame_size,
    decode_apdu,
    decode_fixed_observations,
    decode_var_observations,
    standard_config,
)
from bridge.protocols.phd_attributes import (
    AbsoluteTime,
    AttributeList,
    AttrValMap,
    ProdSpecType,
    ProductionSpec,
    SystemModel,
    TypeCode,
    fixed_size,
    mder_reader,
    mder_writer,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceInfo,
    DeviceKind,
    MealContext,
    SampleType,
    TimeQuality,
    mmol_l_to_mg_dl,
)

#: TO_assoc and TO_config of IEEE 11073-20601 (10 s each); 3 s is the confirm timeout of the
#: -10417 glucose objects, used here for the manager's own requests (GET, release).
ASSOCIATION_TIMEOUT_S = 10.0
CONFIGURATION_TIMEOUT_S = 10.0
RESPONSE_TIMEOUT_S = 3.0
#: EUI-64 the manager announces in its AARE (any fixed value identifies the bridge).
DEFAULT_MANAGER_SYSTEM_ID = "4844445442524447"
#: Sync-state key of a learnt extended configuration.
STATE_CONFIG = "phd_config"
_HEADER = 4

#: Specimen of each glucose concentration term (IEEE 11073-10417 MDC_CONC_GLU_*). The general
#: term says nothing about the specimen.
SAMPLE_TYPES: Mapping[int, SampleType] = {
    Scada.MDC_CONC_GLU_GEN: SampleType.UNDETERMINED_WHOLE_BLOOD,
    Scada.MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD: SampleType.CAPILLARY_WHOLE_BLOOD,
    Scada.MDC_CONC_GLU_CAPILLARY_PLASMA: SampleType.CAPILLARY_PLASMA,
    Scada.MDC_CONC_GLU_VENOUS_WHOLEBLOOD: SampleType.VENOUS_WHOLE_BLOOD,
    Scada.MDC_CONC_GLU_VENOUS_PLASMA: SampleType.VENOUS_PLASMA,
    Scada.MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD: SampleType.ARTERIAL_WHOLE_BLOOD,
    Scada.MDC_CONC_GLU_ARTERIAL_PLASMA: SampleType.ARTERIAL_PLASMA,
    Scada.MDC_CONC_GLU_CONTROL: SampleType.CONTROL_SOLUTION,
    Scada.MDC_CONC_GLU_ISF: SampleType.INTERSTITIAL_FLUID,
}

#: Meal context codes (IEEE 11073-10417 MDC_CTXT_GLU_MEAL_*).
MEALS: Mapping[int, MealContext] = {
    PhdDm.MDC_CTXT_GLU_MEAL_PREPRANDIAL: MealContext.PREPRANDIAL,
    PhdDm.MDC_CTXT_GLU_MEAL_POSTPRANDIAL: MealContext.POSTPRANDIAL,
    PhdDm.MDC_CTXT_GLU_MEAL_FASTING: MealContext.FASTING,
}

_UNITS = (Dim.MDC_DIM_MILLI_G_PER_DL, Dim.MDC_DIM_MILLI_MOLE_PER_L)
_VALUE_ATTRS = (AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, AttrId.MDC_ATTR_NU_VAL_OBS_SIMP)


# --- configurations ------------------------------------------------------------------------------

def config_to_hex(report: ConfigReport) -> str:
    """A configuration as hex (MDER), to keep in the sync state or the agent configuration."""
    w = mder_writer()
    report.write(w)
    return bytes(w).hex()


def config_from_hex(text: str) -> ConfigReport:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(f"configuration {text[:32]!r} is not hex") from None
    r = mder_reader(data)
    report = ConfigReport.read(r)
    r.expect_end("ConfigReport")
    return report


def _glucose_object_problem(obj_attrs: AttributeList) -> str | None:
    type_code = obj_attrs.get(AttrId.MDC_ATTR_ID_TYPE)
    if not isinstance(type_code, TypeCode) or type_code.partition != Partition.SCADA \
            or type_code.code not in SAMPLE_TYPES:
        return "not a glucose concentration"
    unit = obj_attrs.get(AttrId.MDC_ATTR_UNIT_CODE)
    if unit not in _UNITS:
        return f"unit {unit!r} is neither mg/dL nor mmol/L"
    value_map = obj_attrs.get(AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP)
    if not isinstance(value_map, AttrValMap):
        return "no Attribute-Value-Map"
    ids = [e.attribute_id for e in value_map.entries]
    if not any(a in ids for a in _VALUE_ATTRS):
        return "the value map carries no numeric value"
    for entry in value_map.entries:
        size = fixed_size(entry.attribute_id)
        if size is not None and size != entry.attribute_len:
            return f"value map gives attribute {entry.attribute_id} a wrong size"
    return None


def config_problem(report: ConfigReport) -> str | None:
    """Why a configuration is of no use to this manager (``None``: usable).

    Usable means at least one numeric object (IEEE 11073-20601 §6.3.4) measuring a glucose
    concentration (IEEE 11073-10417) in mg/dL or mmol/L whose fixed-format data this code can
    lay out; other objects may be present and are ignored.
    """
    problems: list[str] = []
    for obj in report.config_obj_list:
        if obj.obj_class != ObjClass.MDC_MOC_VMO_METRIC_NU:
            continue
        problem = _glucose_object_problem(obj.attributes)
        if problem is None:
            return None
        problems.append(f"object {obj.obj_handle}: {problem}")
    return "; ".join(problems) or "no numeric object"


# --- observations → readings ---------------------------------------------------------------------

def _number(value: SFloat | MderFloat | int | None) -> tuple[float | None, Annunciation | None]:
    if not isinstance(value, SFloat | MderFloat):
        return None, None
    special = value.special
    if special is Special.POSITIVE_INFINITY:
        # Above the measuring range (the meter shows HI).
        return None, Annunciation.RESULT_TOO_HIGH
    if special is Special.NEGATIVE_INFINITY:
        return None, Annunciation.RESULT_TOO_LOW
    if special is not None:
        return None, None
    return float(value), None


@dataclass(slots=True)
class Readings:
    """Readings built from observations, plus what was set aside."""

    readings: list[BloodGlucoseReading] = field(default_factory=list)
    without_value: int = 0
    other_objects: int = 0


def to_readings(observations: Sequence[Observation], device_id: str,
                clock: ClockObservation | None, gateway_time: dt.datetime) -> Readings:
    """Glucose observations as canonical readings, oldest first.

    Meal context observations (MDC_CTXT_GLU_MEAL) join the glucose observation with the same
    time stamp (IEEE 11073-10417 links context to its measurement by time). Values in mmol/L
    are converted to mg/dL; SFLOAT ±INFINITY is a result above/below the measuring range.
    """
    out = Readings()
    meals: dict[dt.datetime, MealContext] = {}
    glucose: list[tuple[Observation, dt.datetime | None]] = []
    for obs in observations:
        stamp = obs.timestamp
        when = stamp.to_datetime() if stamp is not None else None
        metric = obs.metric_type
        if metric is not None and metric.partition == Partition.PHD_DM \
                and metric.code == PhdDm.MDC_CTXT_GLU_MEAL:
            value = obs.value
            if isinstance(value, int) and value in MEALS and when is not None:
                meals[when] = MEALS[value]
            continue
        if metric is None or metric.partition != Partition.SCADA or metric.code not in SAMPLE_TYPES:
            out.other_objects += 1
            continue
        glucose.append((obs, when))
    for obs, when in glucose:
        assert obs.metric_type is not None
        number, annunciation = _number(obs.value)
        if number is not None and obs.unit_code == Dim.MDC_DIM_MILLI_MOLE_PER_L:
            number = mmol_l_to_mg_dl(number)
        if number is None and annunciation is None:
            out.without_value += 1
        quality: frozenset[TimeQuality] = frozenset()
        if when is None:
            quality = frozenset({TimeQuality.DEVICE_TIME_UNKNOWN})
        out.readings.append(BloodGlucoseReading(
            device_id=device_id,
            time=provisional_utc(when, clock) if when is not None else gateway_time,
            device_time=when, time_quality=quality, glucose_mg_dl=number,
            sample_type=SAMPLE_TYPES[obs.metric_type.code],
            meal=meals.get(when) if when is not None else None,
            annunciations=frozenset({annunciation}) if annunciation else frozenset()))
    return out


# --- the driver ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class PhdDriverOptions(SerialDriverOptions):
    """Timers and configurations of the manager.

    * ``timeout_s``: answers to the manager's GET and release (3 s);
      ``association_timeout_s``: wait for the agent's AARQ; ``configuration_timeout_s``:
      TO_config; ``idle_s``: a transfer is complete after this long without a report.
    * ``reconnect_delay_s``: pause between closing and reopening the port to re-associate.
    * ``known_configs``: extended configurations to accept without MDC_NOTI_CONFIG
      (ConfigReport objects or their MDER hex, see :func:`config_to_hex`).
    * ``manager_system_id``: the manager's EUI-64 (16 hex digits) for the AARE.
    """

    timeout_s: float = RESPONSE_TIMEOUT_S
    association_timeout_s: float = ASSOCIATION_TIMEOUT_S
    configuration_timeout_s: float = CONFIGURATION_TIMEOUT_S
    idle_s: float = 3.0
    reconnect_delay_s: float = 0.5
    known_configs: tuple[ConfigReport | str, ...] = ()
    manager_system_id: str = DEFAULT_MANAGER_SYSTEM_ID


@dataclass(slots=True)
class _Scan:
    """One scan report received: its number and observations (``None``: did not decode)."""

    number: int
    observations: tuple[Observation, ...] | None
    problem: str | None = None


@dataclass(slots=True)
class _Association:
    system_id: bytes
    config: ConfigReport
    learnt: bool
    invoke: int = 0
    mds: AttributeList | None = None
    clock: ClockObservation | None = None
    scans: list[_Scan] = field(default_factory=list)
    last_report: float = 0.0
    ended: bool = False
    other_events: int = 0

    def next_invoke(self) -> int:
        invoke = self.invoke
        self.invoke = (self.invoke + 1) & 0xFFFF
        return invoke


class _Garbled(DeviceError):
    """Bytes from the agent that are no decodable APDU."""


class PhdManagerDriver(DeviceDriver):
    """The manager end of one IEEE 11073-20601 glucose meter agent on a serial port."""

    PROTOCOL = "ieee11073"

    def __init__(self, url: str, options: PhdDriverOptions | None = None) -> None:
        self.url = url
        self.options = options or PhdDriverOptions()
        self.link = SerialLink(url, self.options.settings())
        try:
            self.manager_system_id = bytes.fromhex(self.options.manager_system_id)
        except ValueError:
            raise DeviceError("manager_system_id must be 16 hex digits", url) from None
        self.known_configs: dict[int, ConfigReport] = {}
        for item in self.options.known_configs:
            report = config_from_hex(item) if isinstance(item, str) else item
            self.known_configs[report.config_report_id] = report
        self._assoc: _Association | None = None
        #: True once the line has carried an association (or garbage): the next association
        #: needs the agent to see the manager leave and come back.
        self._used = False
        self._info: DeviceInfo | None = None
        self._notices: list[str] = []
        #: The abort reasons and association results this manager sent (for logs and tests).
        self.aborts_sent: list[AbortReason] = []
        self.associations: list[AssociateResult] = []

    # --- APDU transport ----------------------------------------------------------------------

    async def _send(self, apdu: Apdu) -> None:
        if isinstance(apdu, AareApdu):
            self.associations.append(AssociateResult(apdu.result))
        await self.link.write(bytes(apdu))

    async def _read_apdu(self, timeout: float, what: str) -> Apdu:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        header = await self.link.read_exactly(_HEADER, timeout, what)
        try:
            size = apdu_frame_size(header)
        except ProtocolError as exc:
            self.link.discard_input()
            raise _Garbled(f"bytes from the agent are no APDU: {exc}", self.url) from exc
        rest = await self.link.read_exactly(size - _HEADER, max(deadline - loop.time(), 0.0),
                                            what)
        try:
            return decode_apdu(header + rest)
        except ProtocolError as exc:
            raise _Garbled(f"APDU from the agent does not decode: {exc}", self.url) from exc

    async def _abort(self, reason: AbortReason) -> None:
        """Send ABRT (IEEE 11073-20601 §8: any state may abort) and forget the association."""
        self.aborts_sent.append(reason)
        self._used = True
        if self._assoc is not None:
            self._assoc.ended = True
        if self.link.is_open:
            with contextlib.suppress(DeviceError):
                await self._send(AbrtApdu(reason))

    # --- association -------------------------------------------------------------------------

    async def _associate(self) -> _Association:
        await self.link.open()
        self._used = True
        timeout = self.options.association_timeout_s
        while True:
            apdu = await self._read_apdu(timeout, "the agent's association request (AARQ)")
            if isinstance(apdu, AarqApdu):
                break
            # Before an association only an AARQ means anything (IEEE 11073-20601 §8.4);
            # leftovers of an earlier association are dropped.
        info = apdu.phd_info
        if info is None:
            await self._send(AareApdu.for_manager(AssociateResult.REJECTED_NO_COMMON_PROTOCOL,
                                                  self.manager_system_id))
            raise DeviceError("the agent offers no IEEE 11073-20601 data protocol", self.url)
        if not apdu.assoc_version & AssociationVersion.ASSOC_VERSION1:
            await self._send(AareApdu.for_manager(
                AssociateResult.REJECTED_UNSUPPORTED_ASSOC_VERSION, self.manager_system_id))
            raise DeviceError("the agent's association version is not supported", self.url)
        if not info.encoding_rules & EncodingRules.MDER:
            await self._send(AareApdu.for_manager(AssociateResult.REJECTED_NO_COMMON_PARAMETER,
                                                  self.manager_system_id))
            raise DeviceError("the agent does not offer MDER encoding", self.url)
        config_id = info.dev_config_id
        known = standard_config(config_id) or self.known_configs.get(config_id)
        if known is not None:
            await self._send(AareApdu.for_manager(AssociateResult.ACCEPTED,
                                                  self.manager_system_id))
            assoc = _Association(info.system_id, known, learnt=False)
        else:
            await self._send(AareApdu.for_manager(AssociateResult.ACCEPTED_UNKNOWN_CONFIG,
                                                  self.manager_system_id))
            assoc = _Association(info.system_id, await self._configure(config_id), learnt=True)
        assoc.last_report = asyncio.get_running_loop().time()
        self._assoc = assoc
        return assoc

    async def _configure(self, config_id: int) -> ConfigReport:
        """Receive the agent's configuration and accept it if usable (Configuring state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.configuration_timeout_s
        while True:
            try:
                apdu = await self._read_apdu(max(deadline - loop.time(), 0.0),
                                             "the agent's configuration (MDC_NOTI_CONFIG)")
            except DeviceTimeout:
                await self._abort(AbortReason.CONFIGURATION_TIMEOUT)
                raise DeviceTimeout(f"no configuration for dev-config-id {config_id} within "
                                    "TO_config", self.url) from None
            if isinstance(apdu, AbrtApdu):
                raise DeviceDisconnected(f"the agent aborted while configuring ({apdu.reason!r})",
                                         self.url)
            if isinstance(apdu, RlrqApdu):
                await self._send(RlreApdu())
                raise DeviceError(f"the agent released the association: it has no "
                                  f"configuration this manager accepts (id {config_id})",
                                  self.url)
            if not isinstance(apdu, PrstApdu):
                continue
            data = apdu.data
            message = data.message
            if not (isinstance(message, EventReportArgumentSimple)
                    and isinstance(message.event_info, ConfigReport)):
                await self._reject_invoke(data)
                continue
            report = message.event_info
            problem = config_problem(report)
            result = (ConfigResult.ACCEPTED_CONFIG if problem is None
                      else ConfigResult.UNSUPPORTED_CONFIG)
            await self._send(PrstApdu(data.event_report_result(
                ConfigReportRsp(report.config_report_id, result))))
            if problem is None:
                self.known_configs[report.config_report_id] = report
                return report
            self._notices.append(f"configuration {report.config_report_id} refused: {problem}")
            # The agent may send another configuration, or release (clause 8.6).

    async def _reject_invoke(self, data: DataApdu) -> None:
        """A confirmed invoke the manager does not serve gets a reject (Annex A rorj)."""
        if data.choice in (DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT,
                           DataApduChoice.ROIV_CMIP_GET, DataApduChoice.ROIV_CMIP_CONFIRMED_SET,
                           DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION):
            await self._send(PrstApdu(DataApdu(data.invoke_id, DataApduChoice.RORJ,
                                               RejectResult(RorjProblem.UNRECOGNIZED_OPERATION))))

    async def _ensure_associated(self) -> _Association:
        assoc = self._assoc
        if assoc is not None and not assoc.ended:
            return assoc
        if self._used:
            # After a release or an abort the agent waits for a new reading or for the manager
            # to leave; leaving (closing the port) and coming back makes it associate again.
            await self.link.reopen(self.options.reconnect_delay_s)
        self._assoc = None
        return await self._associate()

    # --- operating ---------------------------------------------------------------------------

    async def _handle(self, assoc: _Association, apdu: Apdu) -> Apdu | None:
        """Serve one APDU in the Operating state; returns results the caller waits for."""
        if isinstance(apdu, AbrtApdu):
            assoc.ended = True
            raise DeviceDisconnected(f"the agent aborted the association ({apdu.reason!r})",
                                     self.url)
        if isinstance(apdu, RlrqApdu):
            await self._send(RlreApdu())
            assoc.ended = True
            return apdu
        if isinstance(apdu, AarqApdu):
            await self._abort(AbortReason.UNDEFINED)
            raise DeviceError("the agent sent an AARQ while associated", self.url)
        if not isinstance(apdu, PrstApdu):
            return apdu
        data = apdu.data
        message = data.message
        if isinstance(message, EventReportArgumentSimple):
            self._on_event(assoc, message)
            if data.choice is DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT:
                reply: ConfigReportRsp | bytes = b""
                if isinstance(message.event_info, ConfigReport):
                    # A new configuration while operating is not something this manager takes.
                    reply = ConfigReportRsp(message.event_info.config_report_id,
                                            ConfigResult.UNSUPPORTED_CONFIG)
                await self._send(PrstApdu(data.event_report_result(reply)))
            return None
        if data.choice.name.startswith("ROIV"):
            await self._reject_invoke(data)
            return None
        return apdu

    def _on_event(self, assoc: _Association, message: EventReportArgumentSimple) -> None:
        info = message.event_info
        assoc.last_report = asyncio.get_running_loop().time()
        if isinstance(info, ScanReportInfoFixed | ScanReportInfoVar):
            try:
                observations = (decode_fixed_observations(assoc.config, info)
                                if isinstance(info, ScanReportInfoFixed)
                                else decode_var_observations(assoc.config, info))
            except ProtocolError as exc:
                assoc.scans.append(_Scan(info.scan_report_no, None, exc.reason))
                return
            assoc.scans.append(_Scan(info.scan_report_no, observations))
        else:
            assoc.other_events += 1

    async def _until(self, assoc: _Association, wanted: Callable[[Apdu], bool],
                     timeout: float, what: str) -> Apdu:
        """Serve the agent until an APDU ``wanted`` accepts arrives; ABRT on time-out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                apdu = await self._read_apdu(max(deadline - loop.time(), 0.0), what)
            except DeviceTimeout:
                await self._abort(AbortReason.RESPONSE_TIMEOUT)
                raise DeviceTimeout(f"the agent did not answer within {timeout} s (waiting "
                                    f"for {what}); association aborted", self.url) from None
            result = await self._handle(assoc, apdu)
            if result is not None and wanted(result):
                return result
            if assoc.ended:
                raise DeviceError(f"the agent released the association while the manager "
                                  f"waited for {what}", self.url)

    async def _get_mds(self, assoc: _Association) -> AttributeList:
        """GET of all MDS attributes (handle 0); also the clock observation."""
        invoke = assoc.next_invoke()
        now = self.options.now
        start = now()
        await self._send(PrstApdu(DataApdu.get_mds(invoke)))

        def answers(apdu: Apdu) -> bool:
            return isinstance(apdu, PrstApdu) and apdu.data.invoke_id == invoke

        result = await self._until(assoc, answers, self.options.timeout_s, "the MDS attributes")
        assert isinstance(result, PrstApdu)
        message = result.data.message
        if not isinstance(message, GetResultSimple):
            raise DeviceError(f"the agent refused the MDS GET ({result.data.choice.name}: "
                              f"{message!r})", self.url)
        gateway = midpoint(start, now())
        attrs = message.attribute_list
        assoc.mds = attrs
        try:
            stamp = attrs.get(AttrId.MDC_ATTR_TIME_ABS)
            if isinstance(stamp, AbsoluteTime):
                assoc.clock = ClockObservation(device_time=stamp.to_datetime(),
                                               gateway_time=gateway,
                                               source=ClockSource.PHD_ABSOLUTE_TIME)
        except ProtocolError as exc:
            self._notices.append(f"the MDS Absolute-Time is unreadable: {exc.reason}")
        return attrs

    async def _collect(self, assoc: _Association) -> None:
        """Serve reports until the agent releases or stays quiet for ``idle_s``."""
        loop = asyncio.get_running_loop()
        while not assoc.ended:
            remaining = assoc.last_report + self.options.idle_s - loop.time()
            if remaining <= 0:
                return
            try:
                apdu = await self._read_apdu(remaining, "scan reports")
            except DeviceTimeout:
                return
            await self._handle(assoc, apdu)

    async def _release(self, assoc: _Association) -> None:
        """RLRQ → RLRE (ABRT and a notice when the agent does not answer)."""
        if assoc.ended:
            return
        await self._send(RlrqApdu())
        try:
            await self._until(assoc, lambda a: isinstance(a, RlreApdu), self.options.timeout_s,
                              "the release response (RLRE)")
        except DeviceTimeout:
            self._notices.append("the agent did not answer the release; association aborted")
        except DeviceError:
            pass  # the agent released at the same time: the association is over either way
        assoc.ended = True

    def _dropped(self, exc: DeviceDisconnected) -> DeviceDisconnected:
        received = len(self._assoc.scans) if self._assoc is not None else 0
        return DeviceDisconnected(f"{_reason(exc)} (after {received} scan report(s) of this "
                                  "association)", self.url)

    # --- identity --------------------------------------------------------------------------------

    def _info_of(self, assoc: _Association, attrs: AttributeList) -> DeviceInfo:
        system_id = attrs.get(AttrId.MDC_ATTR_SYS_ID)
        raw_id = system_id if isinstance(system_id, bytes) and system_id else assoc.system_id
        model = attrs.get(AttrId.MDC_ATTR_ID_MODEL)
        spec = attrs.get(AttrId.MDC_ATTR_ID_PROD_SPECN)

        def text(raw: bytes | None) -> str | None:
            value = raw.decode("utf-8", "replace").strip("\x00 ") if raw else ""
            return value or None

        def prod(kind: ProdSpecType) -> str | None:
            return text(spec.get(kind)) if isinstance(spec, ProductionSpec) else None

        return DeviceInfo(
            device_id=raw_id.hex(), kind=DeviceKind.BLOOD_GLUCOSE_METER,
            manufacturer=text(model.manufacturer) if isinstance(model, SystemModel) else None,
            model=text(model.model_number) if isinstance(model, SystemModel) else None,
            serial_number=prod(ProdSpecType.SERIAL_NUMBER),
            firmware_revision=prod(ProdSpecType.FW_REVISION),
            hardware_revision=prod(ProdSpecType.HW_REVISION),
            software_revision=prod(ProdSpecType.SW_REVISION),
            system_id=raw_id.hex(), transport="serial", address=self.url)

    async def read_info(self) -> DeviceInfo:
        try:
            assoc = await self._ensure_associated()
            attrs = assoc.mds if assoc.mds is not None else await self._get_mds(assoc)
        except _Garbled:
            await self._abort(AbortReason.UNDEFINED)
            raise
        except DeviceDisconnected as exc:
            raise self._dropped(exc) from exc
        self._info = self._info_of(assoc, attrs)
        return self._info

    # --- sync ------------------------------------------------------------------------------------

    def _load_state(self, state: SyncState) -> None:
        saved = state.get(STATE_CONFIG) if state else None
        if not isinstance(saved, Mapping):
            return
        try:
            report = config_from_hex(str(saved.get("config", "")))
        except ProtocolError:
            self._notices.append("the stored configuration is unreadable and was ignored")
            return
        self.known_configs.setdefault(report.config_report_id, report)

    async def _transfer(self) -> _Association:
        """One association's worth of reports: associate, GET the MDS, collect, release."""
        try:
            assoc = await self._ensure_associated()
            if assoc.mds is None:
                await self._get_mds(assoc)
            await self._collect(assoc)
        except _Garbled as exc:
            # The stream cannot be trusted any more (IEEE 11073-20601 §8: abort); what was
            # decoded so far is kept and the next attempt associates again.
            await self._abort(AbortReason.UNDEFINED)
            self._notices.append(str(exc))
            assoc = self._assoc if self._assoc is not None else _Association(
                b"", ConfigReport(0, ()), learnt=False, ended=True)
            return assoc
        except DeviceDisconnected as exc:
            raise self._dropped(exc) from exc
        await self._release(assoc)
        return assoc

    async def sync(self, state: SyncState) -> SyncResult:
        self._load_state(state)
        good: dict[int, tuple[Observation, ...]] = {}
        failed: dict[int, str] = {}
        info: DeviceInfo | None = None
        clock: ClockObservation | None = None
        learnt: _Association | None = None
        other_events = 0
        attempts = 0
        for _ in range(1 + self.options.retries):
            attempts += 1
            assoc = await self._transfer()
            if assoc.mds is not None:
                info = self._info_of(assoc, assoc.mds)
                clock = clock or assoc.clock
            if assoc.learnt:
                learnt = assoc
            other_events = max(other_events, assoc.other_events)
            for scan in assoc.scans:
                if scan.observations is None:
                    failed.setdefault(scan.number, scan.problem or "does not decode")
                else:
                    good.setdefault(scan.number, scan.observations)
            if not set(failed) - set(good) and assoc.mds is not None:
                break
        notices, self._notices = self._notices, []
        if info is None:
            raise DeviceError(f"no intact association with the agent in {attempts} attempt(s): "
                              f"{'; '.join(notices)}", self.url)
        self._info = info
        observations = [o for number in sorted(good) for o in good[number]]
        built = to_readings(observations, info.device_id, clock, self.options.now())
        lost = sorted(set(failed) - set(good))
        if lost:
            raise TransferIncomplete(
                f"scan report(s) {lost} never decoded in {attempts} association(s) "
                f"({failed[lost[0]]}); {len(built.readings)} reading(s) kept", self.url,
                kept=built.readings)
        if failed:
            notices.append(f"{len(failed)} scan report(s) did not decode and were received "
                           f"again; {attempts} association(s)")
        if built.without_value:
            notices.append(f"{built.without_value} reading(s) without a value (NaN/NRes)")
        if other_events:
            notices.append(f"{other_events} event report(s) of other kinds (e.g. multi-person "
                           "scan reports) confirmed and ignored")
        if built.other_objects:
            notices.append(f"{built.other_objects} observation(s) of other objects skipped")
        newest_first = [r for r in reversed(built.readings) if r.device_time is not None]
        new = since_anchor(newest_first, state, len(newest_first))
        notices += new.notices
        next_state: dict[str, Any] = dict(new.state)
        if learnt is not None:
            next_state[STATE_CONFIG] = {"system_id": learnt.system_id.hex(),
                                        "config": config_to_hex(learnt.config)}
        undated = [r for r in built.readings if r.device_time is None]
        records = tuple(reversed(new.readings)) + tuple(undated)
        return SyncResult(info=info, records=records, state=next_state, clock=clock,
                          notices=tuple(notices))

    async def close(self) -> None:
        assoc = self._assoc
        if assoc is not None and not assoc.ended and self.link.is_open:
            with contextlib.suppress(DeviceError):
                await self._release(assoc)
        await self.link.close()


def _reason(exc: DeviceError) -> str:
    """The message of a device error without its device prefix."""
    text = str(exc)
    prefix = f"{exc.device}: " if exc.device else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text
