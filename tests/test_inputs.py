"""Bad inputs of the API not in the catalogue (docs/bad-inputs.md, run by test_bad_inputs.py,
which holds every other bad-input test): one test per input, a clear ValueError each."""

from __future__ import annotations

import numpy as np
import pytest

import bayesmix
from bayesmix import TruncatedNormal, fit_map

RNG = np.random.default_rng(0)
A = RNG.random((6, 5))
B = RNG.random((6, 5))
FRAMES = B + 0.5 * (A - B) + RNG.normal(0, 0.05, (4, 6, 5))


def test_sigma_prior_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"sigma_prior must be Jeffreys\(\) or InverseGamma"):
        fit_map(FRAMES, A, B, sigma_prior=TruncatedNormal())


def test_quantiles_outside_0_1():
    res = fit_map(FRAMES, A, B)
    with pytest.raises(ValueError, match=r"quantile probabilities must lie in \(0, 1\)"):
        res.quantiles([0.1, 1.2])


def test_simulate_bad_arguments():
    with pytest.raises(ValueError, match="n_frames must be a positive integer"):
        bayesmix.simulate(0)
    with pytest.raises(ValueError, match="pass both ref_a and ref_b, or neither"):
        bayesmix.simulate(3, ref_a=A)
    with pytest.raises(ValueError, match="default references exist for 1-D"):
        bayesmix.simulate(3, shape=(4, 4, 3))


def test_integer_frames_are_accepted_and_lists_too():
    res = fit_map([[1, 2, 3], [2, 3, 5]], [2, 4, 6], [0, 0, 1])
    assert res.x.shape == (2,) and np.isfinite(res.x).all()
