"""A simple type 2 diabetes patient on oral medication who uses a blood glucose meter only.

This is deliberately a *simple* model, not a validated simulator: Bergman's minimal model of
glucose–insulin dynamics with an endogenous insulin response, a two-compartment gut and a
crude exercise term. It exists so that meter-only (non-insulin) patients produce plausible
fasting and post-meal readings for the device and export layers; do not draw clinical
conclusions from it. Per patient (minutes, glucose ``G`` in mg/dL, insulin ``I`` in µU/mL):

- gut: ``Q1' = −kabs·Q1 + D``, ``Q2' = kabs·(Q1 − Q2)`` (mg), ``Ra = f·kabs·Q2 / (Vg·BW)``;
- glucose: ``G' = −(p1·(1 + 2e) + X·(1 + e))·G + p1·Gb + Ra``, where ``Gb`` is the fasting
  glucose the patient rests at *on its oral medication* (metformin lowering hepatic glucose
  output is folded into ``Gb``) and ``e`` the exercise intensity (0…1);
- insulin action: ``X' = −p2·X + p2·SI·(I − Ib)``, with an insulin sensitivity ``SI`` a
  fraction of a healthy person's (insulin resistance);
- insulin: ``I' = −n·(I − Ib) + γ·max(G − Gb, 0) + u``, where ``γ`` is a reduced
  beta-cell response and ``u`` any injected insulin (normally none);
- interstitial glucose follows plasma glucose with a 10-minute time constant.

:class:`Type2Cohort` has the same stepping interface as :class:`simulators.physiology.Cohort`,
so :func:`simulators.run.simulate_cohort` drives it the same way (therapy mode ``oral``: no
insulin device, meter readings only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulators.errors import InvalidInputError, UnknownPatientError

FloatArray = npt.NDArray[np.float64]

#: Insulin distribution volume per kg body weight (mL/kg) for injected insulin.
_INSULIN_VOLUME_ML_PER_KG = 120.0


@dataclass(frozen=True, slots=True)
class Type2Params:
    """One simple type 2 patient (see the module docstring for the equations)."""

    name: str
    age_years: float
    BW: float
    Gb: float                       # fasting glucose on oral medication, mg/dL
    SI: float = 1.5e-4              # insulin sensitivity, per min per µU/mL
    p1: float = 0.012               # glucose effectiveness, 1/min
    p2: float = 0.025               # insulin action rate, 1/min
    Ib: float = 12.0                # basal insulin, µU/mL
    n: float = 0.15                 # insulin clearance, 1/min
    gamma: float = 0.06             # beta-cell response, µU/mL/min per mg/dL above Gb
    kabs: float = 0.025             # gut absorption rate, 1/min
    f: float = 0.9                  # fraction of carbohydrate appearing in plasma
    Vg: float = 1.7                 # glucose distribution volume, dL/kg
    metformin: bool = True

    def __post_init__(self) -> None:
        for key in ("BW", "Gb", "SI", "p1", "p2", "Ib", "n", "kabs", "Vg"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and value > 0 and np.isfinite(value)):
                raise InvalidInputError(f"type 2 patient {self.name!r}: {key} must be positive")

    @property
    def basal_u_per_h(self) -> float:
        """No basal insulin: the patient takes oral medication only."""
        return 0.0


_STANDARD = (
    Type2Params("type2#001", 61, 92.0, 135.0, SI=1.8e-4, gamma=0.08),
    Type2Params("type2#002", 67, 85.0, 150.0, SI=1.2e-4, gamma=0.05),
    Type2Params("type2#003", 55, 104.0, 125.0, SI=2.5e-4, gamma=0.10),
    Type2Params("type2#004", 72, 78.0, 160.0, SI=1.0e-4, gamma=0.04, metformin=False),
    Type2Params("type2#005", 58, 96.0, 140.0, SI=1.5e-4, gamma=0.07),
)


def type2_patients() -> tuple[Type2Params, ...]:
    """The five shipped type 2 profiles, ``type2#001`` … ``type2#005``."""
    return _STANDARD


