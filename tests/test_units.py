"""x is dimensionless: the same data in any unit gives the same weights, and sigma scales with
the unit (property tests, hypothesis).

The statistics pass divides the frames by a power of two near the references' level when that
level is beyond what its dtype sums safely (``bayesmix._io.in_units``), and NUTS samples in
units of the noise scale; both are exact for a power-of-two change of unit. Bounds for other
units come from the inputs' rounding (u = 2^-24 for float32, 2^-53 for float64), never from
a tolerance picked by hand.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayesmix

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
ROUNDING = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}
MODELS = ("plain", "background", "gain", "three_refs")


@cache
def _problem():
    sim = bayesmix.simulate(40, shape=(8, 8), noise=0.05, seed=4)
    third = np.random.default_rng(5).uniform(0.5, 1.5, (8, 8))
    # A background offset in every frame, so that the background model has one to find.
    frames = sim.frames.astype(np.float64) + 0.2
    return frames, sim.ref_a.astype(np.float64), sim.ref_b.astype(np.float64), third


def _fit(model, frames, a, b, third):
    kw = {"background": "constant"} if model == "background" else {}
    kw = {"gain": True} if model == "gain" else kw
    more = (third,) if model == "three_refs" else ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # advice about the data, not the units
        return bayesmix.fit_map(frames, a, b, *more, seed=0, **kw)


def _in_unit(scale, dtype):
    frames, a, b, third = _problem()
    return tuple(np.asarray(v * scale).astype(dtype) for v in (frames, a, b, third))


@cache
def _base(model, dtype):
    return _fit(model, *_in_unit(1.0, dtype))


def _x_bound(dtype) -> np.ndarray:
    """How far the rounding of every input to ``dtype`` can move each frame's least-squares
    weight: |delta y . d| / d.d with |delta y_j| <= u |y_j| (and the same for A, B), times 4
    (rounding at both scales, and the pass's own)."""
    frames, a, b, _ = _problem()
    u = ROUNDING[np.dtype(dtype)]
    d = a - b
    y = frames.reshape(len(frames), -1)
    spread = np.abs(y) @ np.abs(d.ravel()) + (np.abs(a) + np.abs(b)).ravel() @ np.abs(d.ravel())
    return 4.0 * u * spread / float(d.ravel() @ d.ravel())


@SETTINGS
@given(model=st.sampled_from(MODELS), dtype=st.sampled_from([np.float32, np.float64]),
       exponent=st.floats(-30.0, 30.0))  # fmt: skip
def test_the_weights_do_not_depend_on_the_unit(model, dtype, exponent):
    scale = 10.0**exponent
    base = _base(model, dtype)
    res = _fit(model, *_in_unit(scale, dtype))
    bound = _x_bound(dtype)
    bound = np.broadcast_to(bound[:, None] if np.ndim(base.x) == 2 else bound, base.x.shape)
    # The posterior mean moves no more than the least-squares weight (K = 3: Gibbs draws of
    # the same seed, which follow the data continuously; gain: its grid, fitted to each frame).
    np.testing.assert_array_less(np.abs(res.x - base.x), bound + 1e-12)
    np.testing.assert_array_less(np.abs(res.mean - base.mean), bound + 1e-12)
    # sigma^2 is a sum of squared residuals: each moves by 2 |r| |delta y|, relative to rss.
    frames = _problem()[0]
    u = ROUNDING[np.dtype(dtype)]
    rel = 8.0 * u * np.sqrt(np.sum(frames**2) / np.sum(base.stats.rss)) + 1e-12
    assert abs(res.sigma / (scale * base.sigma) - 1.0) < rel
    if base.background is not None:
        np.testing.assert_allclose(res.background / scale, base.background, rtol=0,
                                   atol=rel * np.abs(base.background).max())  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model", MODELS)
def test_a_power_of_two_unit_gives_the_same_numbers(model, dtype):
    """Dividing by a power of two is exact: a unit of 2^-90 or 2^90 (beyond float32's safe
    range for sums of squares, so the pass rescales) changes no weight at all."""
    base = _base(model, dtype)
    for k in (-90, 90):
        res = _fit(model, *_in_unit(2.0**k, dtype))
        np.testing.assert_allclose(res.x, base.x, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.sigma, base.sigma * 2.0**k, rtol=1e-12)


def test_float64_beyond_its_range_is_refused():
    frames, a, b, _ = _problem()
    with pytest.raises(bayesmix.InputError, match=r"data's level is about .*leave float64's range"):
        bayesmix.fit_map(frames * 1e-200, a * 1e-200, b * 1e-200)


@cache
def _nuts(scale, dtype=np.float32, noise="gaussian"):
    frames, a, b, _ = _in_unit(scale, dtype)
    return bayesmix.sample(frames[:20], a, b, num_chains=2, num_warmup=150, num_samples=150,
                           seed=3, progress=False, noise=noise)  # fmt: skip


def _agree_within_monte_carlo_error(base, res, scale):
    """Posterior means of x and sigma within 5 sd of the difference of two runs' means."""
    ess = min(bayesmix.diagnose(base).ess_bulk_min, bayesmix.diagnose(res).ess_bulk_min)
    for name, unit in (("x", 1.0), ("sigma", scale)):
        mb = base.posterior[name].mean(("chain", "draw")).values
        mr = res.posterior[name].mean(("chain", "draw")).values / unit
        sd = base.posterior[name].std(("chain", "draw")).values
        np.testing.assert_array_less(np.abs(mr - mb), 5.0 * sd * np.sqrt(2.0 / ess))


@pytest.mark.parametrize("k", [-100, -66, 66, 100])
def test_nuts_in_a_power_of_two_unit_draws_the_same_chains(k):
    """float32 NUTS samples in units of the noise scale: with the same seed, data in a unit of
    2^k gives the same chains (sigma's scaled by 2^k), even where sigma^2 is below float32's
    smallest number (2^-126)."""
    base, res = _nuts(1.0), _nuts(2.0**k)
    np.testing.assert_array_equal(res.posterior["x"].values, base.posterior["x"].values)
    np.testing.assert_allclose(res.posterior["sigma"].values,
                               base.posterior["sigma"].values * 2.0**k, rtol=1e-6)  # fmt: skip


@settings(max_examples=4, deadline=None, derandomize=True, database=None)
@given(exponent=st.floats(-30.0, 30.0))
def test_nuts_in_any_unit_agrees_within_monte_carlo_error(exponent):
    """Any other unit rounds the data differently, so the chains differ: their means agree
    within the Monte Carlo error of the two runs."""
    _agree_within_monte_carlo_error(_nuts(1.0), _nuts(10.0**exponent), 10.0**exponent)


@pytest.mark.parametrize(("scale", "dtype"), [(1e-25, np.float32), (1e25, np.float32),
                                              (1e-140, np.float64), (1e140, np.float64)])
def test_per_frame_noise_nuts_in_extreme_units(scale, dtype):
    """The per-frame noise model samples log sigma in units of the population's sigma: its
    exp() would leave float32's range at sigma = 1e-140."""
    base, res = _nuts(1.0, dtype, "per_frame"), _nuts(scale, dtype, "per_frame")
    _agree_within_monte_carlo_error(base, res, scale)
    mu_b = float(base.posterior["log_sigma_mu"].mean())
    mu_r = float(res.posterior["log_sigma_mu"].mean()) - np.log(scale)
    assert abs(mu_r - mu_b) < 5.0 * float(base.posterior["log_sigma_mu"].std())
