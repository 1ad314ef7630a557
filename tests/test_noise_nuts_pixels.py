"""NUTS for the pixel-level noise models (Poisson counts, Student-t pixels), each on data
simulated from it: the statistics-level models and the shared helpers are in test_noise_nuts.py
(whose docstring gives the coverage bands and agreement tolerances used here too)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
from test_noise_nuts import (
    RUN,
    P,
    _check_against,
    _poisson_data,
    _refs,
    _summary,
    _t_data,
    _x,
)

import bayesmix
from bayesmix.noise import PoissonGaussian, StudentT

# -- Poisson counts -------------------------------------------------------------------------------


@pytest.mark.slow  # test_poisson_gaussian_and_background_nuts runs by default
def test_poisson_nuts_exact_likelihood_vs_fast_path_approximation():
    # Few counts (3-5 per pixel on average, many zeros and ones): where the fast path's
    # re-weighted Gaussian approximation of the Poisson likelihood is at its worst; 256 pixels
    # so that a frame still says more about x than the prior. Measured: median |NUTS (exact
    # Poisson) - fast path| = 0.023 sd, 90% coverage 0.895 (N = 200, seed 2).
    frames, a, b, x = _poisson_data(200, 2, level=3.0, n_pix=256)
    fast = bayesmix.fit_map(frames, a, b, noise="poisson")
    idata = bayesmix.sample(frames, a, b, noise="poisson", **RUN)
    assert idata.attrs["pixel_likelihood"] == "poisson"
    diff, _ = _check_against(idata, fast, x)
    print(f"Poisson: exact-likelihood NUTS vs fast path, median difference {diff:.3f} sd")
    # The pointwise log-likelihood is the exact Poisson one (constants included).
    xs = idata.posterior["x"].values[0, 0]
    mu = xs[:, None] * a + (1 - xs[:, None]) * b
    direct = scipy.stats.poisson.logpmf(frames, mu).sum(axis=1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0, 0], direct, rtol=1e-5)


def test_poisson_gaussian_and_background_nuts():
    rng = np.random.default_rng(3)
    frames, a, b, x = _poisson_data(200, 3, level=20.0)
    # Detector units: gain 2 per photon, read noise sd 1.5, and an offset per frame.
    gain, read = 2.0, 1.5
    offset = rng.uniform(5.0, 15.0, size=(200, 1))
    det = gain * frames + read * rng.normal(size=frames.shape) + offset
    noise = PoissonGaussian(gain=gain, read_sd=read)
    kw = {"noise": noise, "background": "constant"}
    fast = bayesmix.fit_map(det - offset, gain * a, gain * b, noise=noise)
    idata = bayesmix.sample(det, gain * a, gain * b, **kw, **RUN)
    assert idata.attrs["pixel_likelihood"] == "poisson_gaussian"
    # The offsets are sampled with x: their posterior covers the truth.
    bg = idata.posterior["background"].values.reshape(-1, 200)
    lo, hi = np.quantile(bg, [0.05, 0.95], axis=0)
    assert 0.80 <= np.mean((lo <= offset[:, 0]) & (offset[:, 0] <= hi)) <= 0.97
    # Against the fast path with the same model (the offset fitted too).
    fast = bayesmix.fit_map(det, gain * a, gain * b, **kw)
    _check_against(idata, fast, x)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["poisson", "student_t"])
def test_pixel_level_nuts_coverage_many_frames(noise):
    """3,000 frames (the size guard's limit for these pixels): 90% coverage 88-92%."""
    if noise == "poisson":
        frames, a, b, x = _poisson_data(3000, 12, level=5.0)
    else:
        frames, a, b, x = _t_data(3000, 13, df=4.0)
    fast = bayesmix.fit_map(frames, a, b, noise=noise)
    idata = bayesmix.sample(frames, a, b, noise=noise, num_chains=2, num_warmup=500,
                            num_samples=500, progress=False)  # fmt: skip
    _check_against(idata, fast, x, cov_band=(0.88, 0.92))


# -- Student-t pixels -----------------------------------------------------------------------------


@pytest.mark.slow  # coverage; test_student_t_nuts_not_dragged_by_hot_pixels runs by default
def test_student_t_nuts_learns_df_and_covers():
    frames, a, b, x = _t_data(300, 4, df=4.0)
    fast = bayesmix.fit_map(frames, a, b, noise="student_t")
    idata = bayesmix.sample(frames, a, b, noise="student_t", **RUN)
    _check_against(idata, fast, x)
    df = idata.posterior["df"].values.ravel()
    sig = idata.posterior["sigma"].values.ravel()
    # 19200 pixels pin df = 4 and the scale 0.05 down to a few percent.
    assert abs(np.log(df.mean() / 4.0)) < 0.25, df.mean()
    assert abs(sig.mean() / 0.05 - 1.0) < 0.05, sig.mean()
    assert idata.attrs["df_prior"] == "gamma(2, 0.1)"


def _hot_pixel_data():
    """300 frames with Gaussian noise 0.05 and 1% hot pixels (+1 to +5): (frames, a, b, x, CRLB)
    with the clean data's Cramer-Rao bound sigma / ||A - B||."""
    rng = np.random.default_rng(5)
    a, b = _refs()
    n = 300
    x = _x(rng, n)
    clean = x[:, None] * a + (1 - x[:, None]) * b + 0.05 * rng.normal(size=(n, P))
    hot = rng.random(clean.shape) < 0.01
    frames = clean + hot * rng.uniform(1.0, 5.0, clean.shape)
    return frames, a, b, x, 0.05 / np.linalg.norm(a - b)


def test_student_t_nuts_not_dragged_by_hot_pixels():
    frames, a, b, x, crlb = _hot_pixel_data()
    idata = bayesmix.sample(frames, a, b, noise="student_t", **RUN)
    mean, _, _, _ = _summary(idata)
    rmse = np.sqrt(np.mean((mean - x) ** 2))  # the prior helps a little below the CRLB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gauss = bayesmix.fit_map(frames, a, b)
    rmse_gauss = np.sqrt(np.mean((gauss.mean - x) ** 2))
    print(f"hot pixels: rmse NUTS t {rmse:.4f}, clean CRLB {crlb:.4f}, Gaussian {rmse_gauss:.4f}")
    assert rmse < 1.25 * crlb, (rmse, crlb)
    assert rmse_gauss > 3.0 * rmse


@pytest.mark.slow  # a second NUTS program; the learned-df run above is the default check
def test_student_t_nuts_with_fixed_df_not_dragged_by_hot_pixels():
    frames, a, b, x, crlb = _hot_pixel_data()
    fixed = bayesmix.sample(frames, a, b, noise=StudentT(df=4), **RUN)
    assert "df" not in fixed.posterior
    mean4, _, _, _ = _summary(fixed)
    assert np.sqrt(np.mean((mean4 - x) ** 2)) < 1.25 * crlb
