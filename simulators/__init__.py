"""Simulated patients and devices: physiology, therapy, sensors and scenarios.

The physiology core (:mod:`simulators.physiology`) implements the UVA/Padova type 1 diabetes
model vectorised over a cohort of virtual patients; the other modules build devices and
scenarios on top of it. Every error raised on purpose derives from
:class:`simulators.errors.SimulatorError`.
"""
