"""Shared test settings: deterministic hypothesis profile sized for 2-core CI."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", params=["torch", "native"])
def backend(request):
    """Each bookkeeping backend; ``native`` skips where its C++ kernels cannot be built."""
    if request.param == "native":
        from ceag_cooper import native

        if not native.is_available():
            pytest.skip("backend='native' needs a C++ compiler and ninja to build its kernels; none here.")
    return request.param
