"""Shared fixtures: small analytic priors and deterministic generators. No downloads, no training."""

import pytest
import torch

from priorshift.analytic import stationary_gaussian


@pytest.fixture(autouse=True)
def _threads():
    # Tests are small; one thread avoids oversubscription on 2-core CI machines.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def gauss16():
    """A smooth stationary Gaussian prior on 16×16 single-channel images (d = 256)."""
    return stationary_gaussian(16, length_scale=2.0, variance=0.25)


@pytest.fixture
def gauss8():
    return stationary_gaussian(8, length_scale=1.5, variance=0.25)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
