"""Test-wide settings.

Hypothesis: no per-example deadline (a loaded 2-core machine makes timings meaningless), and
in CI a derandomized search so a failure reproduces exactly on the next run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")
