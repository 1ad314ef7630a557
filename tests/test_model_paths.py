"""The general model (background basis and per-frame gain integrated out) along every path:
the float32-safe likelihood, NUTS against the fast path, the statistics pass, tracing, masked
pixels, spectrum images, results files, the command line, dask and option errors.

The frames are small simulated spectra (``_simulate``): references A and B are random smooth
1-D spectra of ``N_E`` points, x is drawn from the default prior TruncatedNormal(0.55, 0.15; 0, 1),
the gain g from U(0.5, 1.5), a background (a constant offset, plus a slope for 'linear') per
frame, and Gaussian noise. Every gain fit here has ``N_FRAMES`` frames, so the jitted cores are
compiled once for the whole file (bucket_size(40) == 40).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import bayesmix
from bayesmix import InverseGamma, TruncatedNormal
from bayesmix._io import prepare
from bayesmix._likelihood import centred_reference, centred_total, gain_terms, loglik
from bayesmix._map import TRACES, fit_map_stats
from bayesmix._model import make_model
from bayesmix._precision import x64
from bayesmix._stats import basis_stats_from_stack
from bayesmix._writers import map_result_from_table
from bayesmix.cli import main

N_FRAMES = 40
N_E = 50
MAP_SHAPE = (5, 8)  # a 5 x 8 spectrum image holds the N_FRAMES spectra
NOISE = 0.05
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
NUTS = {"num_chains": 2, "num_warmup": 200, "num_samples": 200, "progress": False}


class Sim(NamedTuple):
    frames: np.ndarray  # (N, E) float64
    a: np.ndarray
    b: np.ndarray
    x: np.ndarray
    g: np.ndarray


def _smooth(rng, n):
    """A random smooth positive spectrum: white noise through a Gaussian kernel of 4 points."""
    t = np.arange(n)
    v = np.exp(-0.5 * ((t[:, None] - t[None]) / 4.0) ** 2) @ rng.standard_normal(n)
    return 1.0 + 0.3 * v / v.std()


def _simulate(seed, *, n_frames=N_FRAMES, n_e=N_E, gain=True, background="constant",
              noise=NOISE):  # fmt: skip
    """Frames g (x A + (1 - x) B) + c0 + c1 ramp + noise, x from the default prior."""
    rng = np.random.default_rng(seed)
    a, b = _smooth(rng, n_e), _smooth(rng, n_e)
    x = sps.truncnorm.rvs(-0.55 / 0.15, 0.45 / 0.15, loc=0.55, scale=0.15, size=n_frames,
                          random_state=rng)  # fmt: skip
    g = rng.uniform(0.5, 1.5, n_frames) if gain else np.ones(n_frames)
    frames = g[:, None] * (x[:, None] * a + (1.0 - x[:, None]) * b)
    if background in ("constant", "linear"):
        frames = frames + rng.normal(0.0, 0.5, (n_frames, 1))
    if background == "linear":
        frames = frames + rng.normal(0.0, 0.2, (n_frames, 1)) * np.linspace(-1.0, 1.0, n_e)
    frames = frames + noise * rng.standard_normal((n_frames, n_e))
    return Sim(frames, a, b, x, g)


@pytest.fixture(scope="module")
def sim():
    return _simulate(0)


@pytest.fixture(scope="module")
def gain_fit(sim):
    return bayesmix.fit_map(sim.frames, sim.a, sim.b, background="constant", gain=True)


def _cube(frames):
    """The N_FRAMES spectra as an (E, H, W) spectrum image: pixel (i, j) holds frame i*W + j."""
    return np.ascontiguousarray(np.moveaxis(frames.reshape(*MAP_SHAPE, -1), -1, 0))


# --- 1. the centred gain likelihood ----------------------------------------------------------


def _tree(tree, dtype):
    return jax.tree.map(lambda v: jnp.asarray(np.asarray(v, np.float64), dtype), tree)


def test_centred_gain_likelihood_is_the_plain_sum_up_to_a_constant_and_float32_safe():
    """``centred_total`` on ``centred_reference`` (the gain model's float32-safe form) against
    ``sum_i loglik(GainStats_i, x_i, sigma)``, at five points (x ~ each frame's posterior,
    u = log(sigma / sigma_ref) ~ its posterior sd 1/sqrt(2n)) of a 40 x 4000-pixel stack.

    float64: the two differ by a constant, so their differences between points agree up to the
    rounding of the plain total (|total| ~ 2.5e5, eps64 |total| ~ 6e-11), i.e. ~1e-10 of
    differences of O(1-10): asserted to 1e-9 relative.

    float32: each term of the centred form is computed from per-frame numbers in units of sigma:
    the misfit e = z - (b/a) v is a difference of vectors of size |z|, so its rounding is a few
    eps32 |z| and that of e2 = |e|^2 a few eps32 |z| |e|; the sigma terms are sse_ref expm1(-2u)
    and dof u, the log terms log a. The tolerance is 8 eps32 S with S the sum of these sizes
    over frames (a handful of roundings per term; measured error ~0.3 eps32 S). The points are
    rounded to float32 first, so the float64 reference is evaluated at the same (x, u). The
    naive float32 sum of ``loglik`` must miss by more than that bound (its granularity is
    eps32 |total| ~ 0.03), or the test would not tell the forms apart.
    """
    sim = _simulate(1, n_e=4000)
    res = bayesmix.fit_map(sim.frames, sim.a, sim.b, background="constant", gain=True)
    st = res.stats
    assert isinstance(st, bayesmix._stats.GainStats)
    st_c, ref, sse_ref = centred_reference(st, res.x, res.sigma)
    n_tot = float(np.sum(st.n))
    rng = np.random.default_rng(2)
    pts = []
    for _ in range(5):
        x = np.clip(res.mean + res.sd * rng.standard_normal(N_FRAMES), 0.01, 0.99)
        u = rng.standard_normal() / np.sqrt(2.0 * n_tot)
        pts.append((np.float32(x).astype(np.float64), float(np.float32(u))))

    with x64():
        plain = [float(jnp.sum(loglik(_tree(st, jnp.float64), jnp.asarray(x),
                                      jnp.asarray(res.sigma * np.exp(u)))))
                 for x, u in pts]  # fmt: skip
        cent = [float(centred_total(_tree(st_c, jnp.float64), jnp.asarray(x), jnp.asarray(u),
                                    _tree(ref, jnp.float64), sse_ref, res.sigma))
                for x, u in pts]  # fmt: skip
        sizes = []
        for x, u in pts:
            a, _, e2 = (np.asarray(v) for v in gain_terms(jnp.asarray(x), _tree(st_c, jnp.float64)))
            z = np.linalg.norm(np.asarray(st_c.z), axis=1)
            sizes.append(
                np.sum(z * np.sqrt(e2) + e2 + ref[1] + np.abs(np.log(a)) + np.abs(ref[2]))
                + abs(sse_ref * np.expm1(-2.0 * u)) + float(np.sum(st_c.n)) * abs(u)
            )  # fmt: skip
    d_plain = np.subtract(plain, plain[0])[1:]
    d_cent = np.subtract(cent, cent[0])[1:]
    assert abs(plain[0]) > 1e5  # the plain total is large; its differences are O(1-10)
    np.testing.assert_allclose(d_cent, d_plain, rtol=1e-9, atol=1e-9)

    c32 = [float(centred_total(_tree(st_c, jnp.float32), jnp.asarray(x, jnp.float32),
                               jnp.float32(u), _tree(ref, jnp.float32), jnp.float32(sse_ref),
                               jnp.float32(res.sigma)))
           for x, u in pts]  # fmt: skip
    d32 = np.subtract(c32, c32[0])[1:]
    tol = 8.0 * EPS32 * max(sizes)
    assert tol < 0.05  # far below HMC's energy scale of 1
    np.testing.assert_allclose(d32, d_plain, rtol=0, atol=tol)
    naive = [float(jnp.sum(loglik(_tree(st, jnp.float32), jnp.asarray(x, jnp.float32),
                                  jnp.float32(res.sigma * np.exp(u)))))
             for x, u in pts]  # fmt: skip
    assert np.max(np.abs(np.subtract(naive, naive[0])[1:] - d_plain)) > tol


# --- 2. NUTS against the fast path -----------------------------------------------------------


#: Bounds on z = (NUTS - exact) / (Monte Carlo error), per frame and over the N_FRAMES frames:
#: under z ~ N(0, 1), each fails with probability 1e-4 (Bonferroni over the frames for the max;
#: chi^2_N / N for the mean square).
Z_MAX = float(sps.norm.isf(1e-4 / (2 * N_FRAMES)))  # 4.71
Z2_MEAN = float(sps.chi2.isf(1e-4, N_FRAMES) / N_FRAMES)  # 2.05


def _z_ok(z, what):
    assert np.max(np.abs(z)) < Z_MAX, (what, z)
    assert np.mean(z**2) < Z2_MEAN, (what, z)


def _agree_within_mc_error(post, name, mean, sd):
    """NUTS' posterior mean and sd of ``name`` (per frame) against the fast path's.

    The fast path is exact given sigma-hat (grid quadrature / closed form); NUTS integrates sigma,
    whose relative sd 1/sqrt(2n) ~ 1.6% (n ~ 1900) moves each frame's mean by a small fraction of
    its sd and its sd by O(1/n): both far below the Monte Carlo error at ESS ~ 200-400. So
    z = (mean_nuts - mean) / (sd / sqrt(ESS_bulk)) is N(0, 1) per frame (ESS from arviz); for the
    sd, the Monte Carlo error of an sd estimate is sd / sqrt(2 ESS_sd) (normal tails; truncated
    posteriors have lighter ones). Bounds: ``Z_MAX``, ``Z2_MEAN``. (The estimated ESS has its own
    error of ~10% at this length, which the 1e-4 levels leave room for.)
    """
    draws = post[name]
    m = draws.mean(("chain", "draw")).values
    s = draws.std(("chain", "draw")).values
    ess_mean = az.ess(post[[name]], method="bulk")[name].values
    ess_sd = az.ess(post[[name]], method="sd")[name].values
    _z_ok((m - mean) / (sd / np.sqrt(ess_mean)), f"{name} mean")
    _z_ok((s - sd) / (sd / np.sqrt(2.0 * ess_sd)), f"{name} sd")


def _sigma_agrees(post, fit):
    """sigma: the fast path's is the mode of its marginal posterior (EM), NUTS gives its mean.
    For p(sigma | y) ~ sigma^-(n+1) exp(-S / 2 sigma^2) the mean exceeds the mode by
    ~1.25 sigma / n (~6e-4 relative here), on top of the Monte Carlo error sd / sqrt(ESS)."""
    draws = post["sigma"]
    ess = float(az.ess(post[["sigma"]], method="bulk")["sigma"])
    n = float(np.sum(fit.stats.n))
    mcse = float(draws.std()) / np.sqrt(ess)
    diff = float(draws.mean()) - fit.sigma
    assert abs(diff - 1.25 * fit.sigma / n) < Z_MAX * mcse, (diff, mcse)


def test_nuts_with_gain_and_constant_background_agrees_with_the_fast_path(sim, gain_fit):
    """NUTS on 40 simulated spectra (constant background and gain integrated out) against the
    fast path's exact posterior given sigma: x and the gain, mean and sd per frame, within the
    Monte Carlo error (see ``_agree_within_mc_error``); sigma as in ``_sigma_agrees``.

    The background's posterior mean: NUTS averages each draw's conditional mean
    bg + bg_sens (w - w_ls), w = (g x, g (1 - x)), whose Monte Carlo error is its sd over the
    draws / sqrt(ESS); the fast path plugs in E[g] E[x] for E[g x], which differs by
    bg_sens cov(g, x), here ~3e-5 against a Monte Carlo error of ~1e-3.
    """
    idata = bayesmix.sample(sim.frames, sim.a, sim.b, background="constant", gain=True, seed=1,
                            **NUTS)  # fmt: skip
    post = idata.posterior
    assert post["gain"].dims == ("chain", "draw", "frame")
    assert idata.attrs["gain"] == 1 and idata.attrs["background"] == "constant"
    _agree_within_mc_error(post, "x", gain_fit.mean, gain_fit.sd)
    _agree_within_mc_error(post, "gain", gain_fit.gain, gain_fit.gain_sd)
    _sigma_agrees(post, gain_fit)
    diag = bayesmix.diagnose(idata)
    assert diag.divergences == 0 and np.isfinite(diag.rhat_max)
    assert len(diag.to_dataframe()) == N_FRAMES + 1

    basis = basis_stats_from_stack(prepare(sim.frames, sim.a, sim.b),
                                   make_model(background="constant", gain=True))  # fmt: skip
    x, g = post["x"].values, post["gain"].values
    w = np.stack([g * x, g * (1.0 - x)], axis=-1)  # (chain, draw, frame, 2)
    c = basis.bg[..., 0] + np.einsum("kj,cdkj->cdk", basis.bg_sens[:, 0, :], w - basis.w)
    bg = idata.constant_data["background_mean"].values
    np.testing.assert_allclose(bg[:, 0], c.mean(axis=(0, 1)), rtol=1e-12, atol=1e-12)
    ess = az.ess(az.convert_to_dataset({"c": c}), method="bulk")["c"].values
    _z_ok((bg[:, 0] - gain_fit.background[:, 0]) / (c.std(axis=(0, 1)) / np.sqrt(ess)),
          "background")  # fmt: skip


def test_nuts_with_linear_background_without_gain_agrees_with_the_fast_path():
    """background='linear' (constant + slope) without gain: the likelihood in x is a Gaussian
    factor, so the fast path's posterior is a closed-form truncated normal; NUTS agrees within
    the Monte Carlo error (see ``_agree_within_mc_error``, ``_sigma_agrees``)."""
    s = _simulate(3, gain=False, background="linear")
    fit = bayesmix.fit_map(s.frames, s.a, s.b, background="linear")
    assert fit.gain is None and fit.background.shape == (N_FRAMES, 2)
    idata = bayesmix.sample(s.frames, s.a, s.b, background="linear", seed=2, **NUTS)
    assert "gain" not in idata.posterior
    assert idata.constant_data["background_mean"].shape == (N_FRAMES, 2)
    _agree_within_mc_error(idata.posterior, "x", fit.mean, fit.sd)
    _sigma_agrees(idata.posterior, fit)
    assert bayesmix.diagnose(idata).divergences == 0
