"""UVA/Padova type 1 diabetes model (2008 version) integrated for a whole cohort at once.

The model is the meal simulation model of Dalla Man et al. 2007 adapted to type 1 diabetes as in
the UVA/Padova simulator accepted for preclinical trials (Kovatchev et al. 2009), with the
subcutaneous insulin and glucose compartments of that simulator and the in-silico population of
:mod:`simulators.physiology.params`. Every patient of a :class:`Cohort` is one column of a
``(13, n)`` state array; the integrator loops over time only, never over patients.

State vector (index, symbol, unit, meaning):

==  =====  =======  ===========================================================================
 0  qsto1  mg       glucose in the stomach, solid phase
 1  qsto2  mg       glucose in the stomach, liquid phase
 2  qgut   mg       glucose in the intestine
 3  Gp     mg/kg    glucose mass in plasma and rapidly equilibrating tissues
 4  Gt     mg/kg    glucose mass in slowly equilibrating tissues
 5  Ip     pmol/kg  insulin mass in plasma
 6  X      pmol/L   insulin action on glucose utilisation (remote insulin, relative to Ib)
 7  I1     pmol/L   first delay compartment of insulin action on production
 8  Id     pmol/L   delayed insulin acting on endogenous glucose production
 9  Il     pmol/kg  insulin mass in the liver
10  Isc1   pmol/kg  subcutaneous insulin, first compartment
11  Isc2   pmol/kg  subcutaneous insulin, second compartment
12  Gs     mg/kg    subcutaneous (interstitial) glucose, on the plasma mass scale
==  =====  =======  ===========================================================================

Plasma glucose concentration is ``Gp / Vg`` and interstitial glucose ``Gs / Vg`` (mg/dL).

Inputs, held constant over each minute: carbohydrate intake in g/min (internally
``d = g/min × 1000`` mg/min into the solid stomach) and subcutaneous insulin infusion in U/min
(internally ``u = U/min × 6000 / BW`` pmol/kg/min into the first subcutaneous compartment).

Equations (per patient; ``qsto = qsto1 + qsto2``):

- stomach and gut: ``qsto1' = -kmax·qsto1 + d``, ``qsto2' = kmax·qsto1 - kgut·qsto2``,
  ``qgut' = kgut·qsto2 - kabs·qgut``, rate of appearance ``Ra = f·kabs·qgut / BW``;
- gastric emptying
  ``kgut = kmin + (kmax - kmin)/2 · (tanh(α(qsto - b·D)) - tanh(β(qsto - d·D)) + 2)``
  with ``α = 5 / (2·D·(1 - b))``, ``β = 5 / (2·D·d)``; ``kgut = kmax`` while ``D = 0``;
- glucose: ``Gp' = max(EGP, 0) + Ra - Uii - E - k1·Gp + k2·Gt``, ``Gt' = -Uid + k1·Gp - k2·Gt``,
  ``EGP = kp1 - kp2·Gp - kp3·Id``, ``Uii = Fsnc``, renal excretion ``E = ke1·(Gp - ke2)`` above
  the threshold ``ke2`` (else 0), ``Uid = (Vm0 + Vmx·X)·Gt / (Km0 + Gt)``;
- insulin: ``Ip' = -(m2 + m4)·Ip + m1·Il + ka1·Isc1 + ka2·Isc2``, ``Il' = -(m1 + m30)·Il + m2·Ip``,
  ``X' = -p2u·X + p2u·(Ip/Vi - Ib)``, ``I1' = -ki·(I1 - Ip/Vi)``, ``Id' = -ki·(Id - I1)``;
- subcutaneous: ``Isc1' = u - (ka1 + kd)·Isc1``, ``Isc2' = kd·Isc1 - ka2·Isc2``,
  ``Gs' = -ksc·Gs + ksc·Gp``.

Meal size ``D`` (Dalla Man 2007 ties gastric emptying to the amount of the meal being digested).
Like the reference implementation of the population, ``D`` is the stomach content when the
current meal began plus everything eaten since then: a meal begins in the first minute with a
positive intake after a minute without, which records ``qsto1 + qsto2`` at that instant and
restarts the eaten total; each minute of positive intake adds its grams before that minute is
integrated; ``D`` keeps its value after the meal until the next one begins. Feeding the same
food as one 5 g/min stream or in other per-minute portions therefore changes ``D`` as it does
in the reference (whose patients eat at most 5 g/min, :data:`REFERENCE_EAT_RATE_G_PER_MIN`).

Non-negativity: as in the reference, the derivatives of Gp, Gt, Ip, Il, Isc1, Isc2 and Gs are set
to zero while that state is negative (the states themselves are not clipped).

Exercise is a simple extension, not part of the 2008 model: an intensity ``e`` in [0, 1] raises
tissue glucose uptake, the insulin-independent part ``Vm0`` by ``(1 + EXERCISE_VM0_GAIN·e)`` and
the insulin-dependent part ``Vmx`` by ``(1 + EXERCISE_VMX_GAIN·e)``, in the spirit of the
activity terms of Breton 2008 (Diabetes Technol Ther 10(5):382-391) without its heart-rate
dynamics: the effect starts and stops with the input.

Integration: Ralston's third-order fixed-step Runge-Kutta method (the three-stage method with
the smallest truncation-error bound) with ``dt_substeps`` steps per minute. The inputs and the
meal size only change on minute boundaries, so every step sees smooth dynamics apart from the
guards above. Three right-hand-side evaluations per step instead of RK4's four cost 25 % less
and keep the same agreement with the reference solver (``tests/simulators/test_fidelity.py``
measures it). Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from simulators.errors import InvalidInputError
from simulators.physiology.params import STATE_NAMES, PatientParams

__all__ = [
    "DEFAULT_DT_SUBSTEPS",
    "EXERCISE_VM0_GAIN",
    "EXERCISE_VMX_GAIN",
    "N_STATES",
    "REFERENCE_EAT_RATE_G_PER_MIN",
    "Cohort",
]

N_STATES = len(STATE_NAMES)

#: Integration steps per simulated minute (measured: one step per minute keeps the plasma
#: glucose of all 30 standard patients within a small fraction of 1 mg/dL of the reference).
DEFAULT_DT_SUBSTEPS = 1

#: How fast the reference population eats a meal; intake above this rate per minute is accepted
#: but no longer comparable with the reference.
REFERENCE_EAT_RATE_G_PER_MIN = 5.0

#: Exercise extension: relative increase of Vm0 and of Vmx at full intensity (e = 1). With these
#: values 45 minutes at e = 0.5 lower the fasting glucose of the standard patients (basal insulin
#: only) by about 15-37 mg/dL, the order of magnitude seen with moderate aerobic exercise in
#: type 1 diabetes; the extension is meant for plausible scenarios, not as a validated model.
EXERCISE_VM0_GAIN = 3.0
EXERCISE_VMX_GAIN = 1.0

_MG_PER_G = 1000.0
_PMOL_PER_U = 6000.0

# Rows whose derivative is frozen while the state is negative (two contiguous blocks).
_GUARD_A = slice(3, 6)  # Gp, Gt, Ip
_GUARD_B = slice(9, 13)  # Il, Isc1, Isc2, Gs

FloatArray = npt.NDArray[np.float64]


def _column(patients: Sequence[PatientParams], key: str) -> FloatArray:
    return np.array([getattr(p, key) for p in patients], dtype=np.float64)


class Cohort:
    """A group of virtual patients simulated together, one minute at a time.

    ``state`` is the ``(n, 13)`` state (see the module docstring for the order), ``t_min`` the
    simulated minutes since the start. :meth:`step` advances all patients with per-patient
    carbohydrate and insulin inputs.
    """

    def __init__(
        self, patients: Sequence[PatientParams], *, dt_substeps: int = DEFAULT_DT_SUBSTEPS
    ) -> None:
        self.patients: tuple[PatientParams, ...] = tuple(patients)
        if not self.patients:
            raise InvalidInputError("a cohort needs at least one patient")
        if isinstance(dt_substeps, bool) or not isinstance(dt_substeps, int) or dt_substeps < 1:
            raise InvalidInputError(f"dt_substeps must be a positive integer, got {dt_substeps!r}")
        self.n: int = len(self.patients)
        self.dt_substeps: int = dt_substeps
        self.t_min: float = 0.0
        n = self.n
        ps = self.patients

        def col(key: str) -> FloatArray:
            return _column(ps, key)

        def rows(*keys: str) -> FloatArray:
            return np.array([col(key) for key in keys])

        self._bw = col("BW")
        self._vg = col("Vg")
        self._basal_u_per_min = col("u2ss") * self._bw / _PMOL_PER_U
        self._b = col("b")
        self._d = col("d")
        self._one_minus_b = 1.0 - self._b
        self._vm0 = col("Vm0")
        self._vmx = col("Vmx")
        self._x: FloatArray = np.ascontiguousarray(np.array([p.x0 for p in ps], dtype=np.float64).T)

        # Constant coefficients of the right-hand side. Stacked rows let one numpy call handle
        # several equations of the same shape (see _rhs for how each block is used).
        kmax = col("kmax")
        self._kmax = kmax
        self._twice_half_range = kmax - col("kmin")  # 2·(kmax - kmin)/2
        self._f_per_bw = col("f") / self._bw
        self._kp1 = col("kp1")
        self._kp2 = col("kp2")
        self._kp3 = col("kp3")
        # Uii + renal term as Fsnc + ke1·max(Gp, ke2) - ke1·ke2: the constant part folded here.
        self._uii_minus_renal_offset = col("Fsnc") - col("ke1") * col("ke2")
        self._ke1 = col("ke1")
        self._ke2 = col("ke2")
        self._km0 = col("Km0")
        self._m2 = col("m2")
        self._m1_ka12 = rows("m1", "ka1", "ka2")
        self._k12 = rows("k1", "k2")
        inv_vi = 1.0 / col("Vi")
        self._p2u_ki_per_vi = rows("p2u", "ki") * inv_vi
        self._p2u_ib = col("p2u") * col("Ib")
        self._ki = col("ki")
        self._kd = col("kd")
        self._ksc = col("ksc")
        # Loss rates of Ip, X, I1, Id, Il, Isc1, Isc2, Gs (rows 5-12 of the state).
        self._loss = rows("m2", "p2u", "ki", "ki", "m1", "ka1", "ka2", "ksc")
        self._loss[0] += col("m4")
        self._loss[4] += col("m30")
        self._loss[5] += col("kd")
        self._zeros = np.zeros(n)
        self._ones2 = np.ones((2, n))
        self._exp_cap = np.full((2, n), 700.0)

        # Meal bookkeeping (see "Meal size" in the module docstring).
        self._last_carbs = np.zeros(n)
        self._meal_start_qsto = self._x[0] + self._x[1]
        self._eaten_g = np.zeros(n)
        # Per-minute constants: 2α, 2β and b·D, d·D of the gastric emptying curve.
        self._two_alpha_beta = np.zeros((2, n))
        self._bd_dd = np.zeros((2, n))
        self._vm0_now = self._vm0.copy()
        self._vmx_now = self._vmx.copy()
        self._exercising = False
        # Work buffers. _gut rows: kmax, kgut, kabs (kgut written per evaluation). _flux rows:
        # carbohydrate input d, then kmax·qsto1, kgut·qsto2, kabs·qgut. _gain rows: inflow of
        # the states 5-12 (the input u stays in row 5 for the whole minute).
        self._gut = np.array([kmax, kmax, col("kabs")])
        self._flux = np.zeros((4, n))
        self._gain = np.zeros((8, n))
        self._gastric = np.empty((2, n))
        self._pair = np.empty((2, n))
        self._triple = np.empty((3, n))
        self._xt = np.empty((N_STATES, n))
        self._k = tuple(np.empty((N_STATES, n)) for _ in range(4))
        self._tmp = tuple(np.empty(n) for _ in range(3))
        self._mask_a = np.empty((_GUARD_A.stop - _GUARD_A.start, n), dtype=bool)
        self._mask_b = np.empty((_GUARD_B.stop - _GUARD_B.start, n), dtype=bool)
        self._update_meal_size()

    # ----------------------------------------------------------------------------------------
    # Read-outs
    # ----------------------------------------------------------------------------------------

    @property
    def state(self) -> FloatArray:
        """Copy of the state, shape ``(n, 13)``; assign an array of that shape to replace it."""
        return self._x.T.copy()

    @state.setter
    def state(self, value: npt.ArrayLike) -> None:
        new = np.asarray(value, dtype=np.float64)
        if new.shape != (self.n, N_STATES):
            raise InvalidInputError(
                f"state must have shape ({self.n}, {N_STATES}), got {new.shape}"
            )
        if not np.isfinite(new).all():
            raise InvalidInputError("state must be finite")
        self._x[...] = new.T

    @property
    def blood_glucose_mg_dl(self) -> FloatArray:
        """Plasma glucose concentration ``Gp / Vg`` per patient, mg/dL, shape ``(n,)``."""
        glucose: FloatArray = self._x[3] / self._vg
        return glucose

    @property
    def subcutaneous_glucose_mg_dl(self) -> FloatArray:
        """Interstitial glucose concentration ``Gs / Vg`` per patient, mg/dL, shape ``(n,)``."""
        glucose: FloatArray = self._x[12] / self._vg
        return glucose

    @property
    def basal_u_per_min(self) -> FloatArray:
        """Steady-state basal insulin rate per patient (``u2ss·BW / 6000``), U/min."""
        return self._basal_u_per_min.copy()

    # ----------------------------------------------------------------------------------------
    # Stepping
    # ----------------------------------------------------------------------------------------

    def _per_patient(self, value: npt.ArrayLike, what: str, upper: float) -> FloatArray:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what} must be numeric: {exc}") from None
        if arr.shape != (self.n,):
            if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, self.n)):
                raise InvalidInputError(
                    f"{what} must be a scalar or have shape ({self.n},), got shape {arr.shape}"
                )
            arr = np.broadcast_to(arr, (self.n,))
        lo = arr.min()
        hi = arr.max()
        # NaN fails every comparison, so it is refused here as well.
        if not (lo >= 0.0 and hi <= upper and hi < np.inf):
            bad = np.flatnonzero(~((arr >= 0.0) & (arr <= upper) & np.isfinite(arr)))
            names = ", ".join(self.patients[i].name for i in bad[:5])
            domain = "finite and >= 0" if upper == np.inf else f"within [0, {upper}]"
            raise InvalidInputError(
                f"{what} must be {domain} (patients {names}); got {arr[bad[:5]]}"
            )
        return arr

    def step(
        self,
        carbs_g_per_min: npt.ArrayLike,
        insulin_u_per_min: npt.ArrayLike,
        *,
        exercise: npt.ArrayLike | None = None,
        minutes: int = 1,
    ) -> None:
        """Advance ``minutes`` minutes with the inputs held constant.

        ``carbs_g_per_min``: carbohydrate intake per patient, g/min (scalar broadcasts).
        ``insulin_u_per_min``: subcutaneous insulin infusion per patient, U/min — a bolus of
        ``B`` units given within one minute is ``B`` U/min for that minute, on top of the basal.
        ``exercise``: optional intensity per patient in [0, 1] (the module's exercise extension).
        Equivalent to ``minutes`` calls with ``minutes=1``.
        """
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0:
            raise InvalidInputError(f"minutes must be a non-negative integer, got {minutes!r}")
        carbs = self._per_patient(carbs_g_per_min, "carbs_g_per_min", np.inf)
        insulin = self._per_patient(insulin_u_per_min, "insulin_u_per_min", np.inf)
        if exercise is not None:
            effort = self._per_patient(exercise, "exercise", 1.0)
            np.multiply(self._vm0, 1.0 + EXERCISE_VM0_GAIN * effort, out=self._vm0_now)
            np.multiply(self._vmx, 1.0 + EXERCISE_VMX_GAIN * effort, out=self._vmx_now)
            self._exercising = True
        elif self._exercising:
            self._vm0_now[...] = self._vm0
            self._vmx_now[...] = self._vmx
            self._exercising = False
        np.multiply(carbs, _MG_PER_G, out=self._flux[0])
        np.multiply(insulin, _PMOL_PER_U, out=self._gain[5])
        self._gain[5] /= self._bw
        eating = bool(carbs.any())
        h = 1.0 / self.dt_substeps
        for _ in range(minutes):
            if eating:
                self._begin_minute_eating(carbs)
            elif self._last_carbs.any():
                self._last_carbs.fill(0.0)
            for _ in range(self.dt_substeps):
                self._rk3(h)
            self.t_min += 1.0

    def _begin_minute_eating(self, carbs: FloatArray) -> None:
        starts = (carbs > 0.0) & (self._last_carbs <= 0.0)
        if starts.any():
            qsto = self._x[0] + self._x[1]
            np.copyto(self._meal_start_qsto, qsto, where=starts)
            self._eaten_g[starts] = 0.0
        # Intake is never negative, so adding it for non-eating patients adds exactly 0.
        self._eaten_g += carbs
        self._last_carbs[...] = carbs
        self._update_meal_size()

    def _update_meal_size(self) -> None:
        dose = self._meal_start_qsto + self._eaten_g * _MG_PER_G
        eating = dose > 0.0
        alpha, beta = self._two_alpha_beta
        alpha.fill(0.0)
        beta.fill(0.0)
        # 2α = 2·5 / (2·D·(1 - b)), 2β = 2·5 / (2·D·d); both stay 0 (kgut = kmax) while D = 0.
        np.divide(5.0, dose * self._one_minus_b, out=alpha, where=eating)
        np.divide(5.0, dose * self._d, out=beta, where=eating)
        np.multiply(self._b, dose, out=self._bd_dd[0])
        np.multiply(self._d, dose, out=self._bd_dd[1])

    def _rk3(self, h: float) -> None:
        """One Ralston RK3 step: k1 = f(x), k2 = f(x + h/2·k1), k3 = f(x + 3h/4·k2),
        x += h·(2·k1 + 3·k2 + 4·k3)/9 (Ralston 1962, Math. Comp. 16(80):431-437)."""
        x = self._x
        xt = self._xt
        k1, k2, k3, _ = self._k
        self._rhs(x, k1)
        np.multiply(k1, h / 2.0, out=xt)
        xt += x
        self._rhs(xt, k2)
        np.multiply(k2, 0.75 * h, out=xt)
        xt += x
        self._rhs(xt, k3)
        k1 *= 2.0 / 9.0
        k2 *= 3.0 / 9.0
        k3 *= 4.0 / 9.0
        k1 += k2
        k1 += k3
        k1 *= h
        x += k1

    def _rhs(self, y: FloatArray, dy: FloatArray) -> None:
        """Right-hand side of the model for every patient: ``dy = f(y)`` (both ``(13, n)``)."""
        gp, gt, ip, xx, i1, idl, s1 = y[3], y[4], y[5], y[6], y[7], y[8], y[10]
        t1, t2, t3 = self._tmp
        gut = self._gut
        flux = self._flux
        gain = self._gain
        gastric = self._gastric
        pair = self._pair
        triple = self._triple
        mul = np.multiply
        sub = np.subtract
        add = np.add

        # Gastric emptying kgut = kmax + (kmax-kmin)/2·(tanh(a) - tanh(c)), a = α(qsto - b·D),
        # c = β(qsto - d·D). With tanh(z) = 1 - 2/(1 + exp(2z)) the bracket becomes
        # 2/(1 + exp(2c)) - 2/(1 + exp(2a)). Capping 2z at 700 keeps exp() finite; the term is
        # below 1e-300 there, i.e. already its limit 0.
        add(y[0], y[1], out=t1)
        sub(t1, self._bd_dd, out=gastric)
        gastric *= self._two_alpha_beta
        np.minimum(gastric, self._exp_cap, out=gastric)
        np.exp(gastric, out=gastric)
        gastric += self._ones2
        np.divide(self._twice_half_range, gastric, out=gastric)
        sub(gastric[1], gastric[0], out=gut[1])
        gut[1] += self._kmax
        # Stomach and gut: flux = [d, kmax·qsto1, kgut·qsto2, kabs·qgut]; each compartment
        # receives the flux of the previous one and loses its own.
        mul(gut, y[0:3], out=flux[1:4])
        sub(flux[0:3], flux[1:4], out=dy[0:3])

        # Glucose: exchange V = k1·Gp - k2·Gt; Gp' = max(EGP, 0) + Ra - Uii - E - V; Gt' = V - Uid.
        mul(self._k12, y[3:5], out=pair)
        sub(pair[0], pair[1], out=t1)  # V
        mul(self._kp2, gp, out=t2)
        sub(self._kp1, t2, out=t2)
        mul(self._kp3, idl, out=t3)
        t2 -= t3
        np.maximum(t2, self._zeros, out=t2)  # EGP, not below 0
        mul(self._f_per_bw, flux[3], out=t3)  # Ra = f·kabs·qgut / BW
        t2 += t3
        t2 -= t1
        t2 -= self._uii_minus_renal_offset
        np.maximum(gp, self._ke2, out=t3)
        t3 *= self._ke1
        sub(t2, t3, out=dy[3])
        mul(self._vmx_now, xx, out=t2)
        t2 += self._vm0_now
        t2 *= gt
        add(self._km0, gt, out=t3)
        t2 /= t3  # Uid
        sub(t1, t2, out=dy[4])

        # Insulin and subcutaneous glucose (rows 5-12): dy = gain - loss·y, where gain holds
        # the inflow of each state (u in row 5 of gain is set once per minute).
        mul(self._m1_ka12, y[9:12], out=triple)  # m1·Il, ka1·Isc1, ka2·Isc2
        add(triple[0], triple[1], out=gain[0])
        gain[0] += triple[2]  # Ip inflow
        mul(self._p2u_ki_per_vi, ip, out=gain[1:3])
        gain[1] -= self._p2u_ib  # X inflow p2u·(Ip/Vi - Ib); I1 inflow ki·Ip/Vi
        mul(self._ki, i1, out=gain[3])
        mul(self._m2, ip, out=gain[4])
        mul(self._kd, s1, out=gain[6])
        mul(self._ksc, gp, out=gain[7])
        mul(self._loss, y[5:13], out=dy[5:13])
        sub(gain, dy[5:13], out=dy[5:13])

        # The reference freezes these states while they are negative.
        np.greater_equal(y[_GUARD_A], 0.0, out=self._mask_a)
        dy[_GUARD_A] *= self._mask_a
        np.greater_equal(y[_GUARD_B], 0.0, out=self._mask_b)
        dy[_GUARD_B] *= self._mask_b