def type2_patient(name: str) -> Type2Params:
    for p in _STANDARD:
        if p.name == name:
            return p
    raise UnknownPatientError(name, tuple(p.name for p in _STANDARD))


def _col(patients: Sequence[Type2Params], key: str) -> FloatArray:
    return np.array([float(getattr(p, key)) for p in patients])


class Type2Cohort:
    """Simple type 2 patients stepped together (same interface as the UVA/Padova cohort)."""

    def __init__(self, patients: Sequence[Type2Params], *, dt_substeps: int = 2) -> None:
        self.patients = tuple(patients)
        if not self.patients:
            raise InvalidInputError("a cohort needs at least one patient")
        if dt_substeps < 1:
            raise InvalidInputError("dt_substeps must be a positive integer")
        self.n = len(self.patients)
        self.dt_substeps = dt_substeps
        self.t_min = 0.0
        ps = self.patients
        self._bw, self._gb, self._si = _col(ps, "BW"), _col(ps, "Gb"), _col(ps, "SI")
        self._p1, self._p2, self._ib = _col(ps, "p1"), _col(ps, "p2"), _col(ps, "Ib")
        self._n, self._gamma = _col(ps, "n"), _col(ps, "gamma")
        self._kabs, self._f, self._vg = _col(ps, "kabs"), _col(ps, "f"), _col(ps, "Vg")
        self._g = self._gb.copy()
        self._gs = self._gb.copy()
        self._x = np.zeros(self.n)
        self._i = self._ib.copy()
        self._q1 = np.zeros(self.n)
        self._q2 = np.zeros(self.n)

    @property
    def blood_glucose_mg_dl(self) -> FloatArray:
        return self._g.copy()

    @property
    def subcutaneous_glucose_mg_dl(self) -> FloatArray:
        return self._gs.copy()

    @property
    def basal_u_per_min(self) -> FloatArray:
        return np.zeros(self.n)

    def _input(self, value: npt.ArrayLike | None, what: str, upper: float) -> FloatArray:
        arr = np.broadcast_to(np.asarray(0.0 if value is None else value, dtype=np.float64),
                              (self.n,))
        if not (np.all(arr >= 0) and np.all(arr <= upper)):
            raise InvalidInputError(f"{what} must be within 0…{upper}")
        return arr

    def step(self, carbs_g_per_min: npt.ArrayLike, insulin_u_per_min: npt.ArrayLike, *,
             exercise: npt.ArrayLike | None = None, minutes: int = 1) -> None:
        carbs = self._input(carbs_g_per_min, "carbs_g_per_min", np.inf) * 1000.0
        insulin = self._input(insulin_u_per_min, "insulin_u_per_min", np.inf)
        effort = self._input(exercise, "exercise", 1.0)
        u = insulin * 1e6 / (_INSULIN_VOLUME_ML_PER_KG * self._bw)
        h = 1.0 / self.dt_substeps
        p1_eff = self._p1 * (1.0 + 2.0 * effort)
        for _ in range(minutes * self.dt_substeps):
            ra = self._f * self._kabs * self._q2 / (self._vg * self._bw)
            dg = -(p1_eff + self._x * (1.0 + effort)) * self._g + self._p1 * self._gb + ra
            dx = -self._p2 * self._x + self._p2 * self._si * (self._i - self._ib)
            di = (-self._n * (self._i - self._ib)
                  + self._gamma * np.maximum(self._g - self._gb, 0.0) + u)
            dq1 = -self._kabs * self._q1 + carbs
            dq2 = self._kabs * (self._q1 - self._q2)
            self._gs = self._gs + h * (self._g - self._gs) / 10.0
            self._g = np.maximum(self._g + h * dg, 1.0)
            self._x = self._x + h * dx
            self._i = np.maximum(self._i + h * di, 0.0)
            self._q1 = self._q1 + h * dq1
            self._q2 = self._q2 + h * dq2
        self.t_min += minutes
