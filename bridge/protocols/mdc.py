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
    PGRP = 6
    SITES = 7
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


# ------------------------------------------------------------------------------------------------
# Object infrastructure partition (OBJ_INFRA, 1): the codes IEEE 11073-20601 Annex A uses on the
# wire for object classes, attribute ids, notifications and actions. In an APDU these travel as
# bare 16-bit OID-Type terms; the partition is implied by the field.
# ------------------------------------------------------------------------------------------------


class ObjClass(IntEnum):
    """Managed object classes (MDC_MOC_*), the ``obj-class`` of a ConfigObject."""

    MDC_MOC_VMO_METRIC = 4
    MDC_MOC_VMO_METRIC_ENUM = 5
    MDC_MOC_VMO_METRIC_NU = 6
    MDC_MOC_VMO_METRIC_SA_RT = 9
    MDC_MOC_SCAN = 16
    MDC_MOC_SCAN_CFG = 17
    MDC_MOC_SCAN_CFG_EPI = 18
    MDC_MOC_SCAN_CFG_PERI = 19
    MDC_MOC_VMS_MDS_SIMP = 37
    MDC_MOC_VMO_PMSTORE = 61
    MDC_MOC_PM_SEGMENT = 62


class AttrId(IntEnum):
    """Attribute identifiers (MDC_ATTR_*), the ``attribute-id`` of an AVA-Type."""

    MDC_ATTR_AL_OP_STAT = 2310
    MDC_ATTR_CONFIRM_MODE = 2323
    MDC_ATTR_CONFIRM_TIMEOUT = 2324
    MDC_ATTR_ID_HANDLE = 2337
    MDC_ATTR_ID_INSTNO = 2338
    MDC_ATTR_ID_LABEL_STRING = 2343
    MDC_ATTR_ID_MODEL = 2344
    MDC_ATTR_ID_PHYSIO = 2347
    MDC_ATTR_ID_PROD_SPECN = 2349
    MDC_ATTR_ID_TYPE = 2351
    MDC_ATTR_METRIC_STORE_CAPAC_CNT = 2369
    MDC_ATTR_METRIC_STORE_SAMPLE_ALG = 2371
    MDC_ATTR_METRIC_STORE_USAGE_CNT = 2372
    MDC_ATTR_MSMT_STAT = 2375
    MDC_ATTR_NU_ACCUR_MSMT = 2378
    MDC_ATTR_NU_CMPD_VAL_OBS = 2379
    MDC_ATTR_NU_VAL_OBS = 2384
    MDC_ATTR_NUM_SEG = 2385
    MDC_ATTR_OP_STAT = 2387
    MDC_ATTR_POWER_STAT = 2389
    MDC_ATTR_SA_SPECN = 2413
    MDC_ATTR_SCALE_SPECN_I16 = 2415
    MDC_ATTR_SCALE_SPECN_I32 = 2416
    MDC_ATTR_SCALE_SPECN_I8 = 2417
    MDC_ATTR_SCAN_REP_PD = 2421
    MDC_ATTR_SEG_USAGE_CNT = 2427
    MDC_ATTR_SYS_ID = 2436
    MDC_ATTR_SYS_TYPE = 2438
    MDC_ATTR_TIME_ABS = 2439
    MDC_ATTR_TIME_BATT_REMAIN = 2440
    MDC_ATTR_TIME_END_SEG = 2442
    MDC_ATTR_TIME_PD_SAMP = 2445
    MDC_ATTR_TIME_REL = 2447
    MDC_ATTR_TIME_STAMP_ABS = 2448
    MDC_ATTR_TIME_STAMP_REL = 2449
    MDC_ATTR_TIME_START_SEG = 2450
    MDC_ATTR_TX_WIND = 2453
    MDC_ATTR_UNIT_CODE = 2454
    MDC_ATTR_UNIT_LABEL_STRING = 2457
    MDC_ATTR_VAL_BATT_CHARGE = 2460
    MDC_ATTR_VAL_ENUM_OBS = 2462
    MDC_ATTR_TIME_REL_HI_RES = 2536
    MDC_ATTR_TIME_STAMP_REL_HI_RES = 2537
    MDC_ATTR_DEV_CONFIG_ID = 2628
    MDC_ATTR_MDS_TIME_INFO = 2629
    MDC_ATTR_METRIC_SPEC_SMALL = 2630
    MDC_ATTR_SOURCE_HANDLE_REF = 2631
    MDC_ATTR_SIMP_SA_OBS_VAL = 2632
    MDC_ATTR_ENUM_OBS_VAL_SIMP_OID = 2633
    MDC_ATTR_ENUM_OBS_VAL_SIMP_STR = 2634
    MDC_ATTR_REG_CERT_DATA_LIST = 2635
    MDC_ATTR_NU_VAL_OBS_BASIC = 2636
    MDC_ATTR_PM_STORE_CAPAB = 2637
    MDC_ATTR_PM_SEG_MAP = 2638
    MDC_ATTR_PM_SEG_PERSON_ID = 2639
    MDC_ATTR_SEG_STATS = 2640
    MDC_ATTR_SEG_FIXED_DATA = 2641
    MDC_ATTR_SCAN_HANDLE_ATTR_VAL_MAP = 2643
    MDC_ATTR_SCAN_REP_PD_MIN = 2644
    MDC_ATTR_ATTRIBUTE_VAL_MAP = 2645
    MDC_ATTR_NU_VAL_OBS_SIMP = 2646
    MDC_ATTR_PM_STORE_LABEL_STRING = 2647
    MDC_ATTR_PM_SEG_LABEL_STRING = 2648
    MDC_ATTR_TIME_PD_MSMT_ACTIVE = 2649
    MDC_ATTR_SYS_TYPE_SPEC_LIST = 2650
    MDC_ATTR_METRIC_ID_PART = 2655
    MDC_ATTR_ENUM_OBS_VAL_PART = 2656
    MDC_ATTR_SUPPLEMENTAL_TYPES = 2657
    MDC_ATTR_TIME_ABS_ADJUST = 2658
    MDC_ATTR_CLEAR_TIMEOUT = 2659
    MDC_ATTR_TRANSFER_TIMEOUT = 2660
    MDC_ATTR_ENUM_OBS_VAL_SIMP_BIT_STR = 2661
    MDC_ATTR_ENUM_OBS_VAL_BASIC_BIT_STR = 2662
    MDC_ATTR_METRIC_STRUCT_SMALL = 2675
    MDC_ATTR_NU_CMPD_VAL_OBS_SIMP = 2676
    MDC_ATTR_NU_CMPD_VAL_OBS_BASIC = 2677
    MDC_ATTR_ID_PHYSIO_LIST = 2678
    MDC_ATTR_SCAN_HANDLE_LIST = 2679
    MDC_ATTR_TIME_BO = 2689
    MDC_ATTR_TIME_STAMP_BO = 2690
    MDC_ATTR_TIME_START_SEG_BO = 2691
    MDC_ATTR_TIME_END_SEG_BO = 2692
    # The HL7 PHD IG lists this one as 68229 = 1::2693 (ProfileConsumers, time table).
    MDC_ATTR_TICK_RES = 2693


