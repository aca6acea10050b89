"""Parameters of the virtual patients of the UVA/Padova type 1 diabetes model.

The 30 standard patients (``adolescent#001`` … ``adolescent#010``, ``adult#001`` … ``adult#010``,
``child#001`` … ``child#010``) are the in-silico population shipped with the reference
simulator; the table and its source are in the ``data`` folder next to this module.

Parameter symbols follow Dalla Man et al. 2007 (meal model) and Kovatchev et al. 2009 /
Dalla Man et al. 2014 (the type 1 simulator). Units: kg, min, mg (glucose masses per kg of body
weight), dL (glucose volumes per kg), pmol and L (insulin).

=========  ====================  ==============================================================
symbol     unit                  meaning
=========  ====================  ==============================================================
BW         kg                    body weight
kmax       1/min                 maximum gastric emptying rate (also solid → liquid stomach rate)
kmin       1/min                 minimum gastric emptying rate
kabs       1/min                 intestinal absorption rate
b          –                     fraction of the meal at which gastric emptying starts to slow down
d          –                     fraction of the meal at which gastric emptying speeds up again
f          –                     fraction of absorbed glucose that appears in plasma
dosekempt  mg                    reference meal dose of the original gastric model (not used here)
Gb         mg/dL                 basal (fasting) plasma glucose concentration
Gpb        mg/kg                 basal plasma glucose mass (Gb · Vg)
Gtb        mg/kg                 basal tissue glucose mass
EGPb       mg/kg/min             basal endogenous glucose production
Rdb        mg/kg/min             basal glucose rate of disappearance (= EGPb at steady state)
PCRb       dL/kg/min             basal plasma clearance rate (Rdb / Gb)
Vg         dL/kg                 glucose distribution volume
k1, k2     1/min                 glucose transfer plasma → tissue, tissue → plasma
kp1        mg/kg/min             EGP extrapolated at zero glucose and insulin
kp2        1/min                 liver glucose effectiveness
kp3        mg/kg/min per pmol/L  insulin action on the liver
ki         1/min                 delay between plasma insulin and its action on the liver
Fsnc       mg/kg/min             insulin-independent utilisation (brain, erythrocytes)
Vm0        mg/kg/min             insulin-independent part of tissue glucose utilisation
Vmx        mg/kg/min per pmol/L  insulin-dependent part (insulin sensitivity of utilisation)
Km0        mg/kg                 Michaelis-Menten constant of tissue glucose utilisation
p2u        1/min                 rate of insulin action on utilisation
ke1        1/min                 renal glucose excretion rate
ke2        mg/kg                 renal threshold (plasma glucose mass)
Ib         pmol/L                basal plasma insulin concentration
Ipb        pmol/kg               basal plasma insulin mass (Ib · Vi)
Ilb        pmol/kg               basal liver insulin mass
Vi         L/kg                  insulin distribution volume
m1         1/min                 insulin transfer liver → plasma
m2         1/min                 insulin transfer plasma → liver
m30        1/min                 hepatic insulin degradation
m4         1/min                 peripheral insulin degradation
m5         min·kg/pmol           hepatic extraction slope of the healthy-subject model (not used)
CL         L/min                 insulin clearance
HEb        –                     basal hepatic insulin extraction
kd         1/min                 subcutaneous insulin transfer, first → second compartment
ka1, ka2   1/min                 absorption from the first / second subcutaneous compartment
u2ss       pmol/kg/min           steady-state (basal) insulin infusion
isc1ss     pmol/kg               steady-state insulin in the first subcutaneous compartment
isc2ss     pmol/kg               steady-state insulin in the second subcutaneous compartment
ksc        1/min                 plasma → subcutaneous (interstitial) glucose transfer rate
=========  ====================  ==============================================================

``x0`` is the initial state in the order documented in :mod:`simulators.physiology.model`.
The therapy settings (carb ratio, correction factor, total daily insulin) and the age come from
the population's questionnaire table.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from simulators.errors import InvalidInputError, UnknownPatientError

__all__ = [
    "JITTERED_PARAMETERS",
    "JITTER_CLIP_SD",
    "MAX_JITTER",
    "STATE_NAMES",
    "PatientParams",
    "perturbed_patients",
    "standard_patient",
    "standard_patients",
]

#: Names of the 13 model states, in state-vector order (see :mod:`simulators.physiology.model`).
STATE_NAMES: tuple[str, ...] = (
    "qsto1", "qsto2", "qgut", "Gp", "Gt", "Ip", "X", "I1", "Id", "Il", "Isc1", "Isc2", "Gs",
)  # fmt: skip

_DATA_FILE = "uva_padova_2008_population.csv"
_PMOL_PER_U = 6000.0  # insulin unit conversion used by the reference model (U → pmol)


@dataclass(frozen=True, slots=True)
class PatientParams:
    """All parameters of one virtual patient, its fasting initial state and therapy settings."""

    name: str
    BW: float
    kmax: float
    kmin: float
    kabs: float
    b: float
    d: float
    f: float
    dosekempt: float
    Gb: float
    Gpb: float
    Gtb: float
    EGPb: float
    Rdb: float
    PCRb: float
    Vg: float
    k1: float
    k2: float
    kp1: float
    kp2: float
    kp3: float
    ki: float
    Fsnc: float
    Vm0: float
    Vmx: float
    Km0: float
    p2u: float
    ke1: float
    ke2: float
    Ib: float
    Ipb: float
    Ilb: float
    Vi: float
    m1: float
    m2: float
    m30: float
    m4: float
    m5: float
    CL: float
    HEb: float
    kd: float
    ka1: float
    ka2: float
    u2ss: float
    isc1ss: float
    isc2ss: float
    ksc: float
    x0: tuple[float, ...]
    carb_ratio_g_per_u: float
    correction_factor_mg_dl_per_u: float
    total_daily_insulin_u: float
    age_years: float

    def __post_init__(self) -> None:
        if len(self.x0) != len(STATE_NAMES):
            raise InvalidInputError(
                f"patient {self.name!r}: x0 has {len(self.x0)} states, expected {len(STATE_NAMES)}"
            )
        for key, value in self._numbers():
            if not math.isfinite(value):
                raise InvalidInputError(f"patient {self.name!r}: {key} = {value!r} is not finite")
        if self.BW <= 0 or self.Vg <= 0 or self.Vi <= 0:
            raise InvalidInputError(f"patient {self.name!r}: BW, Vg and Vi must be positive")
        if not (0.0 < self.b < 1.0 and 0.0 < self.d < 1.0):
            # The gastric emptying curve divides by b·(1 - b)-type terms of these fractions.
            raise InvalidInputError(f"patient {self.name!r}: b and d must lie strictly in (0, 1)")

    def _numbers(self) -> Iterator[tuple[str, float]]:
        for field in dataclasses.fields(self):
            if field.name == "name":
                continue
            if field.name == "x0":
                for state, value in zip(STATE_NAMES, self.x0, strict=True):
                    yield f"x0[{state}]", value
            else:
                yield field.name, getattr(self, field.name)

    @property
    def basal_u_per_h(self) -> float:
        """Steady-state basal insulin rate in U/h (``u2ss`` converted from pmol/kg/min)."""
        return self.u2ss * self.BW / _PMOL_PER_U * 60.0

    @property
    def basal_glucose_mg_dl(self) -> float:
        """Fasting plasma glucose the patient rests at under its basal insulin (``Gb``)."""
        return self.Gb


_FLOAT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(PatientParams) if f.name not in ("name", "x0")
)


def _parse_table() -> tuple[PatientParams, ...]:
    text = resources.files("simulators.physiology.data").joinpath(_DATA_FILE).read_text("utf-8")
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    patients = []
    for record in csv.DictReader(rows):
        x0 = tuple(float(record[f"x0_{state}"]) for state in STATE_NAMES)
        values = {key: float(record[key]) for key in _FLOAT_FIELDS}
        patients.append(PatientParams(name=record["name"], x0=x0, **values))
    return tuple(patients)


@cache
def standard_patients() -> tuple[PatientParams, ...]:
    """The 30 patients of the in-silico population: adolescents, adults, children, each 001–010."""
    return _parse_table()


@cache
def _by_name() -> dict[str, PatientParams]:
    return {p.name: p for p in standard_patients()}


def standard_patient(name: str) -> PatientParams:
    """One standard patient by name, e.g. ``"adult#001"``; unknown names raise
    :class:`~simulators.errors.UnknownPatientError`."""
    try:
        return _by_name()[name]
    except (KeyError, TypeError):
        raise UnknownPatientError(str(name), tuple(_by_name())) from None


# --------------------------------------------------------------------------------------------
# Perturbed populations
# --------------------------------------------------------------------------------------------

#: Parameters drawn per perturbed patient: multiplied by ``exp(jitter · z)`` with ``z`` a standard
#: normal draw clipped to ±JITTER_CLIP_SD. Fractions (b, d, f, HEb) and the population-wide
#: constants (Fsnc, ke1, ke2) stay at the base patient's value.
JITTERED_PARAMETERS: tuple[str, ...] = (
    "BW", "kmax", "kmin", "kabs", "Gb", "EGPb", "Vg", "k1", "k2", "kp2", "kp3", "ki",
    "Vmx", "Km0", "p2u", "Ib", "Vi", "m1", "CL", "kd", "ka1", "ka2", "ksc",
)  # fmt: skip

#: Clip of the standard normal draw, in standard deviations.
JITTER_CLIP_SD = 3.0

#: Largest accepted ``jitter`` (log-scale standard deviation).
MAX_JITTER = 0.5

_MAX_DRAWS = 1000


def _fasting_steady_state(p: PatientParams) -> PatientParams | None:
    """Recompute the basal quantities that follow from the steady-state equations of the model.

    Returns ``None`` when the parameters admit no physical fasting steady state (e.g. a negative
    tissue glucose mass or an insulin-independent utilisation below zero).

    Steady state of the model at constant basal infusion ``u2ss`` and no meal:
    subcutaneous ``(ka1 + kd)·Isc1 = u2ss``, ``ka2·Isc2 = kd·Isc1``; liver
    ``(m1 + m30)·Il = m2·Ip``; plasma ``(m2 + m4)·Ip = m1·Il + ka1·Isc1 + ka2·Isc2 = m1·Il + u2ss``;
    ``X = 0``, ``I1 = Id = Ib``; glucose ``EGPb = Fsnc + E(Gpb) + k1·Gpb - k2·Gtb`` and
    ``Vm0·Gtb / (Km0 + Gtb) = k1·Gpb - k2·Gtb``; ``kp1 = EGPb + kp2·Gpb + kp3·Ib``.
    """
    m30 = p.HEb * p.m1 / (1.0 - p.HEb)
    ipb = p.Ib * p.Vi
    ilb = p.m2 * ipb / (p.m1 + m30)
    u2ss = ipb * (p.m2 + p.m4 - p.m1 * p.m2 / (p.m1 + m30))
    isc1ss = u2ss / (p.ka1 + p.kd)
    isc2ss = p.kd * isc1ss / p.ka2
    gpb = p.Gb * p.Vg
    renal = p.ke1 * (gpb - p.ke2) if gpb > p.ke2 else 0.0
    gtb = (p.Fsnc + renal - p.EGPb + p.k1 * gpb) / p.k2
    if not gtb > 0.0:
        return None
    vm0 = (p.EGPb - p.Fsnc - renal) * (p.Km0 + gtb) / gtb
    kp1 = p.EGPb + p.kp2 * gpb + p.kp3 * p.Ib
    if not (vm0 > 0.0 and kp1 > 0.0 and u2ss > 0.0 and p.kmin < p.kmax):
        return None
    x0 = (0.0, 0.0, 0.0, gpb, gtb, ipb, 0.0, p.Ib, p.Ib, ilb, isc1ss, isc2ss, gpb)
    return dataclasses.replace(
        p,
        m30=m30,
        Ipb=ipb,
        Ilb=ilb,
        u2ss=u2ss,
        isc1ss=isc1ss,
        isc2ss=isc2ss,
        Gpb=gpb,
        Gtb=gtb,
        Vm0=vm0,
        kp1=kp1,
        Rdb=p.EGPb,
        PCRb=p.EGPb / p.Gb,
        x0=x0,
    )


def _jittered(base: PatientParams, factors: np.ndarray, name: str) -> PatientParams | None:
    changes: dict[str, float] = {
        key: getattr(base, key) * float(factor)
        for key, factor in zip(JITTERED_PARAMETERS, factors, strict=True)
    }
    # m2 and m4 are plasma insulin clearance split between liver and periphery
    # (m2 = 0.6·CL / (HEb·Vi·BW), m4 = 0.4·CL / (Vi·BW), Dalla Man 2007): they follow CL, Vi, BW.
    scale = (changes["CL"] / base.CL) * (base.Vi * base.BW) / (changes["Vi"] * changes["BW"])
    changes["m2"] = base.m2 * scale
    changes["m4"] = base.m4 * scale
    varied: PatientParams = dataclasses.replace(base, name=name, **changes)  # type: ignore[arg-type]
    return _fasting_steady_state(varied)


def perturbed_patients(
    base: Sequence[PatientParams], n: int, *, seed: int, jitter: float = 0.1
) -> tuple[PatientParams, ...]:
    """``n`` variants of the ``base`` patients (taken in turn), reproducible for a given seed.

    Each parameter in :data:`JITTERED_PARAMETERS` is multiplied by ``exp(jitter · z)``, ``z`` a
    standard normal draw clipped to ±:data:`JITTER_CLIP_SD` (log-normal jitter, so a factor lies in
    ``[exp(-3·jitter), exp(3·jitter)]``). The basal quantities (basal plasma/tissue glucose, basal
    insulin masses, ``Vm0``, ``kp1``, hepatic degradation ``m30``, the basal infusion ``u2ss`` and
    the subcutaneous steady state) are then recomputed from the model's steady-state equations,
    and ``x0`` is the fasting steady state: a perturbed patient under its own basal insulin rests
    at its (jittered) ``Gb``. A draw without a physical steady state (kmin ≥ kmax, negative
    tissue glucose …) is drawn again. The therapy settings (carb ratio, correction factor, total
    daily insulin) and the age are the base patient's: they are a clinician's settings, not
    physiology. Variant ``i`` is named ``"<base name>/v<i>"`` (``i`` zero-padded to 4 digits); the
    first ``k`` variants do not depend on ``n``.
    """
    patients = tuple(base)
    if not patients:
        raise InvalidInputError("perturbed_patients needs at least one base patient")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInputError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(jitter, int | float) and 0.0 <= jitter <= MAX_JITTER):
        raise InvalidInputError(f"jitter must be within [0, {MAX_JITTER}], got {jitter!r}")
    rng = np.random.default_rng(seed)
    out: list[PatientParams] = []
    for i in range(n):
        parent = patients[i % len(patients)]
        name = f"{parent.name}/v{i:04d}"
        for _ in range(_MAX_DRAWS):
            z = rng.standard_normal(len(JITTERED_PARAMETERS))
            np.clip(z, -JITTER_CLIP_SD, JITTER_CLIP_SD, out=z)
            variant = _jittered(parent, np.exp(jitter * z), name)
            if variant is not None:
                out.append(variant)
                break
        else:
            raise InvalidInputError(
                f"no physical steady state for a variant of {parent.name!r} at jitter {jitter}"
            )
    return tuple(out)
