"""Shared fixtures: every test that takes ``device`` runs on the CPU and, where
CuPy sees a GPU, on ``cuda`` too; tests marked ``gpu`` skip cleanly without one."""

from __future__ import annotations

import numpy as np
import pytest

from gpubackprop.backend import has_gpu

GPU = has_gpu()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """'cpu', then 'cuda' where a GPU is present."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
