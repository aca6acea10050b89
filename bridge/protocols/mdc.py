"""IEEE 11073-10101 nomenclature (MDC codes) used by the supported devices.

A code is ``partition << 16 | term``. The term codes and partitions are those of
IEEE 11073-10101 and the device specialisations -10417 (glucose meter), -10425 (CGM) and
-10419 (insulin pump) as summarised in the HL7 PHD IG; FHIR writes them in the system
``urn:iso:std:iso:11073:10101`` as the decimal 32-bit code.
"""

from __future__ import annotations

from enum import IntEnum


class Partition(IntEnum):
    """Nomenclature partitions (IEEE 11073-10101 §A.2)."""

    OBJ_INFRA = 1
    SCADA = 2
    EVT = 3
    DIM = 4
    PGRP = 7
    INFRA = 8
    PHD_DM = 128
    PHD_HF = 129
    PHD_AI = 130
    RET_CODE = 255
    EXT_NOM = 256


def mdc(partition: Partition, term: int) -> int:
    """The 32-bit context-free code of a (partition, term) pair."""
    return (int(partition) << 16) | term


class Scada(IntEnum):
    """SCADA-partition terms of the glucose specialisations (-10417, -10425)."""

    MDC_CONC_GLU_GEN = 28948
    MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD = 29112
    MDC_CONC_GLU_CAPILLARY_PLASMA = 29116
    MDC_CONC_GLU_VENOUS_WHOLEBLOOD = 29120
    MDC_CONC_GLU_VENOUS_PLASMA = 29124
    MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD = 29128
    MDC_CONC_GLU_ARTERIAL_PLASMA = 29132
    MDC_CONC_GLU_CONTROL = 29136
    MDC_CONC_GLU_ISF = 29140
    MDC_CONC_HBA1C = 29148
    # Insulin pump terms (-10419); see the note on UNCONFIRMED codes in docs/protocols.md.
    MDC_INS_BASAL = 29680
    MDC_INS_BASAL_TEMP_ABS = 29694
    MDC_INS_BOLUS = 29736
    MDC_INS_BOLUS_FAST = 29737
    MDC_INS_BOLUS_EXT = 29738
    MDC_INS_RESERVOIR = 29780
    MDC_INS_CONC = 29792


class PhdDm(IntEnum):
    """PHD disease-management partition terms used for glucose context (-10417)."""

    MDC_CTXT_GLU_EXERCISE = 29152
    MDC_CTXT_GLU_CARB = 29156
    MDC_CTXT_MEDICATION = 29188
    MDC_CTXT_GLU_HEALTH = 29212
    MDC_CTXT_GLU_SAMPLELOCATION = 29236
    MDC_CTXT_GLU_MEAL = 29256
    MDC_CTXT_GLU_MEAL_PREPRANDIAL = 29260
    MDC_CTXT_GLU_MEAL_POSTPRANDIAL = 29264
    MDC_CTXT_GLU_MEAL_FASTING = 29268
    MDC_CTXT_GLU_TESTER = 29276


class Dim(IntEnum):
    """Units of measure (DIM partition)."""

    MDC_DIM_PERCENT = 544
    MDC_DIM_MILLI_G_PER_DL = 2130
    MDC_DIM_MILLI_MOLE_PER_L = 4722
    # IU and IU/h per the -10101 DIM table as used by -10419 pump profiles; the pump codes are
    # not in the HL7 PHD IG's own tables, so they are marked as such in docs/protocols.md.
    MDC_DIM_INTL_UNIT = 5472
    MDC_DIM_INTL_UNIT_PER_HR = 6688


class DevSpecProfile(IntEnum):
    """Device specialisation codes (INFRA partition, MDC_DEV_SPEC_PROFILE_*)."""

    MDC_DEV_SPEC_PROFILE_GLUCOSE = 4113
    MDC_DEV_SPEC_PROFILE_INSULIN_PUMP = 4115
    MDC_DEV_SPEC_PROFILE_CGM = 4121
