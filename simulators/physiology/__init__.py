"""Physiology of the simulated patients: the UVA/Padova type 1 diabetes model (2008 version).

- :mod:`simulators.physiology.params`: the 30-patient in-silico population and perturbed
  variants of it (:class:`PatientParams`, :func:`standard_patients`, :func:`standard_patient`,
  :func:`perturbed_patients`);
- :mod:`simulators.physiology.model`: the model equations integrated for a whole cohort at once
  (:class:`Cohort`).
"""

from simulators.physiology.model import (
    DEFAULT_DT_SUBSTEPS,
    EXERCISE_VM0_GAIN,
    EXERCISE_VMX_GAIN,
    N_STATES,
    REFERENCE_EAT_RATE_G_PER_MIN,
    Cohort,
)
from simulators.physiology.params import (
    JITTER_CLIP_SD,
    JITTERED_PARAMETERS,
    MAX_JITTER,
    STATE_NAMES,
    PatientParams,
    perturbed_patients,
    standard_patient,
    standard_patients,
)

__all__ = [
    "DEFAULT_DT_SUBSTEPS",
    "EXERCISE_VM0_GAIN",
    "EXERCISE_VMX_GAIN",
    "JITTERED_PARAMETERS",
    "JITTER_CLIP_SD",
    "MAX_JITTER",
    "N_STATES",
    "REFERENCE_EAT_RATE_G_PER_MIN",
    "STATE_NAMES",
    "Cohort",
    "PatientParams",
    "perturbed_patients",
    "standard_patient",
    "standard_patients",
]
