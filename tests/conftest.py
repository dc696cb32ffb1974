"""Shared test configuration.

Hypothesis profiles (the example counts are stated here, once):
- ``ci``   derandomized, 60 examples per property, no deadline; chosen when CI is set.
- ``dev``  randomized, 30 examples per property.
Select explicitly with ``HYPOTHESIS_PROFILE=ci``.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
