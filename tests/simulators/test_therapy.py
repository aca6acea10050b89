"""Therapy: bolus calculator, pump quantization, reservoir, history records, pens."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from typing import TypeVar

import numpy as np
import pytest

from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    BasalRateChange,
    BolusPhase,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    Record,
    TempBasalEnd,
    TempBasalStart,
    TherapyState,
    TherapyStateChange,
    TotalDailyInsulin,
)
from simulators.device_clock import DeviceClock, DeviceLog, SimCalendar
from simulators.physiology import standard_patient
from simulators.run import simulate_cohort
from simulators.scenario import default_scenario
from simulators.therapy import (
    BasalBlock,
    PenTherapy,
    PumpBank,
    PumpSettings,
    TherapyError,
    TherapyMode,
    TherapySettings,
    bolus_advice,
    quantize_down,
)

INC_MU = 50  # 0.05 U in milli-units


def _bank(basal: list[float], *, days: int = 1, settings: PumpSettings | None = None,
          therapy: TherapySettings | None = None, seed: int = 7
          ) -> tuple[PumpBank, list[DeviceLog], SimCalendar]:
    cal = SimCalendar(dt.date(2027, 7, 1), days, "UTC")
    logs = [DeviceLog(info=DeviceInfo(device_id=f"pump-{i}", kind=DeviceKind.INSULIN_PUMP),
                      clock=DeviceClock(epoch=cal.start, timezone="UTC"), sequence_bits=32)
            for i in range(len(basal))]
    rngs = [np.random.default_rng([seed, i]) for i in range(len(basal))]
    bank = PumpBank(basal_u_per_h=basal, settings=settings or PumpSettings(initial_u=300.0,
                                                                          refill_every_days=0),
                    therapy=therapy or TherapySettings(), calendar=cal, rngs=rngs, logs=logs)
    return bank, logs, cal


def _run(bank: PumpBank, minutes: int, boluses: dict[int, list[tuple[int, float]]] | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    basal = np.zeros((bank.n, minutes), dtype=np.int64)
    bolus = np.zeros((bank.n, minutes), dtype=np.int64)
    total = np.zeros((bank.n, minutes))
    for m in range(minutes):
        for i, amount in (boluses or {}).get(m, []):
            bank.request_bolus(i, m, amount)
        total[:, m] = bank.step(m)
        basal[:, m] = bank.last_basal_mu
        bolus[:, m] = bank.last_bolus_mu
    return basal, bolus, total


R = TypeVar("R", bound=Record)


def _of(records: list[Record], cls: type[R]) -> list[R]:
    return [r for r in records if isinstance(r, cls)]


# --- bolus calculator ---------------------------------------------------------------------

def test_meal_bolus_is_carbs_over_carb_ratio_rounded_down() -> None:
    advice = bolus_advice(60, None, carb_ratio_g_per_u=9.0, correction_factor_mg_dl_per_u=40,
                          target_mg_dl=110)
    assert advice.meal_u == pytest.approx(60 / 9)
    assert advice.correction_u == 0
    assert advice.total_u == pytest.approx(6.65)  # 6.667 → 6.65 in 0.05 U steps
    assert bolus_advice(45, None, carb_ratio_g_per_u=15, correction_factor_mg_dl_per_u=40,
                        target_mg_dl=110).total_u == pytest.approx(3.0)


def test_correction_only_above_target() -> None:
    calc = functools.partial(bolus_advice, carb_ratio_g_per_u=10.0,
                             correction_factor_mg_dl_per_u=50.0, target_mg_dl=110.0)
    above = calc(50, 210)
    assert above.correction_u == pytest.approx(2.0)
    assert above.total_u == pytest.approx(7.0)
    for glucose in (110.0, 109.9, 60.0, None):
        advice = calc(50, glucose)
        assert advice.correction_u == 0  # never negative, never without a value
        assert advice.total_u == pytest.approx(5.0)
    assert calc(50, 300, correction=False).total_u == pytest.approx(5.0)
    assert calc(0, 260).total_u == pytest.approx(3.0)
    assert calc(500, 400, max_bolus_u=20).total_u == pytest.approx(20.0)


def test_quantize_down_and_bad_increments() -> None:
    assert quantize_down(1.2345, 0.05) == pytest.approx(1.2)
    assert quantize_down(0.1, 0.05) == pytest.approx(0.1)  # no float rounding loss
    assert quantize_down(2.99, 0.5) == pytest.approx(2.5)
    with pytest.raises(TherapyError):
        quantize_down(1.0, 0.0001)
    with pytest.raises(TherapyError):
        _bank([1.0], settings=PumpSettings(basal_increment_u=0.0125 / 10))


# --- pump delivery ------------------------------------------------------------------------

def test_basal_is_delivered_in_pulses_matching_the_profile_hour_by_hour() -> None:
    therapy = TherapySettings(basal_profile=(BasalBlock(0, 0.8), BasalBlock(4 * 60, 1.3),
                                             BasalBlock(9 * 60 + 30, 1.0)))
    bank, logs, _ = _bank([0.87, 1.234, 0.5, 2.5], therapy=therapy)
    basal, bolus, total = _run(bank, 1440)
    assert not bolus.any()
    assert np.all(basal % INC_MU == 0)  # every pulse a whole basal increment
    assert np.allclose(total * 1000, basal)
    rates = bank.block_rates  # programmed mU/h per block, rounded to the 0.01 U/h step
    assert np.all(rates % 10 == 0)
    factor = np.array([0.8] * 240 + [1.3] * 330 + [1.0] * 870)
    for i, base in enumerate([0.87, 1.234, 0.5, 2.5]):
        programmed = np.rint(base * factor * 100) * 10  # mU/h
        expected = np.cumsum(programmed / 60)
        delivered = np.cumsum(basal[i])
        # The accumulator never lets delivery fall behind by a pulse or run ahead.
        assert np.all(expected - delivered < INC_MU + 1e-6)
        assert np.all(delivered <= expected + 1e-6)
        for hour in range(24):
            got = basal[i, hour * 60:(hour + 1) * 60].sum()
            assert abs(got - programmed[hour * 60:(hour + 1) * 60].sum() / 60) <= INC_MU
    changes = _of(logs[0].finalize(), BasalRateChange)
    assert [c.rate_iu_per_h for c in changes] == pytest.approx([0.7, 1.13, 0.87])
    assert changes[0].previous_rate_iu_per_h is None
    assert changes[1].previous_rate_iu_per_h == pytest.approx(0.7)


def test_bolus_quantized_delivered_at_pump_speed_and_recorded() -> None:
    bank, logs, _ = _bank([1.0, 1.0])
    _, bolus, _ = _run(bank, 30, {5: [(0, 4.26), (1, 0.04)], 12: [(0, 2.0)]})
    assert np.all(bolus % INC_MU == 0)
    assert bolus[0].sum() == 4250 + 2000
    assert bolus[0].max() <= 1500  # 1.5 U/min
    assert bolus[1].sum() == 0  # below one increment: nothing to deliver
    boluses = _of(logs[0].finalize(), InsulinBolus)
    assert [(b.bolus_id, b.phase, b.fast_iu) for b in boluses] == [
        (1, BolusPhase.PROGRAMMED, 4.25), (1, BolusPhase.DELIVERED, 4.25),
        (2, BolusPhase.PROGRAMMED, 2.0), (2, BolusPhase.DELIVERED, 2.0)]
    assert boluses[1].time - boluses[0].time == dt.timedelta(minutes=3)


def test_bolus_during_a_bolus_is_queued() -> None:
    bank, logs, _ = _bank([1.0], settings=PumpSettings(initial_u=300, refill_every_days=0,
                                                       bolus_speed_u_per_min=1.0))
    _, bolus, _ = _run(bank, 20, {0: [(0, 3.0)], 1: [(0, 2.0)]})
    assert bolus[0].sum() == 5000
    phases = [(b.bolus_id, b.phase) for b in _of(logs[0].finalize(), InsulinBolus)]
    assert phases == [(1, BolusPhase.PROGRAMMED), (1, BolusPhase.DELIVERED),
                      (2, BolusPhase.PROGRAMMED), (2, BolusPhase.DELIVERED)]


def test_sequence_numbers_strictly_increase_and_total_daily_insulin_adds_up() -> None:
    settings = PumpSettings(initial_u=150, refill_every_days=1, refill_minute=20 * 60,
                            occlusion_per_day=0.7, low_reservoir_u=285, battery_life_days=1.0)
    bank, logs, cal = _bank([0.9, 1.6], days=3, settings=settings)
    meals = {m: [(0, 5.0), (1, 7.35)] for m in (8 * 60, 13 * 60, 19 * 60, 1440 + 8 * 60,
                                                 1440 + 19 * 60, 2880 + 12 * 60)}
    _, _, total = _run(bank, cal.minutes, meals)
    for i, log in enumerate(logs):
        records = log.finalize()
        seqs = [r.sequence for r in records]
        assert seqs == list(range(1, len(records) + 1))
        times = [r.time for r in records]
        assert times == sorted(times)
        tdis = _of(records, TotalDailyInsulin)
        assert [t.day for t in tdis] == [dt.date(2027, 7, 1), dt.date(2027, 7, 2)]
        for day, tdi in enumerate(tdis):
            delivered = total[i, day * 1440:(day + 1) * 1440].sum()
            assert tdi.total_iu == pytest.approx(delivered, abs=1e-9)
        delivered_boluses = sum(b.fast_iu for b in _of(records, InsulinBolus)
                                if b.phase is BolusPhase.DELIVERED and b.time.day == 1)
        assert tdis[0].bolus_iu == pytest.approx(delivered_boluses)
        kinds = {a.annunciation for a in _of(records, AnnunciationEvent)}
        assert {Annunciation.RESERVOIR_LOW, Annunciation.BATTERY_LOW} <= kinds


def test_reservoir_runs_empty_stops_therapy_and_refill_resumes() -> None:
    settings = PumpSettings(initial_u=3.0, refill_every_days=0, empty_refill_delay_min=120,
                            low_reservoir_u=2.0)
    bank, logs, _ = _bank([1.2], settings=settings)
    _, _, total = _run(bank, 600, {60: [(0, 2.0)]})
    # Never more than the reservoir held, until the refill.
    stop = next(r for r in _of(logs[0].finalize(), TherapyStateChange)
                if r.new_state is TherapyState.STOP)
    stop_min = int((stop.time - bank.calendar.start).total_seconds() // 60)
    assert total[0, :stop_min + 1].sum() == pytest.approx(3.0, abs=1e-9)
    assert not total[0, stop_min + 1:stop_min + 120].any()
    assert total[0, stop_min + 125:].sum() > 0  # refilled and running again
    records = logs[0].records
    kinds = [a.annunciation for a in _of(records, AnnunciationEvent)]
    assert kinds.index(Annunciation.RESERVOIR_LOW) < kinds.index(Annunciation.RESERVOIR_EMPTY)
    states = [(r.previous_state, r.new_state) for r in _of(records, TherapyStateChange)]
    assert states == [(TherapyState.RUN, TherapyState.STOP), (TherapyState.STOP,
                                                              TherapyState.RUN)]
    # A bolus asked for while stopped is not given.
    assert bank.request_bolus(0, stop_min + 10, 1.0) == 0 or bank.running[0]


def test_bolus_cut_short_by_empty_reservoir_is_recorded_as_partial() -> None:
    settings = PumpSettings(initial_u=2.0, refill_every_days=0, empty_refill_delay_min=600,
                            bolus_speed_u_per_min=1.0, low_reservoir_u=0)
    bank, logs, _ = _bank([0.0], settings=settings)
    _, bolus, _ = _run(bank, 10, {0: [(0, 5.0)]})
    assert bolus[0].sum() == 2000
    boluses = _of(logs[0].finalize(), InsulinBolus)
    assert [(b.phase, b.fast_iu) for b in boluses] == [(BolusPhase.PROGRAMMED, 5.0),
                                                       (BolusPhase.DELIVERED, 2.0)]
    kinds = [a.annunciation for a in _of(logs[0].records, AnnunciationEvent)]
    assert Annunciation.BOLUS_CANCELED in kinds and Annunciation.RESERVOIR_EMPTY in kinds


def test_occlusion_stops_delivery_until_the_set_is_changed() -> None:
    settings = PumpSettings(initial_u=200, refill_every_days=0, occlusion_per_day=3.0,
                            occlusion_resolve_min=45, battery_life_days=0)
    bank, logs, cal = _bank([1.0], settings=settings, seed=3)
    _, _, total = _run(bank, cal.minutes)
    records = logs[0].finalize()
    occl = [a for a in _of(records, AnnunciationEvent)
            if a.annunciation is Annunciation.OCCLUSION]
    assert occl
    first = int((occl[0].time - cal.start).total_seconds() // 60)
    assert not total[0, first + 1:first + 45].any()
    assert total[0, first + 46:first + 160].sum() > 0


def test_temporary_basal_rate_halves_delivery() -> None:
    bank, logs, _ = _bank([1.2])
    for m in range(240):
        if m == 60:
            assert bank.start_temp_basal(0, m, 50, 120)
        bank.step(m)
        if m == 59:
            before = bank.day_basal[0]
        if m == 179:
            during = bank.day_basal[0] - before
    assert during == pytest.approx(1200, abs=INC_MU)  # 2 h at 0.6 U/h
    records = logs[0].finalize()
    start = _of(records, TempBasalStart)[0]
    end = _of(records, TempBasalEnd)[0]
    assert (start.value, start.duration_min) == (50.0, 120)
    assert (end.effective_duration_min, end.canceled) == (120, False)
    assert any(a.annunciation is Annunciation.TEMP_BASAL_OVER
               for a in _of(records, AnnunciationEvent))


def test_pen_injections_are_rounded_to_the_pen_increment() -> None:
    pens = PenTherapy([1.2, 0.6], TherapySettings(pen_increment_u=0.5))
    assert pens.inject(0, 4.74) == 4.5
    assert pens.inject(1, 0.3) == 0.0
    dose = pens.step(0)
    assert dose == pytest.approx([4.5 + 0.02, 0.01])
    assert pens.step(1) == pytest.approx([0.02, 0.01])


# --- therapy inside a run -----------------------------------------------------------------

def test_meal_boluses_in_a_run_follow_the_carb_ratio() -> None:
    patient = standard_patient("adult#002")
    base = default_scenario()
    scenario = dataclasses.replace(base, therapy=dataclasses.replace(
        base.therapy, correction=False, hypo_treatment_g=0))
    result = simulate_cohort([patient], scenario, 1, seed=11, records=True)
    assert result.devices is not None
    pump = result.devices[0].pump
    assert pump is not None
    programmed = [b.fast_iu for b in _of(pump.records, InsulinBolus)
                  if b.phase is BolusPhase.PROGRAMMED]
    expected = [math.floor(c / patient.carb_ratio_g_per_u / 0.05 + 1e-9) * 0.05
                for c in (50, 70, 80)]
    assert programmed == pytest.approx(expected)
    # Everything delivered to the patient is a multiple of 0.05 U per minute.
    assert np.allclose(np.round(result.insulin_u[0] / 0.05) * 0.05, result.insulin_u[0],
                       atol=1e-5)


def test_mdi_run_has_no_insulin_device() -> None:
    base = default_scenario()
    scenario = dataclasses.replace(base, therapy=dataclasses.replace(base.therapy,
                                                                     mode=TherapyMode.MDI))
    result = simulate_cohort([standard_patient("adult#001")], scenario, 1, seed=1,
                             records=True)
    assert result.devices is not None
    assert result.devices[0].pump is None
    assert result.devices[0].meter is not None
    # Injections (0.5 U steps) on top of the flat long-acting basal.
    basal = standard_patient("adult#001").basal_u_per_h / 60
    boluses = result.insulin_u[0] - basal
    given = boluses[boluses > 1e-4]
    assert given.size >= 3
    assert np.allclose(np.round(given / 0.5) * 0.5, given, atol=1e-4)
