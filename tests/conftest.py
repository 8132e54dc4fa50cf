"""Shared test fixtures: tiny seeded inputs; the `gpu` marker skips without CUDA."""
from __future__ import annotations

import os

# Before torch loads OpenMP: spinning threads slow every step 10-50x once the multi-process tests'
# ranks and data workers share the 2 CI cores (the `mot` command sets the same default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
