"""Run a cohort of simulated patients through a scenario, minute by minute.

One loop over time, vectorized over patients. Each minute:

1. the true plasma glucose is recorded; CGMs see the interstitial glucose (and produce a value
   every 1 or 5 minutes), meters measure when a test is due or the patient feels low;
2. the patient reacts to what it sees: rescue carbohydrates when low;
3. therapy: meal boluses (carbs / CR plus a correction above target from the last CGM or
   meter value the patient saw), standalone corrections, temporary basal rates, and the pump's
   basal pulses and bolus delivery (or pen injections);
4. the physiology advances one minute with that minute's carbohydrates, insulin and exercise.

:func:`simulate_cohort` returns a :class:`CohortResult`: the true glucose, carbohydrate and
insulin traces (``float32`` arrays of shape ``(n, minutes)``), the CGM samples and meter
readings as arrays and, when asked for (``records=True``), each patient's devices with their
:mod:`bridge.records` records, ready for the virtual BLE and serial devices to serve.

Randomness: every patient has its own streams (scenario, CGM, meter, pump, clock) derived from
``(seed, patient index, stream)``, so a run is reproducible per seed, and patient ``i`` sees the
same meals, sensor noise and device events whatever the size of the cohort.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bridge.records import DeviceInfo, DeviceKind, MealContext, Record
from simulators.device_clock import (
    ClockEvent,
    ClockJump,
    ClockReset,
    DeviceClock,
    DeviceLog,
    SimCalendar,
)
from simulators.errors import SimulatorError
from simulators.physiology import Cohort, PatientParams
from simulators.scenario import BolusBehaviour, Scenario, load_scenario
from simulators.sensors import CgmBank, MeterBank
from simulators.therapy import PenTherapy, PumpBank, TherapyMode, bolus_advice
from simulators.type2 import Type2Cohort, Type2Params

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

ProgressCallback = Callable[[int, int], None]

MANUFACTURER = "hddt-bridge simulated"
FIRMWARE = "1.0.0"

# Random streams per patient.
STREAM_SCENARIO = 1
STREAM_CGM = 2
STREAM_METER = 3
STREAM_PUMP = 4
STREAM_CLOCK = 5

#: How long a CGM value / meter reading counts as "current" for a bolus decision.
CGM_FRESH_MIN = 15
METER_FRESH_MIN = 30
#: Standalone corrections are considered on this grid (minutes).
CORRECTION_CHECK_EVERY_MIN = 30


class GlucoseModel(Protocol):
    """What the run loop needs from a physiology model (the UVA/Padova or type 2 cohort)."""

    @property
    def blood_glucose_mg_dl(self) -> FloatArray: ...

    @property
    def subcutaneous_glucose_mg_dl(self) -> FloatArray: ...

    def step(self, carbs_g_per_min: npt.ArrayLike, insulin_u_per_min: npt.ArrayLike, *,
             exercise: npt.ArrayLike | None = None, minutes: int = 1) -> None: ...


AnyPatient = PatientParams | Type2Params


def patient_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of patient ``index`` for run ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream)))


@dataclass(frozen=True, slots=True)
class GlucoseSummary:
    """Outcome of one patient over the run, from the true plasma glucose.

    Hypoglycaemic events are runs of at least 15 consecutive minutes below the threshold (the
    international consensus on CGM metrics, Battelino et al., Diabetes Care 2019).
    """

    patient: str
    mean_mg_dl: float
    sd_mg_dl: float
    time_in_range_pct: float
    time_below_70_pct: float
    time_below_54_pct: float
    time_above_180_pct: float
    hypo_events_below_70: int
    hypo_events_below_54: int


def _events_below(trace: FloatArray, threshold: float, min_minutes: int = 15) -> int:
    below = np.concatenate(([False], trace < threshold, [False]))
    edges = np.flatnonzero(np.diff(below.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    return int(np.sum(ends - starts >= min_minutes))


def glucose_summary(patient: str, trace: npt.ArrayLike) -> GlucoseSummary:
    g = np.asarray(trace, dtype=np.float64)
    if g.size == 0:
        raise SimulatorError("empty glucose trace")

    def pct(mask: npt.NDArray[np.bool_]) -> float:
        return round(100.0 * float(np.mean(mask)), 2)

    return GlucoseSummary(
        patient=patient, mean_mg_dl=round(float(g.mean()), 1), sd_mg_dl=round(float(g.std()), 1),
        time_in_range_pct=pct((g >= 70) & (g <= 180)), time_below_70_pct=pct(g < 70),
        time_below_54_pct=pct(g < 54), time_above_180_pct=pct(g > 180),
        hypo_events_below_70=_events_below(g, 70), hypo_events_below_54=_events_below(g, 54))


@dataclass(slots=True)
class PatientDevices:
    """The devices of one patient and what they recorded."""

    patient: str
    pump: DeviceLog | None
    cgm: DeviceLog | None
    meter: DeviceLog | None

    @property
    def logs(self) -> list[DeviceLog]:
        return [log for log in (self.pump, self.cgm, self.meter) if log is not None]

    @property
    def records(self) -> list[Record]:
        return [r for log in self.logs for r in log.records]


@dataclass(slots=True)
class CohortResult:
    """Everything a run produced. Minute ``m`` is the true instant ``start + m`` minutes.

    ``true_bg[i, m]``: plasma glucose at minute ``m`` (mg/dL); ``carbs_g[i, m]`` and
    ``insulin_u[i, m]``: carbohydrate eaten and insulin delivered during minute ``m``.
    ``cgm[i, k]``: the CGM value of sample ``k`` (at minute ``k·cgm_interval_min``, NaN when
    there is none), with ``cgm_flags`` (−1 below range, +1 above), ``cgm_trend`` (mg/dL/min)
    and ``cgm_quality`` (%). ``meter`` holds the meter readings as parallel arrays
    (``patient``, ``minute``, ``value`` (NaN: no number), ``control``, ``context``).
    ``devices`` is ``None`` unless records were asked for.
    """

    patients: tuple[str, ...]
    scenario: Scenario
    seed: int
    calendar: SimCalendar
    therapy_mode: TherapyMode
    true_bg: Float32Array
    carbs_g: Float32Array
    insulin_u: Float32Array
    cgm_interval_min: int
    cgm: Float32Array | None
    cgm_flags: npt.NDArray[np.int8] | None
    cgm_trend: Float32Array | None
    cgm_quality: npt.NDArray[np.int8] | None
    meter: dict[str, npt.NDArray[np.generic]] | None
    devices: list[PatientDevices] | None

    @property
    def n(self) -> int:
        return len(self.patients)

    @property
    def minutes(self) -> int:
        return self.calendar.minutes

    @property
    def start(self) -> dt.datetime:
        return self.calendar.start

    def time_of(self, minute: float) -> dt.datetime:
        return self.calendar.time_of(minute)

    def summary(self) -> list[GlucoseSummary]:
        return [glucose_summary(p, self.true_bg[i]) for i, p in enumerate(self.patients)]


def _device(kind: DeviceKind, *, seed: int, index: int, patient: str, clock: DeviceClock,
            bits: int | None) -> DeviceLog:
    short = {DeviceKind.INSULIN_PUMP: "pump", DeviceKind.CGM: "cgm",
             DeviceKind.BLOOD_GLUCOSE_METER: "meter"}[kind]
    model = {DeviceKind.INSULIN_PUMP: "Virtual Pump IDS",
             DeviceKind.CGM: "Virtual CGM CGMS",
             DeviceKind.BLOOD_GLUCOSE_METER: "Virtual Meter GLS"}[kind]
    # The patient is part of the identity, so the same cohort index simulated for two patients
    # (e.g. one cohort per patient in a fleet) never gives two devices the same id.
    digest = hashlib.sha256(f"sim-{short}-{seed}-{index:05d}|{patient}".encode()).hexdigest()
    digest = digest.upper()
    device_id = f"sim-{short}-{seed}-{index:05d}-{digest[:6].lower()}"
    info = DeviceInfo(device_id=device_id, kind=kind, manufacturer=MANUFACTURER, model=model,
                      serial_number=f"{short[0].upper()}{digest[6:15]}",
                      firmware_revision=FIRMWARE, hardware_revision="1",
                      software_revision=FIRMWARE, system_id=digest[:16], transport="ble")
    return DeviceLog(info=info, clock=clock, sequence_bits=bits)


def _clock(scenario: Scenario, calendar: SimCalendar, rng: np.random.Generator,
           device: str) -> DeviceClock:
    c = scenario.clock
    events: list[ClockEvent] = []
    for spec in c.events:
        if spec.device not in ("all", device):
            continue
        at = calendar.time_of(calendar.minute_of(spec.day, spec.minute_of_day))
        if at < calendar.start:
            continue
        if spec.jump_s is not None:
            events.append(ClockJump(at, spec.jump_s))
        elif spec.reset_to is not None:
            events.append(ClockReset(at, spec.reset_to))
    return DeviceClock(epoch=calendar.start,
                       offset_s=c.offset_s + float(rng.normal(0.0, c.offset_sd_s)),
                       drift_ppm=c.drift_ppm + float(rng.normal(0.0, c.drift_sd_ppm)),
                       timezone=c.timezone or scenario.timezone, events=events)


def _check_args(days: int, seed: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise SimulatorError(f"days must be a positive whole number, got {days!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SimulatorError(f"seed must be a non-negative whole number, got {seed!r}")


def simulate_cohort(patients: Sequence[AnyPatient], scenario: Scenario | str | Path,
                    days: int, *, seed: int, sensors: bool = True, records: bool = False,
                    progress: ProgressCallback | None = None) -> CohortResult:
    """Simulate ``patients`` for ``days`` local days of ``scenario`` at 1-minute resolution.

    ``patients`` are UVA/Padova :class:`~simulators.physiology.PatientParams` (therapy as the
    scenario says: pump or pens) or simple :class:`~simulators.type2.Type2Params` (oral
    therapy, meter only); a cohort is one kind or the other. ``sensors=False`` skips CGM and
    meter (the patient then doses without glucose values). ``records=True`` also builds every
    device's records; otherwise only numpy arrays are kept. ``progress(done, total)`` is called
    with simulated minutes, every simulated hour and at the end.
    """
    _check_args(days, seed)
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    pats = list(patients)
    if not pats:
        raise SimulatorError("a cohort needs at least one patient")
    type2 = [isinstance(p, Type2Params) for p in pats]
    if any(type2) and not all(type2):
        raise SimulatorError("a cohort is either type 1 (UVA/Padova) or type 2 patients, "
                             "not a mix; simulate them separately")
    model: GlucoseModel
    if all(type2):
        model = Type2Cohort([p for p in pats if isinstance(p, Type2Params)])
        mode = TherapyMode.ORAL
    else:
        model = Cohort([p for p in pats if isinstance(p, PatientParams)])
        mode = TherapyMode(scenario.therapy.mode)
    return _Run(pats, scenario, days=days, seed=seed, sensors=sensors, records=records,
                progress=progress, model=model, mode=mode).run()


class _Run:
    def __init__(self, patients: list[AnyPatient], scenario: Scenario, *, days: int, seed: int,
                 sensors: bool, records: bool, progress: ProgressCallback | None,
                 model: GlucoseModel, mode: TherapyMode) -> None:
        self.patients = patients
        self.scenario = scenario
        self.seed = seed
        self.records = records
        self.progress = progress
        self.model = model
        self.mode = mode
        self.n = n = len(patients)
        self.calendar = cal = SimCalendar(scenario.start_date, days, scenario.timezone)
        self.minutes = cal.minutes
        self.therapy = scenario.therapy
        self.uses_cgm = sensors and scenario.cgm.enabled and mode is not TherapyMode.ORAL
        self.uses_meter = sensors and scenario.meter.enabled
        self.carbs = np.zeros((n, self.minutes), dtype=np.float32)
        self.exercise: Float32Array | None = None
        self.boluses: dict[int, list[tuple[int, float]]] = {}
        self.temp_basals: dict[int, list[tuple[int, float, int]]] = {}
        scen_rngs = [patient_rng(seed, i, STREAM_SCENARIO) for i in range(n)]
        self.plans = [[scenario.day_plan(d, r) for d in range(days)] for r in scen_rngs]

        self.devices: list[PatientDevices] | None = None
        pump_logs: list[DeviceLog] | None = None
        cgm_logs: list[DeviceLog] | None = None
        meter_logs: list[DeviceLog] | None = None
        if records:
            self.devices = []
            for i, p in enumerate(patients):
                crng = patient_rng(seed, i, STREAM_CLOCK)
                pump = cgm = meter = None
                if mode is TherapyMode.PUMP:
                    pump = _device(DeviceKind.INSULIN_PUMP, seed=seed, index=i, patient=p.name,
                                   clock=_clock(scenario, cal, crng, "pump"), bits=32)
                if self.uses_cgm:
                    cgm = _device(DeviceKind.CGM, seed=seed, index=i, patient=p.name,
                                  clock=_clock(scenario, cal, crng, "cgm"), bits=None)
                if self.uses_meter:
                    meter = _device(DeviceKind.BLOOD_GLUCOSE_METER, seed=seed, index=i,
                                    patient=p.name, clock=_clock(scenario, cal, crng, "meter"),
                                    bits=16)
                self.devices.append(PatientDevices(p.name, pump, cgm, meter))
            pump_logs = [d.pump for d in self.devices if d.pump is not None] or None
            cgm_logs = [d.cgm for d in self.devices if d.cgm is not None] or None
            meter_logs = [d.meter for d in self.devices if d.meter is not None] or None

        basal = np.array([p.basal_u_per_h for p in patients])
        self.pump: PumpBank | None = None
        self.pens: PenTherapy | None = None
        if mode is TherapyMode.PUMP:
            self.pump = PumpBank(basal_u_per_h=basal, settings=scenario.pump,
                                 therapy=self.therapy, calendar=cal,
                                 rngs=[patient_rng(seed, i, STREAM_PUMP) for i in range(n)],
                                 logs=pump_logs)
        elif mode is TherapyMode.MDI:
            self.pens = PenTherapy(basal, self.therapy)
        self.cgm = (CgmBank(settings=scenario.cgm, calendar=cal,
                            rngs=[patient_rng(seed, i, STREAM_CGM) for i in range(n)])
                    if self.uses_cgm else None)
        self.meter = (MeterBank(settings=scenario.meter, calendar=cal,
                                rngs=[patient_rng(seed, i, STREAM_METER) for i in range(n)],
                                logs=meter_logs)
                      if self.uses_meter else None)
        self._cgm_logs = cgm_logs
        if mode is TherapyMode.ORAL:
            self.cr = self.cf = np.ones(n)
        else:
            self.cr = np.array([getattr(p, "carb_ratio_g_per_u", 10.0) for p in patients])
            self.cf = np.array([getattr(p, "correction_factor_mg_dl_per_u", 50.0)
                                for p in patients])
        self._lay_out_plans()

    def _lay_out_plans(self) -> None:
        cal = self.calendar
        total = self.minutes
        insulin = self.mode is not TherapyMode.ORAL
        pump = self.mode is TherapyMode.PUMP
        tbr_pct = self.therapy.exercise_temp_basal_percent
        lead = self.therapy.exercise_temp_basal_lead_min
        for i, plans in enumerate(self.plans):
            for day, plan in enumerate(plans):
                meal_minutes: list[tuple[int, bool]] = []
                for meal in plan.meals:
                    m0 = cal.minute_of(day, meal.minute_of_day)
                    a, b = max(0, m0), min(total, m0 + meal.duration_min)
                    if a < b:
                        self.carbs[i, a:b] += meal.carbs_g / meal.duration_min
                    meal_minutes.append((m0, meal.snack))
                    if insulin and meal.bolus is not BolusBehaviour.SKIPPED:
                        at = m0 + (meal.bolus_delay_min if meal.bolus is BolusBehaviour.LATE
                                   else 0)
                        if 0 <= at < total:
                            self.boluses.setdefault(at, []).append((i, meal.carbs_g))
                for ex in plan.exercise:
                    m0 = cal.minute_of(day, ex.minute_of_day)
                    a, b = max(0, m0), min(total, m0 + ex.duration_min)
                    if a < b:
                        if self.exercise is None:
                            self.exercise = np.zeros((self.n, total), dtype=np.float32)
                        self.exercise[i, a:b] = np.maximum(self.exercise[i, a:b], ex.intensity)
                    if pump and tbr_pct is not None and tbr_pct != 100 and ex.intensity > 0:
                        self._temp_basal(i, m0 - lead, tbr_pct, lead + ex.duration_min)
                if pump:
                    for tb in plan.temp_basals:
                        self._temp_basal(i, cal.minute_of(day, tb.minute_of_day), tb.percent,
                                         tb.duration_min)
                if self.meter is not None:
                    self.meter.plan_day(i, day, meal_minutes)

    def _temp_basal(self, i: int, minute: int, percent: float, duration: int) -> None:
        if minute < 0:
            duration += minute
            minute = 0
        if minute < self.minutes and duration > 0:
            self.temp_basals.setdefault(minute, []).append((i, percent, duration))

    def run(self) -> CohortResult:
        n, total = self.n, self.minutes
        therapy = self.therapy
        model = self.model
        true_bg = np.empty((n, total), dtype=np.float32)
        insulin_trace = np.zeros((n, total), dtype=np.float32)
        never = -10**9
        last_cgm = np.full(n, np.nan)
        last_cgm_at = np.full(n, never, dtype=np.int64)
        last_bgm = np.full(n, np.nan)
        last_bgm_at = np.full(n, never, dtype=np.int64)
        last_test_at = np.full(n, never, dtype=np.int64)
        last_bolus_at = np.full(n, never, dtype=np.int64)
        last_treat_at = np.full(n, never, dtype=np.int64)
        low_since = np.full(n, -1, dtype=np.int64)
        meter_s = self.scenario.meter
        doses_insulin = self.mode is not TherapyMode.ORAL
        zero = np.zeros(n)

        def seen(m: int) -> FloatArray:
            cgm_ok = (m - last_cgm_at) <= CGM_FRESH_MIN
            bgm_ok = (m - last_bgm_at) <= METER_FRESH_MIN
            out: FloatArray = np.where(cgm_ok, last_cgm, np.where(bgm_ok, last_bgm, np.nan))
            return out

        def give_bolus(i: int, m: int, carbs: float, glucose: float) -> None:
            advice = bolus_advice(
                carbs, None if math.isnan(glucose) else glucose,
                carb_ratio_g_per_u=float(self.cr[i]), correction_factor_mg_dl_per_u=float(
                    self.cf[i]), target_mg_dl=therapy.target_mg_dl,
                correction=therapy.correction,
                increment_u=self.scenario.pump.bolus_increment_u if self.pump is not None
                else 0.001, max_bolus_u=therapy.max_bolus_u)
            given = 0.0
            if self.pump is not None:
                given = self.pump.request_bolus(i, m, advice.total_u)
            elif self.pens is not None:
                given = self.pens.inject(i, advice.total_u)
            if given > 0:
                last_bolus_at[i] = m

        for m in range(total):
            bg = model.blood_glucose_mg_dl
            true_bg[:, m] = bg
            new_seen = np.full(n, np.nan)
            if self.cgm is not None:
                values = self.cgm.observe(m, model.subcutaneous_glucose_mg_dl)
                if values is not None:
                    ok = ~np.isnan(values)
                    last_cgm[ok] = values[ok]
                    last_cgm_at[ok] = m
                    new_seen[ok] = values[ok]
            if self.meter is not None:
                tests = self.meter.due(m)
                below = bg < meter_s.symptom_threshold_mg_dl
                low_since = np.where(below, np.where(low_since < 0, m, low_since), -1)
                feels_low = (below & (m - low_since >= meter_s.symptom_delay_min)
                             & (m - last_test_at >= meter_s.retest_interval_min))
                if feels_low.any():
                    tested = {t[0] for t in tests if not t[2]}
                    tests.extend((int(i), MealContext.CASUAL, False)
                                 for i in np.flatnonzero(feels_low) if int(i) not in tested)
                for i, context, control in tests:
                    shown = self.meter.measure(i, m, float(bg[i]), context, control=control)
                    if control:
                        continue
                    last_test_at[i] = m
                    if shown is not None:
                        last_bgm[i] = shown
                        last_bgm_at[i] = m
                        new_seen[i] = shown
            if therapy.hypo_treatment_g > 0:
                treat = ((new_seen < therapy.hypo_threshold_mg_dl)
                         & (m - last_treat_at >= therapy.hypo_recheck_min))
                if treat.any():
                    self.carbs[treat, m] += therapy.hypo_treatment_g
                    last_treat_at[treat] = m
            if doses_insulin:
                requests = self.boluses.pop(m, ())
                if requests:
                    glucose = seen(m)
                    for i, grams in requests:
                        give_bolus(i, m, grams, float(glucose[i]))
                limit = therapy.correction_above_mg_dl
                if (limit > 0 and therapy.correction and m % CORRECTION_CHECK_EVERY_MIN == 0):
                    glucose = seen(m)
                    due = ((glucose > limit)
                           & (m - last_bolus_at >= therapy.correction_interval_min))
                    for i in np.flatnonzero(due).tolist():
                        give_bolus(i, m, 0.0, float(glucose[i]))
                if self.pump is not None:
                    for i, pct, duration in self.temp_basals.pop(m, ()):
                        self.pump.start_temp_basal(i, m, pct, duration)
                    dose = self.pump.step(m)
                elif self.pens is not None:
                    dose = self.pens.step(m)
                else:
                    dose = zero
            else:
                dose = zero
            insulin_trace[:, m] = dose
            model.step(self.carbs[:, m], dose,
                       exercise=None if self.exercise is None else self.exercise[:, m])
            if self.progress is not None and (m + 1) % 60 == 0:
                self.progress(m + 1, total)
        if self.progress is not None and total % 60:
            self.progress(total, total)
        return self._result(true_bg, insulin_trace)

    def _result(self, true_bg: Float32Array, insulin: Float32Array) -> CohortResult:
        cgm = self.cgm
        trend = cgm.trend() if cgm is not None else None
        if self.devices is not None:
            if cgm is not None and trend is not None and self._cgm_logs is not None:
                for i, log in enumerate(self._cgm_logs):
                    cgm.materialize(i, log, trend[i])
            for dev in self.devices:
                for log in dev.logs:
                    log.finalize()
        return CohortResult(
            patients=tuple(p.name for p in self.patients), scenario=self.scenario,
            seed=self.seed, calendar=self.calendar, therapy_mode=self.mode, true_bg=true_bg,
            carbs_g=self.carbs, insulin_u=insulin,
            cgm_interval_min=self.scenario.cgm.interval_min,
            cgm=cgm.values if cgm is not None else None,
            cgm_flags=cgm.flags if cgm is not None else None, cgm_trend=trend,
            cgm_quality=cgm.quality if cgm is not None else None,
            meter=self.meter.arrays() if self.meter is not None else None,
            devices=self.devices)


__all__ = [
    "CohortResult",
    "GlucoseSummary",
    "PatientDevices",
    "ProgressCallback",
    "glucose_summary",
    "patient_rng",
    "simulate_cohort",
]
