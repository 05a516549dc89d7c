"""Suite-wide settings: Hypothesis without per-example deadlines (timings do not belong in tests;
the benchmarks under bench/ measure speed) and with its database off, so CI runs are reproducible
from the printed seed."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "iotid",
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("iotid")
