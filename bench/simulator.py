"""Throughput of the cohort physiology against the reference UVA/Padova implementation.

Simulates one day at 1-minute resolution for a cohort (default 1,000 patients: perturbed
variants of the 30 standard patients) with three meals (50 g at 07:00, 70 g at 12:00, 80 g at
18:00, eaten at 5 g/min), each patient's basal insulin and a meal bolus (carbs / carb ratio)
delivered in the first minute of each meal. The CGM sensor bank observes every minute when the
sensor module is available ("sensors": "cgm" in the JSON), otherwise only the physiology is
measured ("sensors": "none"). The same scenario is run on simglucose's stock ``T1DPatient``
(one patient, one day) for the baseline. numpy is pinned to one thread so the figures are
one-core figures; the cohort is timed ``--repeat`` times and the fastest run counts (the
machine may be shared). Last line: one JSON object with the figures.

    python bench/simulator.py [--patients 1000] [--days 1] [--repeat 3] [--no-sensors]
"""

from __future__ import annotations

import os

# One-core figures: pin the BLAS/OpenMP pools before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from simulators.physiology import (  # noqa: E402
    Cohort,
    PatientParams,
    perturbed_patients,
    standard_patient,
    standard_patients,
)

MINUTES_PER_DAY = 24 * 60
MEALS = ((7 * 60, 50.0), (12 * 60, 70.0), (18 * 60, 80.0))
EAT_RATE_G_PER_MIN = 5.0
REFERENCE_PATIENT = "adolescent#001"


def carbs_per_minute(days: int) -> np.ndarray:
    """Carbohydrate intake, g/min, for every minute of ``days`` days (same for everyone)."""
    carbs = np.zeros(days * MINUTES_PER_DAY)
    for day in range(days):
        for start, grams in MEALS:
            minute, left = day * MINUTES_PER_DAY + start, grams
            while left > 0:
                carbs[minute] = min(EAT_RATE_G_PER_MIN, left)
                left -= carbs[minute]
                minute += 1
    return carbs


def boluses(patients: tuple[PatientParams, ...]) -> dict[int, np.ndarray]:
    """Meal bolus per patient, U (delivered within one minute), keyed by minute of the day."""
    ratio = np.array([p.carb_ratio_g_per_u for p in patients])
    return {start: grams / ratio for start, grams in MEALS}


def make_cgm(n: int, days: int, seed: int) -> Any:
    """The CGM bank of the sensor module, or None when it cannot be built."""
    try:
        # Imported here: the sensor module is optional for this benchmark.
        from simulators.device_clock import SimCalendar  # noqa: PLC0415
        from simulators.sensors import CgmBank, CgmSettings  # noqa: PLC0415

        rngs = [np.random.default_rng([seed, i]) for i in range(n)]
        calendar = SimCalendar(dt.date(2024, 1, 1), days, "UTC")
        return CgmBank(settings=CgmSettings(), calendar=calendar, rngs=rngs)
    except Exception as exc:  # the sensor module is developed separately; report, don't fail
        print(f"CGM sensors not included ({type(exc).__name__}: {exc})")
        return None


def run_cohort(n: int, days: int, seed: int, sensors: bool) -> tuple[float, bool]:
    """Seconds to simulate the cohort; second item says whether the CGM sensors ran."""
    patients = perturbed_patients(standard_patients(), n, seed=seed)
    cohort = Cohort(patients)
    carbs = carbs_per_minute(days)
    basal = cohort.basal_u_per_min
    with_bolus = {minute: basal + bolus for minute, bolus in boluses(patients).items()}
    cgm = make_cgm(n, days, seed) if sensors else None
    start = time.perf_counter()
    for minute in range(days * MINUTES_PER_DAY):
        insulin = with_bolus.get(minute % MINUTES_PER_DAY, basal)
        cohort.step(carbs[minute], insulin)
        if cgm is not None:
            cgm.observe(minute, cohort.subcutaneous_glucose_mg_dl)
    elapsed = time.perf_counter() - start
    bg = cohort.blood_glucose_mg_dl
    if not np.all(np.isfinite(bg)):
        raise SystemExit("cohort glucose is not finite")
    return elapsed, cgm is not None


def run_simglucose(days: int) -> float:
    """Seconds for simglucose's stock T1DPatient to simulate one patient for ``days`` days."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gym / pandas / pkg_resources deprecations
        from simglucose.patient.t1dpatient import Action, T1DPatient  # noqa: PLC0415

        patient = T1DPatient.withName(REFERENCE_PATIENT)
    params = standard_patient(REFERENCE_PATIENT)
    basal = params.basal_u_per_h / 60.0
    bolus = {start: float(b[0]) for start, b in boluses((params,)).items()}
    carbs = carbs_per_minute(days)
    start = time.perf_counter()
    for minute in range(days * MINUTES_PER_DAY):
        insulin = basal + bolus.get(minute % MINUTES_PER_DAY, 0.0)
        patient.step(Action(CHO=float(carbs[minute]), insulin=insulin))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000, help="cohort size")
    parser.add_argument("--days", type=int, default=1, help="simulated days")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the perturbed cohort")
    parser.add_argument("--no-sensors", action="store_true", help="physiology only")
    parser.add_argument("--repeat", type=int, default=3, help="cohort runs; the best counts")
    args = parser.parse_args()

    def best_of(sensors: bool) -> tuple[float, bool]:
        repeats = max(1, args.repeat)
        runs = [run_cohort(args.patients, args.days, args.seed, sensors) for _ in range(repeats)]
        return min(seconds for seconds, _ in runs), runs[0][1]

    physiology_s, _ = best_of(sensors=False)
    physiology_rate = args.patients * args.days / physiology_s
    print(
        f"physiology only: {args.patients} patients x {args.days} day(s) in {physiology_s:.2f} s"
        f" = {physiology_rate:,.0f} patient-days/s (best of {args.repeat})"
    )
    if args.no_sensors:
        total_s, with_sensors = physiology_s, False
    else:
        total_s, with_sensors = best_of(sensors=True)
    rate = args.patients * args.days / total_s
    label = "physiology + CGM sensors" if with_sensors else "physiology (sensors NOT included)"
    print(f"{label}: {total_s:.2f} s = {rate:,.0f} patient-days/s (best of {args.repeat})")

    reference_s = run_simglucose(1)
    reference_rate = 1.0 / reference_s
    print(
        f"simglucose T1DPatient (stock): 1 patient x 1 day in {reference_s:.2f} s"
        f" = {reference_rate:.4f} patient-days/s"
    )
    ratio = rate / reference_rate
    print(f"ratio vs simglucose: {ratio:,.0f}x")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peak RSS: {rss_mb:.0f} MB")
    print(
        json.dumps(
            {
                "patients": args.patients,
                "days": args.days,
                "sensors": "cgm" if with_sensors else "none",
                "patient_days_per_s": round(rate, 1),
                "physiology_patient_days_per_s": round(physiology_rate, 1),
                "simglucose_patient_days_per_s": round(reference_rate, 5),
                "ratio_vs_simglucose": round(ratio, 1),
                "rss_mb": round(rss_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
