"""Insulin therapy of the simulated patients: bolus calculator, insulin pumps and pens.

Three therapy modes:

- ``pump`` (CSII): an insulin pump per patient, modelled by :class:`PumpBank` for the whole
  cohort at once. Basal insulin is delivered as pulses of the basal increment (an accumulator
  per pump carries the remainder, so the insulin delivered in any hour matches the programmed
  rate within one increment); boluses are quantized to the bolus increment and delivered at the
  pump's bolus speed; everything comes out of a finite reservoir. Every delivery and state
  change becomes a pump history record (the IDS history events of IDS 1.0: bolus programmed
  and delivered, basal rate changed, TBR started/ended, total daily insulin, reservoir,
  therapy and operational state, annunciations) with increasing u32 sequence numbers.
- ``mdi`` (pen injections): :class:`PenTherapy`. Meal and correction boluses are injected at
  once, rounded down to the pen increment; long-acting insulin is modelled as an ideal flat
  infusion of the patient's basal rate (a simplification: real glargine/degludec profiles are
  nearly but not perfectly flat). Pens keep no records here, so MDI patients have no insulin
  device and no insulin records; their meter and CGM records exist as usual.
- ``oral``: no insulin at all (the simple type 2 patients of :mod:`simulators.type2`).

All insulin amounts inside the pump are integers in milli-units (mU), so increments, reservoir
and daily totals add up exactly.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    AnnunciationStatus,
    BasalRateChange,
    BolusPhase,
    BolusType,
    InsulinBolus,
    OperationalState,
    OperationalStateChange,
    ReservoirLevel,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
    TotalDailyInsulin,
)
from simulators.device_clock import DeviceLog, SimCalendar
from simulators.errors import SimulatorError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MU_PER_U = 1000


class TherapyError(SimulatorError):
    """A therapy setting that cannot be realised (e.g. an increment finer than 0.001 U)."""


class TherapyMode(StrEnum):
    PUMP = "pump"
    MDI = "mdi"
    ORAL = "oral"


@dataclass(frozen=True, slots=True)
class BasalBlock:
    """From local ``minute_of_day`` on, the basal rate is ``factor`` × the patient's basal."""

    minute_of_day: int
    factor: float


@dataclass(frozen=True, slots=True)
class TherapySettings:
    """How the simulated patient doses insulin (scenario section ``[therapy]``)."""

    mode: TherapyMode = TherapyMode.PUMP
    target_mg_dl: float = 110.0
    correction: bool = True
    #: A correction bolus without a meal when the glucose the patient sees is above this
    #: (0 = never), at most every ``correction_interval_min`` after the last bolus.
    correction_above_mg_dl: float = 250.0
    correction_interval_min: int = 180
    max_bolus_u: float = 25.0
    basal_profile: tuple[BasalBlock, ...] = (BasalBlock(0, 1.0),)
    #: Pump patients set a relative temporary basal rate ahead of exercise (None = never).
    exercise_temp_basal_percent: float | None = 50.0
    exercise_temp_basal_lead_min: int = 60
    pen_increment_u: float = 0.5
    #: Rescue carbohydrates when the glucose the patient sees is below the threshold
    #: (0 g = never), again at most every ``hypo_recheck_min``.
    hypo_treatment_g: float = 15.0
    hypo_threshold_mg_dl: float = 70.0
    hypo_recheck_min: int = 15


@dataclass(frozen=True, slots=True)
class PumpSettings:
    """The insulin pump (scenario section ``[pump]``)."""

    basal_increment_u: float = 0.05
    bolus_increment_u: float = 0.05
    basal_rate_step_u_per_h: float = 0.01
    bolus_speed_u_per_min: float = 1.5
    reservoir_capacity_u: float = 300.0
    fill_u: float = 300.0
    #: Reservoir content at the start (None: a random level between half and full).
    initial_u: float | None = None
    prime_u: float = 1.0
    low_reservoir_u: float = 20.0
    #: Scheduled reservoir and infusion set change every N days at ``refill_minute`` local
    #: time (0 = only when the reservoir runs empty).
    refill_every_days: int = 3
    refill_minute: int = 19 * 60
    empty_refill_delay_min: int = 45
    occlusion_per_day: float = 0.0
    occlusion_resolve_min: int = 30
    battery_life_days: float = 30.0
    battery_replace_delay_min: int = 600


