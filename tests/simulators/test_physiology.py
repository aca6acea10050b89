"""Behaviour of the UVA/Padova physiology: population data, steady state, cohort stepping."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from simulators.errors import InvalidInputError, SimulatorError, UnknownPatientError
from simulators.physiology import (
    JITTER_CLIP_SD,
    JITTERED_PARAMETERS,
    N_STATES,
    STATE_NAMES,
    Cohort,
    PatientParams,
    perturbed_patients,
    standard_patient,
    standard_patients,
)

DAY = 24 * 60

# Parameters recomputed from the steady-state equations for a perturbed patient.
DERIVED = {
    "Gpb", "Gtb", "Vm0", "kp1", "Ipb", "Ilb", "m2", "m4", "m30", "u2ss", "isc1ss", "isc2ss",
    "Rdb", "PCRb", "x0", "name",
}  # fmt: skip


def run(cohort: Cohort, minutes: int, carbs: float = 0.0, insulin: object = None) -> np.ndarray:
    """Step minute by minute; returns blood glucose per minute, shape (minutes, n)."""
    rate = cohort.basal_u_per_min if insulin is None else insulin
    out = np.empty((minutes, cohort.n))
    for minute in range(minutes):
        cohort.step(carbs, rate)  # type: ignore[arg-type]
        out[minute] = cohort.blood_glucose_mg_dl
    return out


# ---------------------------------------------------------------------------------------------
# Population data
# ---------------------------------------------------------------------------------------------


def test_standard_population_order_and_names() -> None:
    names = [p.name for p in standard_patients()]
    groups = ("adolescent", "adult", "child")
    expected = [f"{group}#{i:03d}" for group in groups for i in range(1, 11)]
    assert names == expected
    assert standard_patients() is standard_patients()  # parsed once


def test_published_values_are_loaded() -> None:
    p = standard_patient("adolescent#001")
    assert p.BW == 68.706
    assert p.Gb == 149.02
    assert p.kabs == 0.091043
    assert p.u2ss == 1.21697571391
    assert p.carb_ratio_g_per_u == 12.0
    assert p.age_years == 18.0
    assert p.x0[STATE_NAMES.index("Gp")] == p.Gpb
    child = standard_patient("child#010")
    assert child.carb_ratio_g_per_u == 18.0
    assert child.correction_factor_mg_dl_per_u == pytest.approx(29.222745246)
    assert child.total_daily_insulin_u == pytest.approx(20.6516964887)


def test_basal_rate_formula() -> None:
    for p in standard_patients():
        assert p.basal_u_per_h == pytest.approx(p.u2ss * p.BW / 6000 * 60, rel=1e-15)
        assert 0.2 < p.basal_u_per_h < 3.0
    cohort = Cohort(standard_patients())
    np.testing.assert_allclose(
        cohort.basal_u_per_min * 60, [p.basal_u_per_h for p in standard_patients()], rtol=1e-14
    )


def test_initial_state_is_the_published_steady_state() -> None:
    for p in standard_patients():
        assert len(p.x0) == N_STATES
        assert p.x0[3] / p.Vg == pytest.approx(p.Gb, rel=1e-9)


def test_unknown_patient_name() -> None:
    with pytest.raises(UnknownPatientError) as info:
        standard_patient("adult#011")
    assert isinstance(info.value, SimulatorError)
    assert isinstance(info.value, KeyError)
    assert "adult#011" in str(info.value)
    assert not str(info.value).startswith("'")  # readable, not a quoted repr
    with pytest.raises(KeyError):
        standard_patient("Adult#001")


def test_params_validation() -> None:
    p = standard_patient("adult#001")
    with pytest.raises(InvalidInputError):
        dataclasses.replace(p, x0=p.x0[:12])
    with pytest.raises(InvalidInputError):
        dataclasses.replace(p, Vg=math.nan)
    with pytest.raises(InvalidInputError):
        dataclasses.replace(p, BW=0.0)
    with pytest.raises(InvalidInputError):
        dataclasses.replace(p, b=1.0)


# ---------------------------------------------------------------------------------------------
# Steady state
# ---------------------------------------------------------------------------------------------


def test_basal_only_stays_at_fasting_glucose() -> None:
    patients = standard_patients()
    cohort = Cohort(patients)
    gb = np.array([p.Gb for p in patients])
    bg = run(cohort, DAY)
    assert np.abs(bg - gb).max() <= 1.0
    assert np.abs(cohort.subcutaneous_glucose_mg_dl - gb).max() <= 1.0
    assert cohort.t_min == DAY


@pytest.mark.parametrize("jitter", [0.1, 0.3])
def test_perturbed_patients_start_at_their_steady_state(jitter: float) -> None:
    patients = perturbed_patients(standard_patients(), 60, seed=7, jitter=jitter)
    cohort = Cohort(patients)
    gb = np.array([p.Gb for p in patients])
    np.testing.assert_allclose(cohort.blood_glucose_mg_dl, gb, rtol=1e-12)
    bg = run(cohort, DAY)
    assert np.abs(bg - gb).max() <= 1.0


def test_zero_jitter_reproduces_the_published_steady_state() -> None:
    base = standard_patients()
    same = perturbed_patients(base, len(base), seed=1, jitter=0.0)
    for original, copy in zip(base, same, strict=True):
        assert copy.name == f"{original.name}/v{base.index(original):04d}"
        for field in dataclasses.fields(PatientParams):
            if field.name == "name":
                continue
            a, b = getattr(original, field.name), getattr(copy, field.name)
            if field.name == "x0":
                np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
            else:
                assert b == pytest.approx(a, rel=1e-9), field.name


# ---------------------------------------------------------------------------------------------
# Perturbed populations
# ---------------------------------------------------------------------------------------------


def test_perturbed_reproducible_and_seed_dependent() -> None:
    base = [standard_patient("adult#001"), standard_patient("child#003")]
    a = perturbed_patients(base, 20, seed=42)
    b = perturbed_patients(base, 20, seed=42)
    c = perturbed_patients(base, 20, seed=43)
    assert a == b
    assert a != c
    assert [p.BW for p in a] != [p.BW for p in c]
    # Prefix stability: the first variants do not depend on how many are drawn.
    assert perturbed_patients(base, 5, seed=42) == a[:5]
    assert [p.name for p in a[:3]] == ["adult#001/v0000", "child#003/v0001", "adult#001/v0002"]


@pytest.mark.parametrize("jitter", [0.05, 0.1, 0.5])
def test_jitter_bounds_respected(jitter: float) -> None:
    base = standard_patients()
    patients = perturbed_patients(base, 300, seed=11, jitter=jitter)
    low, high = math.exp(-JITTER_CLIP_SD * jitter), math.exp(JITTER_CLIP_SD * jitter)
    ratios = []
    for i, p in enumerate(patients):
        parent = base[i % len(base)]
        assert p.name.startswith(parent.name + "/v")
        for field in dataclasses.fields(PatientParams):
            key = field.name
            if key in DERIVED:
                continue
            value, reference = getattr(p, key), getattr(parent, key)
            if key in JITTERED_PARAMETERS:
                ratio = value / reference
                assert low * (1 - 1e-12) <= ratio <= high * (1 + 1e-12), (p.name, key, ratio)
                ratios.append(math.log(ratio) / jitter)
            else:
                assert value == reference, (p.name, key)
        assert p.kmin < p.kmax
        assert p.Gtb > 0 and p.Vm0 > 0 and p.u2ss > 0
    # The draws look like a clipped standard normal on the log scale.
    assert abs(float(np.mean(ratios))) < 0.05
    assert 0.9 < float(np.std(ratios)) < 1.1


def test_perturbed_argument_errors() -> None:
    base = standard_patients()
    with pytest.raises(InvalidInputError):
        perturbed_patients([], 3, seed=1)
    with pytest.raises(InvalidInputError):
        perturbed_patients(base, -1, seed=1)
    with pytest.raises(InvalidInputError):
        perturbed_patients(base, 3, seed=1, jitter=-0.1)
    with pytest.raises(InvalidInputError):
        perturbed_patients(base, 3, seed=1, jitter=math.nan)
    with pytest.raises(InvalidInputError):
        perturbed_patients(base, 3, seed=1, jitter=2.0)
    assert perturbed_patients(base, 0, seed=1) == ()


# ---------------------------------------------------------------------------------------------
# Cohort stepping
# ---------------------------------------------------------------------------------------------


def _mixed_inputs(cohort: Cohort, minute: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n = cohort.n
    carbs = np.where(rng.random(n) < 0.3, 5.0, 0.0) if 100 <= minute < 130 else np.zeros(n)
    insulin = cohort.basal_u_per_min * (0.5 + rng.random(n))
    if minute == 100:
        insulin += 4.0
    exercise = rng.random(n) if 200 <= minute < 240 else np.zeros(n)
    return carbs, insulin, exercise


def test_deterministic() -> None:
    patients = perturbed_patients(standard_patients(), 12, seed=5)
    finals = []
    for _ in range(2):
        cohort = Cohort(patients)
        rng = np.random.default_rng(0)
        for minute in range(400):
            carbs, insulin, exercise = _mixed_inputs(cohort, minute, rng)
            cohort.step(carbs, insulin, exercise=exercise)
        finals.append(cohort.state)
    np.testing.assert_array_equal(finals[0], finals[1])


def test_vectorised_equals_per_patient_runs_exactly() -> None:
    patients = standard_patients()[::3] + perturbed_patients(standard_patients(), 7, seed=9)
    cohort = Cohort(patients)
    singles = [Cohort([p]) for p in patients]
    rng = np.random.default_rng(1)
    for minute in range(400):
        carbs, insulin, exercise = _mixed_inputs(cohort, minute, rng)
        cohort.step(carbs, insulin, exercise=exercise)
        for i, single in enumerate(singles):
            single.step(carbs[i], insulin[i], exercise=exercise[i])
    together = cohort.state
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(single.state[0], together[i])


def test_multi_minute_step_equals_single_minutes() -> None:
    patients = standard_patients()[:4]
    a, b = Cohort(patients), Cohort(patients)
    plan = [(0.0, 30), (5.0, 12), (2.5, 3), (0.0, 200)]
    for carbs, minutes in plan:
        a.step(carbs, a.basal_u_per_min, minutes=minutes)
        for _ in range(minutes):
            b.step(carbs, b.basal_u_per_min)
    np.testing.assert_array_equal(a.state, b.state)
    assert a.t_min == b.t_min == 245
    a.step(0.0, 0.0, minutes=0)
    assert a.t_min == 245


def test_meal_raises_and_insulin_lowers_glucose() -> None:
    patients = standard_patients()
    fed, bolused = Cohort(patients), Cohort(patients)
    basal = fed.basal_u_per_min
    cr = np.array([p.carb_ratio_g_per_u for p in patients])
    for minute in range(240):
        carbs = 5.0 if minute < 12 else 0.0
        fed.step(carbs, basal)
        bolused.step(carbs, basal + (60.0 / cr if minute == 0 else 0.0))
    gb = np.array([p.Gb for p in patients])
    assert np.all(fed.blood_glucose_mg_dl > gb + 20)
    assert np.all(bolused.blood_glucose_mg_dl < fed.blood_glucose_mg_dl)
    # Interstitial glucose lags plasma glucose but follows it.
    assert np.all(fed.subcutaneous_glucose_mg_dl > gb + 10)


def test_exercise_lowers_glucose() -> None:
    patients = standard_patients()
    rest, active, none = Cohort(patients), Cohort(patients), Cohort(patients)
    for _ in range(60):
        rest.step(0.0, rest.basal_u_per_min, exercise=0.0)
        active.step(0.0, active.basal_u_per_min, exercise=0.6)
        none.step(0.0, none.basal_u_per_min)
    np.testing.assert_array_equal(rest.state, none.state)
    drop = rest.blood_glucose_mg_dl - active.blood_glucose_mg_dl
    assert np.all(drop > 5.0)
    assert np.all(active.blood_glucose_mg_dl > 40.0)
    # Stopping the exercise input stops its effect: glucose recovers towards basal.
    low = active.blood_glucose_mg_dl.copy()
    for _ in range(240):
        active.step(0.0, active.basal_u_per_min)
    assert np.all(active.blood_glucose_mg_dl > low)


def test_shapes_and_broadcasting() -> None:
    patients = standard_patients()[:5]
    cohort = Cohort(patients, dt_substeps=2)
    assert cohort.n == 5
    assert cohort.state.shape == (5, N_STATES) and cohort.state.dtype == np.float64
    assert cohort.blood_glucose_mg_dl.shape == (5,)
    assert cohort.subcutaneous_glucose_mg_dl.shape == (5,)
    assert cohort.basal_u_per_min.shape == (5,)
    cohort.step(1.0, 0.01)  # scalars
    cohort.step([1.0], [0.01])  # length-1 sequences broadcast too
    cohort.step(np.ones(5), np.full(5, 0.01), exercise=np.zeros(5))
    cohort.step(np.int64(0), 0)  # integer inputs
    # The state read-out is a copy; assigning a new state replaces it.
    snapshot = cohort.state
    snapshot[:, 3] = 0.0
    assert np.all(cohort.state[:, 3] > 0)
    cohort.state = np.array([p.x0 for p in patients])
    np.testing.assert_allclose(cohort.blood_glucose_mg_dl, [p.Gb for p in patients])
    with pytest.raises(InvalidInputError):
        cohort.state = np.zeros((4, N_STATES))
    with pytest.raises(InvalidInputError):
        cohort.step(np.ones(4), 0.0)
    with pytest.raises(InvalidInputError):
        cohort.step(np.ones((5, 1)), 0.0)


@pytest.mark.parametrize(
    ("carbs", "insulin", "exercise", "minutes"),
    [
        (-1.0, 0.0, None, 1),
        ([0, 0, -0.1], 0.0, None, 1),
        (math.nan, 0.0, None, 1),
        (0.0, math.nan, None, 1),
        (0.0, math.inf, None, 1),
        (0.0, -0.01, None, 1),
        (0.0, 0.0, 1.5, 1),
        (0.0, 0.0, -0.1, 1),
        (0.0, 0.0, math.nan, 1),
        ("five", 0.0, None, 1),
        (0.0, 0.0, None, -1),
        (0.0, 0.0, None, 1.5),
    ],
)
def test_bad_inputs_raise(
    carbs: object, insulin: object, exercise: object, minutes: object
) -> None:
    cohort = Cohort(standard_patients()[:3])
    before = cohort.state
    with pytest.raises(SimulatorError):
        cohort.step(carbs, insulin, exercise=exercise, minutes=minutes)  # type: ignore[arg-type]
    np.testing.assert_array_equal(cohort.state, before)
    assert cohort.t_min == 0


def test_bad_cohort_arguments() -> None:
    with pytest.raises(InvalidInputError):
        Cohort([])
    with pytest.raises(InvalidInputError):
        Cohort(standard_patients()[:2], dt_substeps=0)


def test_substeps_converge() -> None:
    """More sub-steps change the trajectory only marginally (the default is accurate)."""
    patients = standard_patients()
    coarse, fine = Cohort(patients), Cohort(patients, dt_substeps=4)
    for minute in range(600):
        carbs = 5.0 if 60 <= minute < 76 else 0.0
        bolus = 0.8 if minute == 60 else 0.0
        coarse.step(carbs, coarse.basal_u_per_min + bolus)
        fine.step(carbs, fine.basal_u_per_min + bolus)
        assert np.abs(coarse.blood_glucose_mg_dl - fine.blood_glucose_mg_dl).max() < 1.0
