"""Fidelity of the vectorised physiology against the reference UVA/Padova implementation.

The reference is simglucose 0.2.11 (``T1DPatient``, integrated with scipy's dopri5). Both are fed
the same per-minute carbohydrate intake and insulin infusion over one day with three meals; the
plasma glucose traces, sampled every minute, must agree for every patient of the population.

simglucose evaluates its parameters through a pandas Series on every right-hand-side call, which
makes one patient-day take several seconds. The reference runs here therefore read the same
parameter values from a plain namespace (``test_fast_parameter_access_is_faithful`` checks that
this changes nothing), and the 30 patients are spread over two worker processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from simulators.physiology import Cohort, PatientParams, standard_patient, standard_patients

pytestmark = pytest.mark.slow

MINUTES = 24 * 60
# (minute of day, grams): breakfast 07:00, lunch 12:00, dinner 18:00.
MEALS = ((7 * 60, 50.0), (12 * 60, 70.0), (18 * 60, 80.0))
EAT_RATE_G_PER_MIN = 5.0  # the reference patient eats at most 5 g per minute

RMSE_LIMIT_MG_DL = 1.0
MAX_ABS_LIMIT_MG_DL = 3.0


def scenario(patient: PatientParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-minute carbohydrate intake (g/min) and insulin infusion (U/min) for one patient."""
    carbs = np.zeros(MINUTES)
    insulin = np.full(MINUTES, patient.basal_u_per_h / 60.0)
    for start, grams in MEALS:
        left, minute = grams, start
        while left > 0:
            carbs[minute] = min(EAT_RATE_G_PER_MIN, left)
            left -= carbs[minute]
            minute += 1
        # Meal bolus delivered within the first minute of the meal.
        insulin[start] += grams / patient.carb_ratio_g_per_u
    return carbs, insulin


def _import_reference() -> tuple[Any, Any]:
    with warnings.catch_warnings():
        # simglucose pulls in gym/pandas/pkg_resources, which emit deprecation warnings.
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient
    return T1DPatient, Action


def _reference_patient(name: str, *, fast: bool) -> Any:
    t1d_patient, _ = _import_reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patient = t1d_patient.withName(name)
    if fast:
        patient._params = SimpleNamespace(**patient._params.to_dict())
    return patient


def reference_trace(name: str, minutes: int = MINUTES, *, fast: bool = True) -> np.ndarray:
    """States of the reference patient at every minute 0 … ``minutes``, shape (minutes + 1, 13)."""
    _, action = _import_reference()
    patient = _reference_patient(name, fast=fast)
    carbs, insulin = scenario(standard_patient(name))
    states = [np.array(patient.state, dtype=float)]
    for minute in range(minutes):
        patient.step(action(CHO=float(carbs[minute]), insulin=float(insulin[minute])))
        states.append(np.array(patient.state, dtype=float))
    return np.array(states)


def cohort_trace(patients: tuple[PatientParams, ...]) -> np.ndarray:
    """States of all patients at every minute 0 … MINUTES, shape (n, MINUTES + 1, 13)."""
    inputs = [scenario(p) for p in patients]
    carbs = np.array([c for c, _ in inputs])
    insulin = np.array([i for _, i in inputs])
    cohort = Cohort(patients)
    states = [cohort.state]
    for minute in range(MINUTES):
        cohort.step(carbs[:, minute], insulin[:, minute])
        states.append(cohort.state)
    return np.stack(states, axis=1)


@pytest.fixture(scope="module")
def reference_traces() -> dict[str, np.ndarray]:
    names = [p.name for p in standard_patients()]
    workers = min(2, os.cpu_count() or 1)
    if workers == 1:
        return {name: reference_trace(name) for name in names}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return dict(zip(names, pool.map(reference_trace, names), strict=True))


@pytest.fixture(scope="module")
def our_traces() -> dict[str, np.ndarray]:
    patients = standard_patients()
    traces = cohort_trace(patients)
    return {p.name: traces[i] for i, p in enumerate(patients)}


def test_scenario_matches_the_brief() -> None:
    carbs, insulin = scenario(standard_patient("adult#001"))
    assert carbs.sum() == pytest.approx(200.0)
    assert carbs.max() == EAT_RATE_G_PER_MIN
    assert np.count_nonzero(carbs) == 10 + 14 + 16
    assert np.count_nonzero(insulin > insulin.min()) == 3


def test_fast_parameter_access_is_faithful() -> None:
    """Reading the reference parameters from a namespace gives the same trajectory."""
    minutes = 7 * 60 + 30  # through the start of breakfast and its bolus
    name = "adolescent#001"
    stock = _reference_patient(name, fast=False)
    fast = _reference_patient(name, fast=True)
    _, action = _import_reference()
    carbs, insulin = scenario(standard_patient(name))
    for minute in range(7 * 60 - 5, minutes):
        # Skip the fasting night on both (it is a steady state), only the meal matters here.
        act = action(CHO=float(carbs[minute]), insulin=float(insulin[minute]))
        stock.step(act)
        fast.step(act)
    np.testing.assert_array_equal(np.asarray(stock.state), np.asarray(fast.state))


@pytest.mark.parametrize("name", [p.name for p in standard_patients()])
def test_blood_glucose_matches_reference(
    name: str,
    reference_traces: dict[str, np.ndarray],
    our_traces: dict[str, np.ndarray],
) -> None:
    vg = standard_patient(name).Vg
    ours = our_traces[name][:, 3] / vg
    reference = reference_traces[name][:, 3] / vg
    assert ours.shape == reference.shape == (MINUTES + 1,)
    diff = ours - reference
    rmse = float(np.sqrt(np.mean(diff**2)))
    worst = float(np.max(np.abs(diff)))
    assert rmse <= RMSE_LIMIT_MG_DL, f"{name}: RMSE {rmse:.4f} mg/dL"
    assert worst <= MAX_ABS_LIMIT_MG_DL, f"{name}: max |diff| {worst:.4f} mg/dL"
    # The scenario must actually move glucose, or the comparison would be vacuous.
    assert reference.max() - reference.min() > 20.0


@pytest.mark.parametrize("name", [p.name for p in standard_patients()])
def test_subcutaneous_glucose_matches_reference(
    name: str,
    reference_traces: dict[str, np.ndarray],
    our_traces: dict[str, np.ndarray],
) -> None:
    vg = standard_patient(name).Vg
    diff = our_traces[name][:, 12] / vg - reference_traces[name][:, 12] / vg
    assert float(np.sqrt(np.mean(diff**2))) <= RMSE_LIMIT_MG_DL
    assert float(np.max(np.abs(diff))) <= MAX_ABS_LIMIT_MG_DL


def test_all_states_track_reference(
    reference_traces: dict[str, np.ndarray], our_traces: dict[str, np.ndarray]
) -> None:
    """Every state stays close relative to its own scale, not only glucose."""
    for name, reference in reference_traces.items():
        scale = np.maximum(np.abs(reference).max(axis=0), 1e-9)
        error = np.abs(our_traces[name] - reference).max(axis=0) / scale
        assert error.max() < 0.02, f"{name}: relative state error {error}"