class NotiCode(IntEnum):
    """Event types (MDC_NOTI_*), the ``event-type`` of an event report."""

    MDC_NOTI_CONFIG = 3356
    MDC_NOTI_SCAN_REPORT_FIXED = 3357
    MDC_NOTI_SCAN_REPORT_VAR = 3358
    MDC_NOTI_SCAN_REPORT_MP_FIXED = 3359
    MDC_NOTI_SCAN_REPORT_MP_VAR = 3360
    MDC_NOTI_SEGMENT_DATA = 3361
    MDC_NOTI_UNBUF_SCAN_REPORT_VAR = 3362
    MDC_NOTI_UNBUF_SCAN_REPORT_FIXED = 3363
    MDC_NOTI_UNBUF_SCAN_REPORT_GROUPED = 3364
    MDC_NOTI_UNBUF_SCAN_REPORT_MP_VAR = 3365
    MDC_NOTI_UNBUF_SCAN_REPORT_MP_FIXED = 3366
    MDC_NOTI_UNBUF_SCAN_REPORT_MP_GROUPED = 3367
    MDC_NOTI_BUF_SCAN_REPORT_VAR = 3368
    MDC_NOTI_BUF_SCAN_REPORT_FIXED = 3369
    MDC_NOTI_BUF_SCAN_REPORT_GROUPED = 3370
    MDC_NOTI_BUF_SCAN_REPORT_MP_VAR = 3371
    MDC_NOTI_BUF_SCAN_REPORT_MP_FIXED = 3372
    MDC_NOTI_BUF_SCAN_REPORT_MP_GROUPED = 3373


class ActionCode(IntEnum):
    """Action types (MDC_ACT_*), the ``action-type`` of an action invoke."""

    MDC_ACT_SEG_CLR = 3084
    MDC_ACT_SEG_GET_INFO = 3085
    MDC_ACT_SET_TIME = 3095
    MDC_ACT_DATA_REQUEST = 3099
    MDC_ACT_SEG_TRIG_XFER = 3100
    MDC_ACT_SET_BO_TIME = 3101
