"""The model seam: the two-reference model keeps its numbers; background and gain are calibrated.

Tolerances come from the posterior sd (the Cramér-Rao scale sigma/||A - B|| for one frame) or
from the binomial spread of a coverage over N frames.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import bayesmix
from bayesmix import Beta, Uniform
from bayesmix._model import make_model

# Computed by bayesmix at commit 3312400 (the last release before the model seam) with
#   sim = bayesmix.simulate(64, shape=(12, 10), noise=0.2, seed=7)
#   res = bayesmix.fit_map(sim.frames.astype(np.float64), sim.ref_a, sim.ref_b, **options)
# and frames [0, 5, 17, 63]: sigma, MAP, mean, sd and the 90% interval.
GOLDEN = {
    "default": (
        {},
        0.20137820669505124,
        {
            "x": [0.5323646319758699, 0.638029943442107, 0.6482232974485801, 0.42969215470341504],
            "mean": [0.532364631975539, 0.6380299356872319, 0.6482232795744117,
                     0.42969215471990413],
            "sd": [0.06600294791619608, 0.06600292665291764, 0.06600290028526597,
                   0.06600294786369655],
        },
    ),
    "beta": (
        {"prior": Beta(2.0, 3.0)},
        0.20138362042402963,
        {},
    ),
    "uniform_joint": (
        {"prior": Uniform(), "sigma_method": "joint"},
        0.20055884059446052,
        {},
    ),
}  # fmt: skip


def _golden_fit(options):
    sim = bayesmix.simulate(64, shape=(12, 10), noise=0.2, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 120-pixel frames: a noisy contrast
        return bayesmix.fit_map(sim.frames.astype(np.float64), sim.ref_a, sim.ref_b, **options)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_two_reference_model_keeps_its_numbers(name):
    """The smallest case of the seam gives the numbers of the release before it, within 1e-12
    (relative): the same statistics, closed forms and EM, chosen now by type dispatch."""
    options, sigma, values = GOLDEN[name]
    res = _golden_fit(options)
    assert res.sigma == pytest.approx(sigma, rel=1e-12, abs=0)
    idx = [0, 5, 17, 63]
    for field, expected in values.items():
        np.testing.assert_allclose(getattr(res, field)[idx], expected, rtol=1e-12, atol=0)


def _sim_gain_offsets(n, *, seed, shape=(16, 16), noise=0.08):
    """Frames g_i (x_i A + (1 - x_i) B) + c0_i + c1_i * ramp + noise with x_i from the default
    prior, g_i ~ U(0.7, 1.3), offsets c0 ~ N(0, 0.3) and a small ramp c1 ~ N(0, 0.05)."""
    rng = np.random.default_rng(seed)
    a, b = bayesmix.sample_references(shape)
    x = bayesmix.TruncatedNormal().sample(rng, n)
    g = rng.uniform(0.7, 1.3, n)
    basis = make_model(background="linear").basis(shape)  # ones, ramp along rows, along columns
    c = np.stack([rng.normal(0, 0.3, n), rng.normal(0, 0.05, n), rng.normal(0, 0.05, n)], 1)
    mix = x[:, None, None] * a + (1 - x[:, None, None]) * b
    frames = g[:, None, None] * mix + np.einsum("kp,pij->kij", c, basis)
    frames = frames + rng.normal(0, noise, frames.shape)
    return frames, a, b, x, g, c


@pytest.mark.slow  # calibration over many frames; the model's quadrature tests run by default
def test_gain_and_offsets_intervals_are_calibrated_and_beat_the_plain_model():
    """Simulated images with per-frame gain in [0.7, 1.3] and offsets: the 90% intervals of the
    full model cover 88-92% of 6,000 true weights (binomial sd of the coverage 0.4%, so the band
    is +/- 5 sd), the gain is recovered within its posterior sd, and the plain model's error on
    the same frames is measured: several times larger."""
    frames, a, b, x, g, _ = _sim_gain_offsets(6000, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "references differ little"
        res = bayesmix.fit_map(frames, a, b, background="linear", gain=True)
    lo, hi = res.interval(0.9)
    coverage = float(np.mean((lo <= x) & (x <= hi)))
    assert 0.88 <= coverage <= 0.92, coverage
    z_gain = (res.gain - g) / res.gain_sd
    assert abs(np.mean(z_gain)) < 5 / math.sqrt(len(g))  # 5 standard errors of a mean of z
    assert 0.8 < np.std(z_gain) < 1.2
    rmse_full = float(np.sqrt(np.mean((res.mean - x) ** 2)))
    # The posterior sd says how well x can be known: the error must match it.
    assert rmse_full == pytest.approx(float(np.sqrt(np.mean(res.sd**2))), rel=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = bayesmix.fit_map(frames, a, b)
    rmse_plain = float(np.sqrt(np.mean((plain.mean - x) ** 2)))
    plo, phi = plain.interval(0.9)
    plain_coverage = float(np.mean((plo <= x) & (x <= phi)))
    print(f"full: rmse {rmse_full:.4f}, coverage {coverage:.3f}; "
          f"plain: rmse {rmse_plain:.4f}, coverage {plain_coverage:.3f}")  # fmt: skip
    assert rmse_plain > 2 * rmse_full
    assert plain_coverage < 0.8


def test_background_only_intervals_are_calibrated():
    """Offsets and ramps without gain (g = 1): the background integrated out by its Schur
    complement leaves a Gaussian factor in x, so the truncated-normal closed forms apply; 90%
    intervals cover 88-92% of 6,000 frames."""
    frames, a, b, x, g, c = _sim_gain_offsets(6000, seed=5)
    mix = x[:, None, None] * a + (1 - x[:, None, None]) * b
    frames = frames - (g[:, None, None] - 1.0) * mix  # remove the gain: g = 1
    res = bayesmix.fit_map(frames, a, b, background="linear")
    lo, hi = res.interval(0.9)
    coverage = float(np.mean((lo <= x) & (x <= hi)))
    assert 0.88 <= coverage <= 0.92, coverage
    # The background's posterior mean recovers the offsets within a few of their own sds.
    assert np.sqrt(np.mean((res.background[:, 0] - c[:, 0]) ** 2)) < 0.02


def test_misfit_p_is_uniform_under_the_full_model():
    """R^2 and misfit_p of the full model: on frames drawn from it, the residual is chi-square
    with n - P - 2 degrees of freedom, so misfit_p is uniform: 5% +/- 4 binomial sd below 0.05."""
    frames, a, b, *_ = _sim_gain_offsets(3000, seed=9)
    res = bayesmix.fit_map(frames, a, b, background="linear", gain=True)
    p = res.to_dataframe()["misfit_p"].to_numpy()
    frac = float(np.mean(p < 0.05))
    assert abs(frac - 0.05) < 4 * math.sqrt(0.05 * 0.95 / len(p))
    assert np.median(res.r2) > 0.5


def test_no_mixture_returns_the_prior():
    """Frames with no mixture (g = 0: background and noise only) under gain=True: the data say
    nothing about x, so its posterior is the prior's (times a mild factor a(x)^-1/2): sd close
    to the prior's 0.14 and the mean near the prior's, never a confident number."""
    rng = np.random.default_rng(2)
    a, b = bayesmix.sample_references((12, 12))
    empty = 0.4 + rng.normal(0, 0.02, (200, 12, 12))
    frames, *_ = _sim_gain_offsets(200, seed=4, shape=(12, 12), noise=0.02)
    res = bayesmix.fit_map(np.concatenate([frames, empty]), a, b, background="constant",
                           gain=True)  # fmt: skip
    prior_sd = 0.1405  # TruncatedNormal(0.55, 0.15) on [0, 1]: scipy.stats.truncnorm.std
    assert np.median(res.sd[200:]) > 0.8 * prior_sd
    assert np.all(res.sd[200:] > 0.5 * prior_sd)
    assert np.median(np.abs(res.mean[200:] - 0.55)) < 0.1
    assert np.median(res.sd[:200]) < 0.5 * prior_sd
