"""Emulated IEEE 11073-10417 glucose meter: an IEEE 11073-20601 agent on a serial line.

Over a byte stream the APDUs travel back to back with no extra framing; each starts with its
CHOICE tag and length (IEEE 11073-20601 Annex A), which is how both sides cut them
(:func:`bridge.protocols.phd.apdu_frame_size`). Every APDU is built with
:mod:`bridge.protocols.phd`.

The agent, through the states of the IEEE 11073-20601 communication model (§8):

* Associating: on connect it sends an AARQ proposing MDER, protocol 20601 and its
  dev-config-id — the glucose standard configuration 1700 by default, or an extended id
  (0x4000…0x7FFF) by option. Without an AARE within ``association_timeout_s`` (TO_assoc,
  10 s) it sends the AARQ again, ``association_retries`` times, then aborts.
* Configuring: after AARE "accepted-unknown-config" it sends its configuration as a confirmed
  MDC_NOTI_CONFIG event report and waits ``configuration_timeout_s`` (TO_config, 10 s) for the
  ConfigReportRsp; accepted → Operating, unsupported → RLRQ "no-more-configurations" (it has
  no other configuration), no answer → ABRT "configuration-timeout".
* Operating: it sends the stored readings (oldest first) as confirmed
  MDC_NOTI_SCAN_REPORT_FIXED event reports, ``readings_per_report`` readings each, scan-report-no
  counting up from 0, each waiting for its rors before the next; then it waits, sending each
  reading added meanwhile the same way. No rors within ``response_timeout_s`` (3 s, the
  usual confirm time-out of a confirmed event report; UNCONFIRMED for -10417) → ABRT
  "response-timeout".
* Any state: a GET of the MDS (handle 0) is answered with its attributes (system model,
  system id, dev-config-id, production specification, absolute time from the meter clock,
  specialisation list glucose 4113 version 1, battery charge); RLRQ is answered with RLRE;
  ABRT ends the association.

What this agent does with an APDU it does not expect (decided here, after the agent state
tables of IEEE 11073-20601 Annex E, where an APDU invalid for the state leads to an abort
while a remote operation the agent cannot perform is answered by an error result):

* bytes that do not start a known APDU, or an APDU that does not decode → ABRT "undefined"
  (the stream cannot be trusted any more; the buffer is discarded);
* AARQ, AARE or RLRE while associated, or PRST before the association → ABRT "undefined";
* GET of an object other than the MDS → roer no-such-object-instance; a confirmed action →
  roer no-such-action; a confirmed SET or a confirmed event report from the manager → rorj
  unrecognized-operation; unconfirmed invokes are ignored;
* a rors/roer/rorj whose invoke-id the agent is not waiting for is ignored.

After a release or an abort the agent stays unassociated until a new reading arrives (then
it associates again) or the manager leaves.

Readings in the standard configuration (one object: capillary whole blood, mg/dL) leave
control-solution readings out: configuration 1700 has no object for them. The extended
configuration (:func:`extended_config`) adds a control-solution object (handle 2) and the meal
context (handle 3). A value above the meter's range is sent as SFLOAT +INF, below it as −INF
(UNCONFIRMED: the specification text on HI/LO in a fixed scan report was not at hand).

Faults: ``corrupt_frame_rate`` damages scan reports (the month of the first time stamp gets a
non-BCD digit, which a manager's decoder refuses — 20601 has no checksum); ``drop_response_rate``
loses answers to the manager (GET, RLRE, error results); ``response_delay_s`` delays them;
``disconnect_after_records`` hangs up once that many readings are out; ``battery_low`` shows
in the MDS battery charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from bridge.errors import ProtocolError
from bridge.protocols.mdc import (
    AttrId,
    DevSpecProfile,
    Dim,
    ObjClass,
    Partition,
    PhdDm,
    Scada,
)
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.phd import (
    DATA_REQ_ID_AGENT_INITIATED,
    EXTENDED_CONFIG_END,
    EXTENDED_CONFIG_START,
    GLUCOSE_CONTEXT_METRIC_SPEC,
    GLUCOSE_METRIC_SPEC,
    GLUCOSE_STANDARD_CONFIG_ID,
    MDS_HANDLE,
    AareApdu,
    AarqApdu,
    AbortReason,
    AbrtApdu,
    Apdu,
    AssociateResult,
    ConfigObject,
    ConfigReport,
    ConfigReportRsp,
    ConfigResult,
    DataApdu,
    DataApduChoice,
    ErrorResult,
    ErrorValue,
    EventReportResultSimple,
    GetArgumentSimple,
    GetResultSimple,
    ObservationScanFixed,
    PrstApdu,
    RejectResult,
    ReleaseRequestReason,
    RlreApdu,
    RlrqApdu,
    RorjProblem,
    ScanReportInfoFixed,
    apdu_frame_size,
    decode_apdu,
    encode_fixed_observation,
    standard_config,
)
from bridge.protocols.phd_attributes import (
    AbsoluteTime,
    AttributeList,
    AttributeValue,
    AttrValMap,
    AttrValMapEntry,
    ProdSpecEntry,
    ProdSpecType,
    ProductionSpec,
    SystemModel,
    TypeCode,
    TypeVer,
    TypeVerList,
)
from bridge.records import MEAL_MDC, BloodGlucoseReading
from simulators.serial.ports import (
    ByteLink,
    GlucoseRange,
    MeterCore,
    SerialMeterEmulator,
    StoredReading,
    classify_glucose,
)

logger = logging.getLogger(__name__)

#: Measuring range of the emulated meter (mg/dL).
LOW_LIMIT_MG_DL = 20
HIGH_LIMIT_MG_DL = 600
#: TO_assoc and TO_config of IEEE 11073-20601 (10 s each).
ASSOCIATION_TIMEOUT_S = 10.0
CONFIGURATION_TIMEOUT_S = 10.0
#: Time-out for the manager's answer to a confirmed event report (3 s, UNCONFIRMED).
RESPONSE_TIMEOUT_S = 3.0
DEFAULT_ASSOCIATION_RETRIES = 2
DEFAULT_READINGS_PER_REPORT = 4
DEFAULT_BATTERY_PERCENT = 80
#: Version of the -10417 specialisation the MDS announces.
SPECIALIZATION_VERSION = 1
#: Object handles of the extended configuration.
HANDLE_BLOOD = 1
HANDLE_CONTROL = 2
HANDLE_MEAL = 3
#: obs-val-data of every object starts with a 2-byte value, then AbsoluteTime: century, year,
#: month… — injected corruption gives the month a non-BCD high digit.
_MONTH_OFFSET = 4
_NON_BCD_MASK = 0xA0
_HEADER = 4


@dataclass(frozen=True, slots=True)
class PhdOptions:
    """Configuration and timers of the agent (shorten the timers in tests)."""

    dev_config_id: int = GLUCOSE_STANDARD_CONFIG_ID
    readings_per_report: int = DEFAULT_READINGS_PER_REPORT
    association_timeout_s: float = ASSOCIATION_TIMEOUT_S
    association_retries: int = DEFAULT_ASSOCIATION_RETRIES
    configuration_timeout_s: float = CONFIGURATION_TIMEOUT_S
    response_timeout_s: float = RESPONSE_TIMEOUT_S
    battery_percent: int = DEFAULT_BATTERY_PERCENT

    def __post_init__(self) -> None:
        if self.readings_per_report < 1:
            raise ValueError("readings_per_report must be at least 1")
        if (self.dev_config_id != GLUCOSE_STANDARD_CONFIG_ID
                and not EXTENDED_CONFIG_START <= self.dev_config_id <= EXTENDED_CONFIG_END):
            raise ValueError(f"dev-config-id {self.dev_config_id} is neither the standard 1700 "
                             f"nor an extended id 0x4000…0x7FFF")


def _numeric(handle: int, glucose_type: Scada) -> ConfigObject:
    return ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_NU, handle, AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.SCADA, glucose_type),
        AttrId.MDC_ATTR_METRIC_SPEC_SMALL: GLUCOSE_METRIC_SPEC,
        AttrId.MDC_ATTR_UNIT_CODE: Dim.MDC_DIM_MILLI_G_PER_DL,
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttrValMap((
            AttrValMapEntry(AttrId.MDC_ATTR_NU_VAL_OBS_BASIC, SFloat.SIZE),
            AttrValMapEntry(AttrId.MDC_ATTR_TIME_STAMP_ABS, AbsoluteTime.SIZE),
        )),
    }))


def extended_config(config_id: int) -> ConfigReport:
    """The extended configuration of this meter: capillary whole blood (handle 1) and control
    solution (handle 2) in mg/dL, and the meal context as an MDC_CTXT_GLU_MEAL_* code
    (handle 3), each with an absolute time stamp (IEEE 11073-10417 object layout)."""
    meal = ConfigObject(ObjClass.MDC_MOC_VMO_METRIC_ENUM, HANDLE_MEAL, AttributeList.of({
        AttrId.MDC_ATTR_ID_TYPE: TypeCode(Partition.PHD_DM, PhdDm.MDC_CTXT_GLU_MEAL),
        AttrId.MDC_ATTR_METRIC_SPEC_SMALL: GLUCOSE_CONTEXT_METRIC_SPEC,
        AttrId.MDC_ATTR_ATTRIBUTE_VAL_MAP: AttrValMap((
            AttrValMapEntry(AttrId.MDC_ATTR_ENUM_OBS_VAL_SIMP_OID, 2),
            AttrValMapEntry(AttrId.MDC_ATTR_TIME_STAMP_ABS, AbsoluteTime.SIZE),
        )),
    }))
    return ConfigReport(config_id, (
        _numeric(HANDLE_BLOOD, Scada.MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD),
        _numeric(HANDLE_CONTROL, Scada.MDC_CONC_GLU_CONTROL),
        meal,
    ))


def system_id_of(core: MeterCore) -> bytes:
    """The EUI-64 system id: DeviceInfo.system_id, else derived from the device id."""
    if core.info.system_id:
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(core.info.system_id)
            if len(raw) == 8:
                return raw
    return hashlib.sha256(core.info.device_id.encode("utf-8")).digest()[:8]


def glucose_value(reading: BloodGlucoseReading) -> SFloat:
    kind, mg_dl = classify_glucose(reading, LOW_LIMIT_MG_DL, HIGH_LIMIT_MG_DL)
    if kind is GlucoseRange.HIGH:
        return SFloat.special_value(Special.POSITIVE_INFINITY)
    if kind is GlucoseRange.LOW:
        return SFloat.special_value(Special.NEGATIVE_INFINITY)
    return SFloat.from_value(mg_dl)


class _End(Enum):
    """How a phase of the agent ended."""

    OPERATING = "operating"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"
    EOF = "eof"
    HUNG_UP = "hung-up"


class _Garbled:
    """Bytes that are not a decodable APDU."""

    def __init__(self, data: bytes, reason: str) -> None:
        self.data = data
        self.reason = reason


class PhdGlucoseMeterEmulator(SerialMeterEmulator):
    """An IEEE 11073-10417 glucose meter agent on a serial line."""

    PROTOCOL = "phd"

    def __init__(self, core: MeterCore, options: PhdOptions | None = None) -> None:
        super().__init__(core)
        self.options = options or PhdOptions()
        self.system_id = system_id_of(core)
        config = standard_config(self.options.dev_config_id)
        self.standard = config is not None
        self.config = config if config is not None else extended_config(
            self.options.dev_config_id)
        #: Scan reports sent and ABRT reasons sent, over all sessions (for tests and logs).
        self.reports_sent = 0
        self.aborts_sent: list[AbortReason] = []

    def mds_attributes(self) -> AttributeList:
        info = self.core.info
        values: dict[int, AttributeValue] = {
            AttrId.MDC_ATTR_ID_HANDLE: MDS_HANDLE,
            AttrId.MDC_ATTR_SYS_TYPE_SPEC_LIST: TypeVerList((
                TypeVer(DevSpecProfile.MDC_DEV_SPEC_PROFILE_GLUCOSE, SPECIALIZATION_VERSION),)),
            AttrId.MDC_ATTR_ID_MODEL: SystemModel(
                (info.manufacturer or "").encode("utf-8"), (info.model or "").encode("utf-8")),
            AttrId.MDC_ATTR_SYS_ID: self.system_id,
            AttrId.MDC_ATTR_DEV_CONFIG_ID: self.options.dev_config_id,
        }
        specs = [(ProdSpecType.SERIAL_NUMBER, info.serial_number),
                 (ProdSpecType.HW_REVISION, info.hardware_revision),
                 (ProdSpecType.SW_REVISION, info.software_revision),
                 (ProdSpecType.FW_REVISION, info.firmware_revision)]
        entries = tuple(ProdSpecEntry(kind, 0, text.encode("utf-8"))
                        for kind, text in specs if text)
        if entries:
            values[AttrId.MDC_ATTR_ID_PROD_SPECN] = ProductionSpec(entries)
        values[AttrId.MDC_ATTR_TIME_ABS] = AbsoluteTime.from_datetime(self.core.device_now())
        values[AttrId.MDC_ATTR_VAL_BATT_CHARGE] = self.core.faults.battery_percent(
            self.options.battery_percent)
        return AttributeList.of(values)

    def observations(self, stored: StoredReading) -> list[ObservationScanFixed]:
        """The fixed-format observations of one reading (none if the configuration has no
        object for it)."""
        reading = stored.reading
        stamp = AbsoluteTime.from_datetime(stored.device_time)
        if reading.is_control_solution and self.standard:
            return []
        handle = HANDLE_CONTROL if reading.is_control_solution else HANDLE_BLOOD
        values: Mapping[int, AttributeValue] = {
            AttrId.MDC_ATTR_NU_VAL_OBS_BASIC: glucose_value(reading),
            AttrId.MDC_ATTR_TIME_STAMP_ABS: stamp,
        }
        out = [encode_fixed_observation(self.config, handle, values)]
        meal_code = MEAL_MDC.get(reading.meal) if reading.meal is not None else None
        if not self.standard and meal_code is not None:
            out.append(encode_fixed_observation(self.config, HANDLE_MEAL, {
                AttrId.MDC_ATTR_ENUM_OBS_VAL_SIMP_OID: meal_code & 0xFFFF,
                AttrId.MDC_ATTR_TIME_STAMP_ABS: stamp,
            }))
        return out

    async def serve(self, link: ByteLink) -> None:
        await _AgentSession(self, link).run()


class _AgentSession:
    """One connected manager."""

    def __init__(self, agent: PhdGlucoseMeterEmulator, link: ByteLink) -> None:
        self.agent = agent
        self.core = agent.core
        self.faults = agent.core.faults
        self.opts = agent.options
        self.link = link
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.invoke_id = 0
        self.scan_report_no = 0
        #: Readings added while this manager is connected, not yet sent.
        self.live: deque[StoredReading] = deque()
        self.live_added = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        unsubscribe = self.core.on_new_record(self._on_new_record)
        try:
            while True:
                end = await self.associate()
                if end is _End.OPERATING:
                    end = await self.operate()
                if end in (_End.EOF, _End.HUNG_UP) or self.link.hung_up:
                    return
                if not await self.unassociated():
                    return
        finally:
            unsubscribe()

    def _on_new_record(self, stored: StoredReading) -> None:
        self.live.append(stored)
        self.live_added.set()

    async def unassociated(self) -> bool:
        """Wait for a new reading (True: associate again) or the manager leaving (False)."""
        while not self.live:
            item = await self.next_or_live()
            if item is None:
                return False
            if isinstance(item, _Garbled):
                self.buffer.clear()
                continue
            if isinstance(item, StoredReading):
                break
            if not isinstance(item, AbrtApdu):
                # Nothing but an association may start here (IEEE 11073-20601 Annex E).
                await self.abort(AbortReason.UNDEFINED)
        return True

    # --- sending ----------------------------------------------------------------------------

    def next_invoke(self) -> int:
        invoke = self.invoke_id
        self.invoke_id = (self.invoke_id + 1) & 0xFFFF
        return invoke

    async def send(self, apdu: Apdu) -> None:
        await self.link.send(bytes(apdu))

    async def respond(self, apdu: Apdu) -> None:
        """An answer to the manager, subject to the drop and delay faults."""
        if self.faults.should_drop():
            logger.info("PHD agent: answer dropped (fault injection)")
            return
        await self.agent.pause()
        await self.send(apdu)

    async def abort(self, reason: AbortReason) -> _End:
        self.agent.aborts_sent.append(reason)
        await self.send(AbrtApdu(reason))
        return _End.ABORTED

    # --- receiving --------------------------------------------------------------------------

    def _cut(self) -> Apdu | _Garbled | None:
        """The next whole APDU in the buffer, if any."""
        if len(self.buffer) < _HEADER:
            return None
        try:
            size = apdu_frame_size(bytes(self.buffer[:_HEADER]))
        except ProtocolError as exc:
            data = bytes(self.buffer)
            self.buffer.clear()
            return _Garbled(data, exc.reason)
        if len(self.buffer) < size:
            return None
        raw = bytes(self.buffer[:size])
        del self.buffer[:size]
        try:
            return decode_apdu(raw)
        except ProtocolError as exc:
            return _Garbled(raw, exc.reason)

    async def next_apdu(self, deadline: float | None) -> Apdu | _Garbled | None:
        """The next APDU (``None``: the manager left); TimeoutError past ``deadline``."""
        while True:
            item = self._cut()
            if item is not None:
                return item
            timeout = None if deadline is None else deadline - self.loop.time()
            data = await self.link.receive(timeout)
            if not data:
                return None
            self.buffer += data

    async def next_or_live(self) -> Apdu | _Garbled | StoredReading | None:
        """The next APDU or the next reading added meanwhile, whichever comes first."""
        while True:
            item = self._cut()
            if item is not None:
                return item
            if self.live:
                return self.live.popleft()
            self.live_added.clear()
            receive = self.loop.create_task(self.link.receive())
            added = self.loop.create_task(self.live_added.wait())
            done, _pending = await asyncio.wait({receive, added},
                                                return_when=asyncio.FIRST_COMPLETED)
            for task in (receive, added):
                if task not in done:
                    # Safe: a cancelled receive leaves the bytes in the link buffer.
                    task.cancel()
                    await asyncio.wait({task})
            if receive in done:
                data = receive.result()
                if not data:
                    return None
                self.buffer += data

    # --- association ------------------------------------------------------------------------

    async def associate(self) -> _End:
        aarq = AarqApdu.for_agent(self.agent.system_id, self.opts.dev_config_id)
        for _attempt in range(1 + self.opts.association_retries):
            await self.send(aarq)
            deadline = self.loop.time() + self.opts.association_timeout_s
            try:
                item = await self.next_apdu(deadline)
            except TimeoutError:
                continue
            if item is None:
                return _End.EOF
            if isinstance(item, _Garbled):
                logger.info("PHD agent: garbled APDU while associating (%s)", item.reason)
                return await self.abort(AbortReason.UNDEFINED)
            if isinstance(item, AareApdu):
                if item.result == AssociateResult.ACCEPTED:
                    return _End.OPERATING
                if item.result == AssociateResult.ACCEPTED_UNKNOWN_CONFIG:
                    return await self.configure()
                logger.info("PHD agent: association rejected (%r)", item.result)
                return _End.REJECTED
            if isinstance(item, AbrtApdu):
                return _End.ABORTED
            return await self.abort(AbortReason.UNDEFINED)
        return await self.abort(AbortReason.RESPONSE_TIMEOUT)

    async def configure(self) -> _End:
        invoke = self.next_invoke()
        config = self.agent.config
        await self.send(PrstApdu(DataApdu.confirmed_event_report(invoke, config)))
        deadline = self.loop.time() + self.opts.configuration_timeout_s
        while True:
            try:
                item = await self.next_apdu(deadline)
            except TimeoutError:
                return await self.abort(AbortReason.CONFIGURATION_TIMEOUT)
            result = await self.dispatch(item)
            if isinstance(result, _End):
                return result
            if result is None or result.invoke_id != invoke:
                continue
            message = result.message
            if (isinstance(message, EventReportResultSimple)
                    and isinstance(message.event_reply_info, ConfigReportRsp)
                    and message.event_reply_info.config_result == ConfigResult.ACCEPTED_CONFIG):
                return _End.OPERATING
            # Refused (or answered with an error): this agent has no other configuration.
            return await self.release(ReleaseRequestReason.NO_MORE_CONFIGURATIONS)

    async def release(self, reason: ReleaseRequestReason) -> _End:
        await self.send(RlrqApdu(reason))
        deadline = self.loop.time() + self.opts.response_timeout_s
        while True:
            try:
                item = await self.next_apdu(deadline)
            except TimeoutError:
                return await self.abort(AbortReason.RESPONSE_TIMEOUT)
            if isinstance(item, RlreApdu):
                return _End.RELEASED
            result = await self.dispatch(item)
            if isinstance(result, _End):
                return result

    # --- operating --------------------------------------------------------------------------

    async def operate(self) -> _End:
        # Readings stored before this point go out from memory; later ones from the queue.
        self.live.clear()
        sent = 0
        backlog = self.core.oldest_first()
        end, sent = await self.send_readings(backlog, sent)
        if end is not None:
            return end
        while True:
            item = await self.next_or_live()
            if isinstance(item, StoredReading):
                batch = [item, *self.live]
                self.live.clear()
                end, sent = await self.send_readings(batch, sent)
                if end is not None:
                    return end
                continue
            result = await self.dispatch(item)
            if isinstance(result, _End):
                return result

    async def send_readings(self, readings: list[StoredReading],
                            sent: int) -> tuple[_End | None, int]:
        """Scan reports for ``readings``, each confirmed before the next."""
        per_report = self.opts.readings_per_report
        limit = self.faults.config.disconnect_after_records
        queue = [r for r in readings if self.agent.observations(r)]
        while queue:
            take = per_report
            if limit is not None and sent < limit:
                take = min(take, limit - sent)  # hang up exactly after the limit
            chunk, queue = queue[:take], queue[take:]
            invoke = self.next_invoke()
            await self.send(PrstApdu(DataApdu.confirmed_event_report(
                invoke, self.scan_report(chunk))))
            self.agent.reports_sent += 1
            sent += len(chunk)
            if self.faults.disconnect_now(sent):
                await self.link.hang_up()
                return _End.HUNG_UP, sent
            end = await self.confirmation(invoke)
            if end is not None:
                return end, sent
        return None, sent

    def scan_report(self, chunk: list[StoredReading]) -> ScanReportInfoFixed:
        observations = [o for r in chunk for o in self.agent.observations(r)]
        if observations and self.faults.should_corrupt():
            first = observations[0]
            damaged = self.faults.corrupt(first.obs_val_data, _MONTH_OFFSET, _MONTH_OFFSET + 1,
                                          mask=_NON_BCD_MASK)
            observations[0] = ObservationScanFixed(first.obj_handle, damaged)
        report = ScanReportInfoFixed(DATA_REQ_ID_AGENT_INITIATED, self.scan_report_no,
                                     tuple(observations))
        self.scan_report_no = (self.scan_report_no + 1) & 0xFFFF
        return report

    async def confirmation(self, invoke: int) -> _End | None:
        """Wait for the manager's answer to invoke ``invoke``; ``None`` once it came."""
        deadline = self.loop.time() + self.opts.response_timeout_s
        while True:
            try:
                item = await self.next_apdu(deadline)
            except TimeoutError:
                return await self.abort(AbortReason.RESPONSE_TIMEOUT)
            result = await self.dispatch(item)
            if isinstance(result, _End):
                return result
            if result is not None and result.invoke_id == invoke:
                if result.choice is not DataApduChoice.RORS_CMIP_CONFIRMED_EVENT_REPORT:
                    logger.info("PHD agent: report %d answered with %s", invoke,
                                result.choice.name)
                return None

    # --- what the manager sends -------------------------------------------------------------

    async def dispatch(self, item: Apdu | _Garbled | None) -> _End | DataApdu | None:
        """Handle one incoming APDU while associated. Returns how the association ended, or
        a result (rors/roer/rorj) for the caller to match, or ``None``."""
        if item is None:
            return _End.EOF
        if isinstance(item, _Garbled):
            logger.info("PHD agent: garbled APDU (%s)", item.reason)
            self.buffer.clear()
            return await self.abort(AbortReason.UNDEFINED)
        if isinstance(item, RlrqApdu):
            await self.respond(RlreApdu())
            return _End.RELEASED
        if isinstance(item, AbrtApdu):
            return _End.ABORTED
        if not isinstance(item, PrstApdu):
            return await self.abort(AbortReason.UNDEFINED)
        data = item.data
        if data.choice in (DataApduChoice.RORS_CMIP_CONFIRMED_EVENT_REPORT,
                           DataApduChoice.RORS_CMIP_GET, DataApduChoice.RORS_CMIP_CONFIRMED_SET,
                           DataApduChoice.RORS_CMIP_CONFIRMED_ACTION, DataApduChoice.ROER,
                           DataApduChoice.RORJ):
            return data
        await self.invoke(data)
        return None

    async def invoke(self, data: DataApdu) -> None:
        """Answer a remote operation invoke of the manager."""
        message = data.message
        choice = data.choice
        if choice is DataApduChoice.ROIV_CMIP_GET and isinstance(message, GetArgumentSimple):
            if message.obj_handle != MDS_HANDLE:
                await self.respond(PrstApdu(DataApdu(
                    data.invoke_id, DataApduChoice.ROER,
                    ErrorResult(ErrorValue.NO_SUCH_OBJECT_INSTANCE))))
                return
            attributes = self.agent.mds_attributes()
            if message.attribute_id_list:
                wanted = set(message.attribute_id_list)
                attributes = AttributeList(tuple(a for a in attributes
                                                 if a.attribute_id in wanted))
            await self.respond(PrstApdu(DataApdu(data.invoke_id, DataApduChoice.RORS_CMIP_GET,
                                                 GetResultSimple(MDS_HANDLE, attributes))))
        elif choice is DataApduChoice.ROIV_CMIP_CONFIRMED_ACTION:
            await self.respond(PrstApdu(DataApdu(data.invoke_id, DataApduChoice.ROER,
                                                 ErrorResult(ErrorValue.NO_SUCH_ACTION))))
        elif choice in (DataApduChoice.ROIV_CMIP_CONFIRMED_SET,
                        DataApduChoice.ROIV_CMIP_CONFIRMED_EVENT_REPORT):
            await self.respond(PrstApdu(DataApdu(
                data.invoke_id, DataApduChoice.RORJ,
                RejectResult(RorjProblem.UNRECOGNIZED_OPERATION))))
        else:
            logger.info("PHD agent: unconfirmed %s ignored", choice.name)