@dataclass(frozen=True, slots=True)
class BolusAdvice:
    meal_u: float
    correction_u: float
    total_u: float


def to_milliunits(amount_u: float, what: str) -> int:
    """``amount_u`` in integer milli-units; it must be a whole number of them."""
    mu = round(amount_u * MU_PER_U)
    if not math.isfinite(amount_u) or abs(mu - amount_u * MU_PER_U) > 1e-6 or mu < 0:
        raise TherapyError(f"{what} {amount_u} U is not a non-negative multiple of 0.001 U")
    return mu


def quantize_down(amount_u: float, increment_u: float) -> float:
    """``amount_u`` rounded down to a multiple of ``increment_u`` (pumps never round up)."""
    inc = to_milliunits(increment_u, "increment")
    if inc == 0:
        raise TherapyError("increment must be positive")
    steps = math.floor(amount_u * MU_PER_U / inc + 1e-9)
    return max(0, steps) * inc / MU_PER_U


def bolus_advice(carbs_g: float, glucose_mg_dl: float | None, *, carb_ratio_g_per_u: float,
                 correction_factor_mg_dl_per_u: float, target_mg_dl: float,
                 correction: bool = True, increment_u: float = 0.05,
                 max_bolus_u: float = 25.0) -> BolusAdvice:
    """The standard bolus calculator: carbs / CR plus (BG − target) / CF above target.

    No correction is added when the glucose is unknown, at or below target, or corrections are
    off; there is no negative correction. The total is rounded down to the increment and
    capped at ``max_bolus_u``.
    """
    if carb_ratio_g_per_u <= 0 or correction_factor_mg_dl_per_u <= 0:
        raise TherapyError("carb ratio and correction factor must be positive")
    meal = max(0.0, carbs_g) / carb_ratio_g_per_u
    corr = 0.0
    if correction and glucose_mg_dl is not None and glucose_mg_dl > target_mg_dl:
        corr = (glucose_mg_dl - target_mg_dl) / correction_factor_mg_dl_per_u
    total = quantize_down(min(meal + corr, max_bolus_u), increment_u)
    return BolusAdvice(meal, corr, total)


def _indices(mask: BoolArray) -> list[int]:
    out: list[int] = np.flatnonzero(mask).tolist()
    return out


def basal_factor_by_minute(profile: Sequence[BasalBlock]) -> FloatArray:
    """The profile factor for every local minute of the day (blocks wrap past midnight)."""
    if not profile:
        return np.ones(1440)
    blocks = sorted(profile, key=lambda b: b.minute_of_day)
    out = np.full(1440, blocks[-1].factor)
    for block in blocks:
        out[block.minute_of_day:] = block.factor
    return out


# --- pump ---------------------------------------------------------------------------------

_SCHEDULED_REFILL = "refill"
_OCCLUSION = "occlusion"
_BATTERY_LOW = "battery-low"
_BATTERY_REPLACE = "battery-replace"
_REFILL_AFTER_STOP = "refill-after-stop"


class PumpBank:
    """The insulin pumps of a cohort, one per patient, stepped one minute at a time.

    ``logs`` (one :class:`DeviceLog` per patient) receives the pump history records; ``None``
    keeps only the delivery arrays (no Python objects per event). Per-minute outputs of the
    last :meth:`step`: ``last_basal_mu`` and ``last_bolus_mu``.
    """

    def __init__(self, *, basal_u_per_h: Sequence[float] | FloatArray, settings: PumpSettings,
                 therapy: TherapySettings, calendar: SimCalendar,
                 rngs: Sequence[np.random.Generator], logs: Sequence[DeviceLog] | None = None
                 ) -> None:
        basal = np.asarray(basal_u_per_h, dtype=np.float64)
        self.n = n = basal.shape[0]
        if len(rngs) != n or (logs is not None and len(logs) != n):
            raise TherapyError("one random generator (and log) per pump is needed")
        self.settings = settings
        self.therapy = therapy
        self.calendar = calendar
        self.logs = logs
        self.inc_basal = to_milliunits(settings.basal_increment_u, "basal_increment_u")
        self.inc_bolus = to_milliunits(settings.bolus_increment_u, "bolus_increment_u")
        if self.inc_basal == 0 or self.inc_bolus == 0:
            raise TherapyError("pump increments must be positive")
        rate_step = to_milliunits(settings.basal_rate_step_u_per_h, "basal_rate_step_u_per_h")
        if rate_step == 0:
            raise TherapyError("basal_rate_step_u_per_h must be positive")
        self.speed = max(self.inc_bolus, int(settings.bolus_speed_u_per_min * MU_PER_U)
                         // self.inc_bolus * self.inc_bolus)
        self.max_bolus_mu = to_milliunits(quantize_down(therapy.max_bolus_u, 0.001),
                                          "max_bolus_u")
        self.capacity = to_milliunits(quantize_down(settings.reservoir_capacity_u, 0.001),
                                      "reservoir_capacity_u")
        self.fill = min(self.capacity, to_milliunits(quantize_down(settings.fill_u, 0.001),
                                                     "fill_u"))
        self.prime = to_milliunits(quantize_down(settings.prime_u, 0.001), "prime_u")
        self.low = to_milliunits(quantize_down(settings.low_reservoir_u, 0.001),
                                 "low_reservoir_u")
        # Programmed rates (mU/h) per profile block, quantized to the pump's rate step.
        factor = basal_factor_by_minute(therapy.basal_profile)
        levels, self._block_of_minute = np.unique(factor, return_inverse=True)
        self.block_rates = (np.rint(basal[:, None] * levels[None, :] * MU_PER_U / rate_step)
                            .astype(np.int64) * rate_step)
        self.programmed = np.full(n, -1, dtype=np.int64)

        self.running = np.ones(n, dtype=bool)
        self.acc = np.zeros(n)
        if settings.initial_u is None:
            start = [self.fill // 2 + int(r.integers(0, self.fill // 2 + 1)) for r in rngs]
        else:
            start = [min(self.capacity, to_milliunits(quantize_down(settings.initial_u, 0.001),
                                                      "initial_u"))] * n
        self.reservoir = np.array(start, dtype=np.int64)
        self.low_flag = self.reservoir < self.low
        self.tbr_active = np.zeros(n, dtype=bool)
        self.tbr_percent = np.full(n, 100.0)
        self.tbr_start = np.zeros(n, dtype=np.int64)
        self.tbr_end = np.zeros(n, dtype=np.int64)
        self.bolus_active = np.zeros(n, dtype=bool)
        self.bolus_remaining = np.zeros(n, dtype=np.int64)
        self.bolus_programmed = np.zeros(n, dtype=np.int64)
        self.bolus_delivered = np.zeros(n, dtype=np.int64)
        self.bolus_id = np.zeros(n, dtype=np.int64)
        self._pending: list[list[int]] = [[] for _ in range(n)]
        self._pending_any: set[int] = set()
        self.day_basal = np.zeros(n, dtype=np.int64)
        self.day_bolus = np.zeros(n, dtype=np.int64)
        self.last_basal_mu = np.zeros(n, dtype=np.int64)
        self.last_bolus_mu = np.zeros(n, dtype=np.int64)
        self.stopped_for: list[str | None] = [None] * n
        self.battery_low_raised = np.zeros(n, dtype=bool)
        self._annunciation_id = np.zeros(n, dtype=np.int64)
        self._battery_instance = np.zeros(n, dtype=np.int64)
        self._actions: dict[int, list[tuple[int, str]]] = {}
        self._plan(rngs)

    # -- schedule ----------------------------------------------------------------------------

    def _at(self, minute: int, patient: int, action: str) -> None:
        if 0 <= minute < self.calendar.minutes:
            self._actions.setdefault(minute, []).append((patient, action))

    def _plan(self, rngs: Sequence[np.random.Generator]) -> None:
        s = self.settings
        cal = self.calendar
        for i, rng in enumerate(rngs):
            if s.refill_every_days > 0:
                first = int(rng.integers(0, s.refill_every_days))
                for day in range(first, cal.days, s.refill_every_days):
                    self._at(cal.minute_of(day, s.refill_minute), i, _SCHEDULED_REFILL)
            if s.occlusion_per_day > 0:
                for _ in range(int(rng.poisson(s.occlusion_per_day * cal.days))):
                    self._at(int(rng.integers(0, cal.minutes)), i, _OCCLUSION)
            if s.battery_life_days > 0:
                life = s.battery_life_days * 1440
                age = rng.uniform(0.0, 0.8 * life)
                self._at(int(0.9 * life - age), i, _BATTERY_LOW)

    # -- records ----------------------------------------------------------------------------

    def _time(self, minute: int, seconds: float = 0.0) -> dt.datetime:
        return self.calendar.time_of(minute + seconds / 60.0)

    def _announce(self, i: int, minute: int, what: Annunciation, *,
                  status: AnnunciationStatus = AnnunciationStatus.PENDING,
                  instance: int | None = None, seconds: float = 0.0) -> int:
        if instance is None:
            self._annunciation_id[i] = (self._annunciation_id[i] + 1) % 0x10000
            instance = int(self._annunciation_id[i])
        if self.logs is not None:
            self.logs[i].add(AnnunciationEvent, self._time(minute, seconds), annunciation=what,
                             status=status, instance_id=instance)
        return instance

    def _therapy_state(self, i: int, minute: int, new: TherapyState, old: TherapyState,
                       seconds: float = 0.0) -> None:
        if self.logs is not None:
            self.logs[i].add(TherapyStateChange, self._time(minute, seconds), new_state=new,
                             previous_state=old)

    def _operational_state(self, i: int, minute: int, new: OperationalState,
                           old: OperationalState, seconds: float) -> None:
        if self.logs is not None:
            self.logs[i].add(OperationalStateChange, self._time(minute, seconds),
                             new_state=new, previous_state=old)

    def _reservoir_record(self, i: int, minute: int, seconds: float = 0.0) -> None:
        if self.logs is not None:
            self.logs[i].add(ReservoirLevel, self._time(minute, seconds),
                             remaining_iu=int(self.reservoir[i]) / MU_PER_U)

    def _bolus_record(self, i: int, minute: int, phase: BolusPhase, amount_mu: int) -> None:
        if self.logs is not None:
            self.logs[i].add(InsulinBolus, self._time(minute), bolus_id=int(self.bolus_id[i]),
                             phase=phase, bolus_type=BolusType.FAST,
                             fast_iu=amount_mu / MU_PER_U)

    # -- requests ----------------------------------------------------------------------------

    def request_bolus(self, i: int, minute: int, amount_u: float) -> float:
        """Program a fast bolus; returns the programmed amount (0 when the pump is stopped).

        A bolus asked for while another is running is queued behind it.
        """
        amount = min(self.max_bolus_mu,
                     int(amount_u * MU_PER_U + 1e-6) // self.inc_bolus * self.inc_bolus)
        if amount <= 0 or not self.running[i]:
            return 0.0
        if self.bolus_active[i]:
            self._pending[i].append(amount)
            self._pending_any.add(i)
        else:
            self._start_bolus(i, minute, amount)
        return amount / MU_PER_U

    def _start_bolus(self, i: int, minute: int, amount: int) -> None:
        self.bolus_id[i] = (self.bolus_id[i] + 1) % 0x10000
        self.bolus_active[i] = True
        self.bolus_remaining[i] = amount
        self.bolus_programmed[i] = amount
        self.bolus_delivered[i] = 0
        self._bolus_record(i, minute, BolusPhase.PROGRAMMED, amount)

    def start_temp_basal(self, i: int, minute: int, percent: float, duration_min: int) -> bool:
        """Start a relative temporary basal rate; a running one is cancelled first."""
        if not self.running[i] or duration_min <= 0 or percent < 0:
            return False
        if self.tbr_active[i]:
            self._end_temp_basal(i, minute, canceled=True)
        self.tbr_active[i] = True
        self.tbr_percent[i] = percent
        self.tbr_start[i] = minute
        self.tbr_end[i] = minute + duration_min
        if self.logs is not None:
            self.logs[i].add(TempBasalStart, self._time(minute),
                             temp_basal_type=TempBasalType.RELATIVE, value=float(percent),
                             duration_min=int(duration_min))
        return True

    def _end_temp_basal(self, i: int, minute: int, *, canceled: bool) -> None:
        self.tbr_active[i] = False
        self.tbr_percent[i] = 100.0
        if self.logs is not None:
            self.logs[i].add(TempBasalEnd, self._time(minute),
                             effective_duration_min=int(minute - self.tbr_start[i]),
                             canceled=canceled)
        if not canceled:
            self._announce(i, minute, Annunciation.TEMP_BASAL_OVER)

    def _cancel_bolus(self, i: int, minute: int) -> None:
        if not self.bolus_active[i]:
            return
        self.bolus_active[i] = False
        self.bolus_remaining[i] = 0
        self._bolus_record(i, minute, BolusPhase.DELIVERED, int(self.bolus_delivered[i]))
        self._announce(i, minute, Annunciation.BOLUS_CANCELED)
        self._pending[i].clear()

    def _stop(self, i: int, minute: int, reason: str) -> None:
        if not self.running[i]:
            return
        self._cancel_bolus(i, minute)
        if self.tbr_active[i]:
            self._end_temp_basal(i, minute, canceled=True)
        self.running[i] = False
        self.stopped_for[i] = reason
        self._therapy_state(i, minute, TherapyState.STOP, TherapyState.RUN, seconds=1)

    def _refill(self, i: int, minute: int) -> None:
        """Reservoir and infusion set change: stop, prepare, prime, run (IDS 1.0 states)."""
        was_running = bool(self.running[i])
        if was_running:
            self._stop(i, minute, "refill")
        ready, prep = OperationalState.READY, OperationalState.PREPARING
        self._operational_state(i, minute, prep, ready, seconds=10)
        self._operational_state(i, minute, OperationalState.PRIMING, prep, seconds=40)
        self.reservoir[i] = max(0, self.fill - self.prime)
        self.low_flag[i] = self.reservoir[i] < self.low
        self._operational_state(i, minute, ready, OperationalState.PRIMING, seconds=100)
        self._reservoir_record(i, minute, seconds=101)
        if self.battery_low_raised[i]:
            self._replace_battery(i, minute, seconds=102)
        self.running[i] = True
        self.stopped_for[i] = None
        self._therapy_state(i, minute, TherapyState.RUN, TherapyState.STOP, seconds=110)

    def _replace_battery(self, i: int, minute: int, seconds: float = 0.0) -> None:
        if not self.battery_low_raised[i]:
            return
        self.battery_low_raised[i] = False
        self._announce(i, minute, Annunciation.BATTERY_LOW, status=AnnunciationStatus.CONFIRMED,
                       instance=int(self._battery_instance[i]), seconds=seconds)
        life = self.settings.battery_life_days * 1440
        self._at(minute + int(0.9 * life), i, _BATTERY_LOW)

    def _run_action(self, i: int, minute: int, action: str) -> None:
        if action == _SCHEDULED_REFILL:
            self._refill(i, minute)
        elif action == _REFILL_AFTER_STOP:
            if not self.running[i]:
                self._refill(i, minute)
        elif action == _OCCLUSION:
            if self.running[i]:
                self._announce(i, minute, Annunciation.OCCLUSION)
                self._stop(i, minute, "occlusion")
                self._at(minute + self.settings.occlusion_resolve_min, i, _REFILL_AFTER_STOP)
        elif action == _BATTERY_LOW:
            if not self.battery_low_raised[i]:
                self.battery_low_raised[i] = True
                self._battery_instance[i] = self._announce(i, minute, Annunciation.BATTERY_LOW)
                self._at(minute + self.settings.battery_replace_delay_min, i, _BATTERY_REPLACE)
        elif action == _BATTERY_REPLACE:
            self._replace_battery(i, minute)

    # -- the minute step ---------------------------------------------------------------------

    def _midnight(self, minute: int) -> None:
        day = int(self.calendar.day_index[minute - 1])
        date = self.calendar.date_of_day(day)
        if self.logs is not None:
            for i in range(self.n):
                self.logs[i].add(TotalDailyInsulin, self._time(minute), day=date,
                                 bolus_iu=int(self.day_bolus[i]) / MU_PER_U,
                                 basal_iu=int(self.day_basal[i]) / MU_PER_U)
                self._reservoir_record(i, minute, seconds=1)
        self.day_basal[:] = 0
        self.day_bolus[:] = 0

    def step(self, minute: int) -> FloatArray:
        """Deliver minute ``minute``; returns the insulin delivered per patient (U)."""
        cal = self.calendar
        if minute == 0:
            for i in range(self.n):
                self._reservoir_record(i, 0)
        elif cal.day_index[minute] != cal.day_index[minute - 1]:
            self._midnight(minute)
        for i, action in self._actions.pop(minute, ()):
            self._run_action(i, minute, action)

        programmed = self.block_rates[:, self._block_of_minute[cal.wall_minute[minute]]]
        if self.logs is not None:
            for i in _indices(programmed != self.programmed):
                prev = int(self.programmed[i])
                self.logs[i].add(BasalRateChange, self._time(minute),
                                 rate_iu_per_h=int(programmed[i]) / MU_PER_U,
                                 previous_rate_iu_per_h=None if prev < 0 else prev / MU_PER_U)
        self.programmed = programmed

        ending = self.tbr_active & (minute >= self.tbr_end)
        for i in _indices(ending):
            self._end_temp_basal(i, minute, canceled=False)

        if self._pending_any:
            for i in sorted(self._pending_any):
                if not self.bolus_active[i] and self.running[i] and self._pending[i]:
                    self._start_bolus(i, minute, self._pending[i].pop(0))
                if not self._pending[i]:
                    self._pending_any.discard(i)

        running = self.running
        rate = programmed * (self.tbr_percent / 100.0)
        self.acc += np.where(running, rate / 60.0, 0.0)
        pulses = np.floor(self.acc / self.inc_basal + 1e-9).astype(np.int64)
        basal = pulses * self.inc_basal
        bolus = np.where(running & self.bolus_active,
                         np.minimum(self.bolus_remaining, self.speed), 0)
        dose = basal + bolus
        short = dose > self.reservoir
        if short.any():
            for i in _indices(short):
                avail = int(self.reservoir[i])
                b = min(int(bolus[i]), avail // self.inc_bolus * self.inc_bolus)
                bas = min(int(basal[i]), (avail - b) // self.inc_basal * self.inc_basal)
                bolus[i], basal[i] = b, bas
            dose = basal + bolus
        self.acc -= basal
        self.reservoir -= dose
        self.bolus_remaining -= bolus
        self.bolus_delivered += bolus
        self.day_basal += basal
        self.day_bolus += bolus
        self.last_basal_mu = basal
        self.last_bolus_mu = bolus

        done = self.bolus_active & (self.bolus_remaining <= 0)
        for i in _indices(done):
            self.bolus_active[i] = False
            self._bolus_record(i, minute + 1, BolusPhase.DELIVERED,
                               int(self.bolus_delivered[i]))
        if short.any():
            # A bolus cut short by an empty reservoir ends as delivered-so-far.
            for i in _indices(short & self.bolus_active):
                self._cancel_bolus(i, minute + 1)

        newly_low = ~self.low_flag & (self.reservoir < self.low)
        for i in _indices(newly_low):
            self.low_flag[i] = True
            self._announce(i, minute + 1, Annunciation.RESERVOIR_LOW)
            self._reservoir_record(i, minute + 1, seconds=1)
        empty = running & (self.reservoir < min(self.inc_basal, self.inc_bolus))
        for i in _indices(empty):
            self._announce(i, minute + 1, Annunciation.RESERVOIR_EMPTY)
            self._stop(i, minute + 1, "empty")
            self._at(minute + 1 + self.settings.empty_refill_delay_min, i,
                     _REFILL_AFTER_STOP)
        out: FloatArray = dose / MU_PER_U
        return out


# --- pens (MDI) ---------------------------------------------------------------------------

class PenTherapy:
    """Multiple daily injections: rapid-acting pen boluses, long-acting as a flat basal."""

    def __init__(self, basal_u_per_h: Sequence[float] | FloatArray,
                 therapy: TherapySettings) -> None:
        self.basal_per_min = np.asarray(basal_u_per_h, dtype=np.float64) / 60.0
        self.n = self.basal_per_min.shape[0]
        self.therapy = therapy
        self._due = np.zeros(self.n)

    def inject(self, i: int, amount_u: float) -> float:
        """A pen injection now, rounded down to the pen increment; returns the dose (U)."""
        dose = quantize_down(min(amount_u, self.therapy.max_bolus_u),
                             self.therapy.pen_increment_u)
        self._due[i] += dose
        return dose

    def step(self, minute: int) -> FloatArray:
        del minute
        out = self.basal_per_min + self._due
        self._due = np.zeros(self.n)
        return out
