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
from bayesmix._likelihood import centred_reference, centred_total, loglik
from bayesmix._map import TRACES, fit_map_stats
from bayesmix._model import make_model
from bayesmix._precision import x64
from bayesmix._stats import GainStats, basis_stats_from_stack, reduce_stats
from bayesmix._writers import map_result_from_table
from bayesmix.cli import main

N_FRAMES = 40
N_E = 50
MAP_SHAPE = (5, 8)  # a 5 x 8 spectrum image holds the N_FRAMES spectra
NOISE = 0.05
EPS32 = float(np.finfo(np.float32).eps)
NUTS = {"num_chains": 2, "num_warmup": 200, "num_samples": 200, "progress": False}


class Sim(NamedTuple):
    frames: np.ndarray  # (N, E) float64
    a: np.ndarray
    b: np.ndarray
    x: np.ndarray
    g: np.ndarray


def _smooth(rng, n):
    """A random smooth positive spectrum: white noise through a Gaussian kernel of 4 points."""
    kernel = np.exp(-0.5 * (np.arange(-16, 17) / 4.0) ** 2)
    v = np.convolve(rng.standard_normal(n + 32), kernel, mode="valid")
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


@jax.jit
def _plain_total(stats, x, sigma):
    return jnp.sum(loglik(stats, x, sigma))


@jax.jit
def _centred_total(stats, x, u, ref, sse_ref):
    return centred_total(stats, x, u, ref, sse_ref)


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
    over frames (a handful of roundings per term; measured error ~0.05 eps32 S). The points are
    rounded to float32 first, so the float64 reference is evaluated at the same (x, u). The
    naive float32 sum of ``loglik`` must miss by more than that bound (its granularity is
    eps32 |total| ~ 0.03), or the test would not tell the forms apart.
    """
    sim = _simulate(1, n_e=4000)
    res = bayesmix.fit_map(sim.frames, sim.a, sim.b, background="constant", gain=True)
    st = res.stats
    assert isinstance(st, GainStats)
    st_c, ref, sse_ref = centred_reference(st, res.x, res.sigma)
    n_tot = float(np.sum(st.n))
    rng = np.random.default_rng(2)
    pts = []
    for _ in range(5):
        x = np.clip(res.mean + res.sd * rng.standard_normal(N_FRAMES), 0.01, 0.99)
        u = rng.standard_normal() / np.sqrt(2.0 * n_tot)
        pts.append((np.float32(x).astype(np.float64), float(np.float32(u))))

    with x64():
        st64, ref64 = _tree(st, jnp.float64), _tree(ref, jnp.float64)
        stc64 = _tree(st_c, jnp.float64)
        plain = [float(_plain_total(st64, jnp.asarray(x), jnp.asarray(res.sigma * np.exp(u))))
                 for x, u in pts]  # fmt: skip
        cent = [float(_centred_total(stc64, jnp.asarray(x), jnp.asarray(u), ref64,
                                     jnp.asarray(sse_ref)))
                for x, u in pts]  # fmt: skip
    d_plain = np.subtract(plain, plain[0])[1:]
    d_cent = np.subtract(cent, cent[0])[1:]
    assert abs(plain[0]) > 1e5  # the plain total is large; its differences are O(1-10)
    np.testing.assert_allclose(d_cent, d_plain, rtol=1e-9, atol=1e-9)

    # The sizes the float32 terms are rounded at (numpy, float64, from the scaled statistics).
    z, m0, m1 = (np.asarray(v) for v in (st_c.z, st_c.m0, st_c.m1))
    sizes = []
    for x, u in pts:
        v = m0 + x[:, None] * m1
        a = np.sum(v * v, axis=1)
        e2 = np.sum((z - (np.sum(v * z, axis=1) / a)[:, None] * v) ** 2, axis=1)
        per_frame = np.linalg.norm(z, axis=1) * np.sqrt(e2) + e2 + ref[1]
        per_frame += np.abs(np.log(a)) + np.abs(ref[2])
        sizes.append(np.sum(per_frame) + abs(sse_ref * np.expm1(-2.0 * u)) + n_tot * abs(u))
    tol = 8.0 * EPS32 * max(sizes)
    assert tol < 0.05  # far below HMC's energy scale of 1

    st32, ref32, stc32 = _tree(st, jnp.float32), _tree(ref, jnp.float32), _tree(st_c, jnp.float32)
    c32 = [float(_centred_total(stc32, jnp.asarray(x, jnp.float32), jnp.float32(u), ref32,
                                jnp.float32(sse_ref)))
           for x, u in pts]  # fmt: skip
    np.testing.assert_allclose(np.subtract(c32, c32[0])[1:], d_plain, rtol=0, atol=tol)
    naive = [float(_plain_total(st32, jnp.asarray(x, jnp.float32),
                                jnp.float32(res.sigma * np.exp(u))))
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
    draws / sqrt(ESS); the fast path takes the same linear map of E[w | y, sigma-hat] (checked
    exactly in ``test_fast_path_background_is_the_exact_posterior_mean_with_gain``).
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


@pytest.mark.slow  # the gain + constant background NUTS test above runs by default
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


def _exact_gain_posterior(stats, sigma, prior_loc=0.55, prior_scale=0.15):
    """Per frame, E[x], E[g] and E[g x] under the gain model given sigma, by the trapezoid rule
    on 20,001 points of [0, 1] (numpy/scipy only): p(x | y) ~ TN(x; 0.55, 0.15) exp(loglik),
    loglik = -log(a)/2 - e2 / 2 sigma^2 + log Phi(b / sigma sqrt(a)) (the design note), and
    E[g | x] = ghat + s phi(t) / Phi(t), ghat = b / a, s = sigma / sqrt(a), t = ghat / s."""
    from scipy.special import log_ndtr

    x = np.linspace(0.0, 1.0, 20001)[:, None]
    z, m0, m1 = (np.asarray(v)[None] for v in (stats.z, stats.m0, stats.m1))
    v = m0 + x[..., None] * m1
    a = np.sum(v * v, axis=-1)
    b = np.sum(v * z, axis=-1)
    e2 = np.sum((z - (b / a)[..., None] * v) ** 2, axis=-1)
    t = b / (sigma * np.sqrt(a))
    lp = -0.5 * np.log(a) - 0.5 * e2 / sigma**2 + log_ndtr(t)
    lp = lp - 0.5 * ((x - prior_loc) / prior_scale) ** 2
    w = np.exp(lp - lp.max(axis=0))
    w[[0, -1]] *= 0.5
    w /= w.sum(axis=0)
    g_x = b / a + sigma / np.sqrt(a) * np.exp(-0.5 * t * t - 0.5 * np.log(2 * np.pi) - log_ndtr(t))
    return np.sum(w * x, axis=0), np.sum(w * g_x, axis=0), np.sum(w * g_x * x, axis=0)


def test_fast_path_background_is_the_exact_posterior_mean_with_gain():
    """The background's posterior mean given sigma is linear in w = (g x, g (1 - x)):
    E[c | y] = bg + bg_sens (E[w | y] - w_ls) (the docstring of ``_fit`` and the schema's
    'posterior means'). Reference: ``_exact_gain_posterior``, which first reproduces the fast
    path's E[x] and E[g] (measured agreement ~2e-6 at noise 0.5); the background, a linear map
    (|bg_sens| ~ 1) of the same kind of integrals, must then agree to 1e-5 too. The noise is
    0.5 so that cov(g, x | y) is sizeable (~1e-2): plugging in E[g] E[x] for E[g x] (as before
    commit 092887b) misses by |bg_sens (cov, -cov)| ~ 3e-3."""
    s = _simulate(9, noise=0.5)
    res = bayesmix.fit_map(s.frames, s.a, s.b, background="constant", gain=True)
    ex, eg, egx = _exact_gain_posterior(res.stats, res.sigma)
    np.testing.assert_allclose(res.mean, ex, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.gain, eg, rtol=0, atol=1e-5)
    basis = basis_stats_from_stack(prepare(s.frames, s.a, s.b),
                                   make_model(background="constant", gain=True))  # fmt: skip
    assert np.max(np.abs(basis.bg_sens)) < 3.0
    ew = np.stack([egx, eg - egx], axis=1)
    exact = basis.bg + np.einsum("kpi,ki->kp", basis.bg_sens, ew - basis.w)
    np.testing.assert_allclose(res.background, exact, rtol=0, atol=1e-5)


# --- 3. the smallest case: the basis pass of the plain model ----------------------------------


def test_basis_statistics_of_the_plain_model_equal_the_plain_fit():
    """With no background and no gain, the basis statistics [A, B] reduce to the plain
    (xhat, rss, dd, n): the same least-squares problem solved two ways (QR of the basis vs the
    d = A - B projection), in float64 on float64 data. Their rounding differs by ~cond * eps64
    (cond of the 2 x 2 Gram ~ 20 here, so ~1e-14); 1e-10 relative is the bound asked for, every
    number of the fit (x, mean, sd, sigma, interval) follows from the statistics smoothly."""
    s = _simulate(4, gain=False, background="none")
    stack = prepare(s.frames, s.a, s.b)
    basis = basis_stats_from_stack(stack, make_model())
    assert basis.n_background == 0
    gram = np.stack([s.a, s.b]) @ np.stack([s.a, s.b]).T
    assert np.linalg.cond(gram) < 1e3
    res = fit_map_stats(basis, model=make_model())
    ref = bayesmix.fit_map(s.frames, s.a, s.b)
    for name in ("x", "mean", "sd"):
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=1e-10, atol=0)
    assert res.sigma == pytest.approx(ref.sigma, rel=1e-10)
    for lo_hi, ref_lo_hi in zip(res.interval(0.9), ref.interval(0.9), strict=True):
        np.testing.assert_allclose(lo_hi, ref_lo_hi, rtol=1e-10, atol=0)
    assert res.gain is None and res.background is None


# --- 4. tracing -------------------------------------------------------------------------------


def test_gain_fits_of_one_shape_do_not_retrace(sim, gain_fit):
    """``_map_core`` takes the statistics, the prior's parameters and sigma's prior as traced
    arguments: a second gain fit of a stack of the same shape, with other data and other priors
    of the same families (TruncatedNormal; Jeffreys vs InverseGamma, both (alpha, beta)), runs
    the compiled core again (bayesmix._map.TRACES['map'] unchanged)."""
    other = _simulate(5)
    before = TRACES["map"]
    first = bayesmix.fit_map(other.frames, other.a, other.b, background="constant", gain=True)
    assert TRACES["map"] - before <= 1  # compiled at most once (the fixture may have done it)
    before = TRACES["map"]
    second = bayesmix.fit_map(sim.frames[::-1].copy(), sim.a, sim.b, background="constant",
                              gain=True, prior=TruncatedNormal(0.4, 0.3),
                              sigma_prior=InverseGamma(2.0, 0.01))  # fmt: skip
    assert TRACES["map"] == before
    assert not np.allclose(first.mean, second.mean) and second.gain is not None


# --- 5. NaN pixels --------------------------------------------------------------------------


@pytest.mark.parametrize("gain", [False, True])
def test_nan_pixels_equal_the_mask_with_a_linear_background(gain):
    """A frame's NaN pixels are left out of it (its own Gram matrix, solved in float64), which
    must equal fitting with those pixels removed by ``mask=`` (the ramp keeps its values on the
    kept pixels in both). Every comparison is float64 rounding of one least-squares problem
    solved two ways (~cond * eps64, cond of the 4 x 4 Gram ~ 2e2), bounded by 1e-10 relative:

    - NaN in the same pixels of every frame vs ``mask=``: every frame's mean, sd, gain and
      background, and sigma, agree;
    - NaN in one frame only: given sigma, a frame's posterior depends on it only through its
      reduced statistics (FrameStats, or GainStats with gain) and its background through
      (bg, bg_sens, w), so those of that frame equal its ``mask=`` statistics, and every other
      frame's equal the full pass's;
    - NaN on top of a mask: both sets of pixels are left out.
    """
    s = _simulate(6, gain=gain, background="linear")
    model = make_model(background="linear", gain=gain)
    keep = np.ones(N_E, bool)
    keep[[0, 3, 17, 18, 40]] = False  # an end pixel (the ramp's -1) among them
    holes = s.frames.copy()
    holes[:, ~keep] = np.nan
    nan_fit = bayesmix.fit_map(holes, s.a, s.b, background="linear", gain=gain)
    mask_fit = bayesmix.fit_map(s.frames, s.a, s.b, mask=keep, background="linear", gain=gain)
    for name in ("x", "mean", "sd", "background") + (("gain", "gain_sd") if gain else ()):
        np.testing.assert_allclose(getattr(nan_fit, name), getattr(mask_fit, name), rtol=1e-10,
                                   atol=1e-12, err_msg=name)  # fmt: skip
    assert nan_fit.sigma == pytest.approx(mask_fit.sigma, rel=1e-10)
    np.testing.assert_array_equal(nan_fit.stats.n, keep.sum() - 2)  # pixels - background

    def stats(frames, mask=None):
        basis = basis_stats_from_stack(prepare(frames, s.a, s.b, mask), model)
        return basis, reduce_stats(basis, gain=gain)

    def same(got, want, rows):
        for name, g, w in zip(got._fields, got, want, strict=True):
            np.testing.assert_allclose(np.asarray(g)[rows], np.asarray(w)[rows], rtol=1e-10,
                                       atol=1e-12, err_msg=name)  # fmt: skip

    one = s.frames.copy()
    one[7, ~keep] = np.nan
    rest = np.arange(N_FRAMES) != 7
    (b_nan, r_nan), (b_mask, r_mask), (b_full, r_full) = (
        stats(one), stats(s.frames, keep), stats(s.frames)
    )  # fmt: skip
    same(r_nan, r_mask, 7)
    same(r_nan, r_full, rest)
    for field in ("bg", "bg_sens", "w"):
        got = getattr(b_nan, field)
        np.testing.assert_allclose(got[7], getattr(b_mask, field)[7], rtol=1e-10, atol=1e-12,
                                   err_msg=field)  # fmt: skip
        np.testing.assert_allclose(got[rest], getattr(b_full, field)[rest], rtol=1e-10,
                                   atol=1e-12, err_msg=field)  # fmt: skip

    keep2 = keep.copy()
    keep2[25] = False
    both = s.frames.copy()
    both[7, 25] = np.nan
    same(stats(both, keep)[1], stats(s.frames, keep2)[1], 7)


# --- 6. spectrum images ---------------------------------------------------------------------


def test_read_frames_of_a_spectrum_image(tmp_path, sim):
    """An (E, H, W) cube read with spectral_axis=0: each pixel's spectrum is a frame, in the
    map's row-major order (frame i*W + j is pixel (i, j)); the map shape is (H, W)."""
    cube = _cube(sim.frames)
    np.save(tmp_path / "cube.npy", cube)
    fr = bayesmix.read_frames(tmp_path / "cube.npy", spectral_axis=0)
    assert fr.data.shape == (N_FRAMES, N_E) and fr.map_shape == MAP_SHAPE
    np.testing.assert_array_equal(fr.data, sim.frames)
    i, j = 3, 5
    np.testing.assert_array_equal(fr.data[i * MAP_SHAPE[1] + j], cube[:, i, j])
    np.save(tmp_path / "last.npy", np.moveaxis(cube, 0, -1))
    last = bayesmix.read_frames(tmp_path / "last.npy", spectral_axis=-1)
    np.testing.assert_array_equal(last.data, fr.data)
    assert last.map_shape == MAP_SHAPE


def test_fit_of_a_spectrum_image_on_either_axis_and_its_maps(sim, gain_fit):
    """fit_map on the cube (E, H, W) with spectral_axis=0 and on the moved cube (H, W, E) with
    -1 see the same frames in the same order, so the same numbers bit for bit; and they are the
    fit of the flat (N, E) stack. ``to_xarray`` lays them out as (y, x) maps."""
    cube = _cube(sim.frames)
    kw = {"background": "constant", "gain": True}
    first = bayesmix.fit_map(cube, sim.a, sim.b, spectral_axis=0, **kw)
    last = bayesmix.fit_map(np.moveaxis(cube, 0, -1), sim.a, sim.b, spectral_axis=-1, **kw)
    assert first.map_shape == last.map_shape == MAP_SHAPE
    for name in ("x", "mean", "sd", "gain", "gain_sd", "background"):
        np.testing.assert_array_equal(getattr(first, name), getattr(last, name))
        np.testing.assert_array_equal(getattr(first, name), getattr(gain_fit, name))
    assert first.sigma == last.sigma == gain_fit.sigma
    ds = first.to_xarray()
    assert ds["mean"].dims == ("y", "x") and ds["mean"].shape == MAP_SHAPE
    assert "y_index" not in ds and "frame" in ds
    for i, j in [(0, 0), (0, 7), (3, 5), (4, 7)]:
        k = i * MAP_SHAPE[1] + j  # the frame holding cube[:, i, j]
        np.testing.assert_array_equal(sim.frames[k], cube[:, i, j])
        assert ds["mean"].values[i, j] == first.mean[k]
        assert ds["gain"].values[i, j] == first.gain[k]
        assert ds["frame"].values[i, j] == k
    df = first.to_dataframe()
    np.testing.assert_array_equal(df["y_index"] * MAP_SHAPE[1] + df["x_index"], np.arange(N_FRAMES))


@pytest.mark.parametrize("axis", [3, -4])
def test_bad_spectral_axis_names_the_range(tmp_path, sim, axis):
    """A spectral axis outside the cube's 3 axes is a ValueError naming the allowed range, from
    fit_map, sample and read_frames alike (before any work)."""
    cube = _cube(sim.frames)
    np.save(tmp_path / "cube.npy", cube)
    msg = r"spectral_axis -?\d is out of range .*use 0 to 2, or -1 for the last"
    with pytest.raises(ValueError, match=msg):
        bayesmix.fit_map(cube, sim.a, sim.b, spectral_axis=axis)
    with pytest.raises(ValueError, match=msg):
        bayesmix.sample(cube, sim.a, sim.b, spectral_axis=axis, gain=True, progress=False)
    with pytest.raises(ValueError, match=msg):
        bayesmix.read_frames(tmp_path / "cube.npy", spectral_axis=axis)
    with pytest.raises(ValueError, match="spectral points but axis 1"):
        bayesmix.fit_map(cube, sim.a, sim.b, spectral_axis=1)


# --- 7. results files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_fit(sim):
    """A spectrum-image fit with a linear background (2 terms) and gain."""
    return bayesmix.fit_map(_cube(sim.frames), sim.a, sim.b, spectral_axis=0,
                            background="linear", gain=True)  # fmt: skip


@pytest.mark.parametrize("ext", ["csv", "parquet", "nc"])
def test_results_round_trip_with_gain_and_background(tmp_path, image_fit, ext):
    """write_results / read_results / map_result_from_table on a gain + linear-background fit:
    every column comes back exactly (CSV with 17 significant digits, Parquet and netCDF in
    binary float64), and the rebuilt MapResult recomputes the same intervals from the
    statistics columns (z, m0, m1, rss, n_pixels) and the recorded sigma, prior and model."""
    path = bayesmix.write_results(image_fit, tmp_path / f"r.{ext}")
    df = bayesmix.read_results(path)
    want = image_fit.to_dataframe()
    for col in ("q05", "q95", "gain", "gain_sd", "background_0", "background_1", "y_index",
                "x_index", "z_a", "m1_b", "n_pixels"):  # fmt: skip
        np.testing.assert_array_equal(df[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    back = map_result_from_table(df)
    assert back.model.gain and back.model.background == "linear" and back.n_background == 2
    assert back.map_shape == MAP_SHAPE and back.sigma == image_fit.sigma
    for got, exp in zip(back.interval(0.9), image_fit.interval(0.9), strict=True):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(back.gain, image_fit.gain)
    np.testing.assert_array_equal(back.background, image_fit.background)
    assert back.to_dataframe().equals(want)


def test_report_of_a_spectrum_image_has_maps(tmp_path, image_fit):
    """The report of a spectrum-image fit opens with a 'Maps' section (weight, sd, gain, R^2 as
    images); a fit of plain frames has none."""
    html = bayesmix.report(image_fit, tmp_path / "r.html").read_text()
    assert "<h2>Maps</h2>" in html and html.index("<h2>Maps</h2>") < html.index("<h2>Summary")
    s = _simulate(8, gain=False, background="none")
    plain = bayesmix.report(bayesmix.fit_map(s.frames, s.a, s.b), tmp_path / "p.html")
    assert "<h2>Maps</h2>" not in plain.read_text()


# --- 8. the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory, sim):
    """CUBE.npy (E, H, W), A.npy, B.npy of the module's simulation."""
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "CUBE.npy", _cube(sim.frames))
    np.save(d / "A.npy", sim.a)
    np.save(d / "B.npy", sim.b)
    return d


def _cli_fit(d, out, *extra):
    return ["fit", str(d / "CUBE.npy"), "--ref-a", str(d / "A.npy"), "--ref-b", str(d / "B.npy"),
            "--background", "linear", "--gain", "--spectral-axis", "0", "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def test_cli_fits_a_spectrum_image_with_background_and_gain(tmp_path, cli_dir, image_fit):
    """``bayesmix fit CUBE.npy ... --background linear --gain --spectral-axis 0`` writes the
    per-pixel table with the gain, both background terms and the map coordinates; its numbers
    are the library's fit of the same cube (CSV keeps 17 digits: exact)."""
    out = tmp_path / "r.csv"
    assert main(_cli_fit(cli_dir, out)) == 0
    df = bayesmix.read_results(out)
    for col in ("gain", "gain_sd", "background_0", "background_1", "y_index", "x_index"):
        assert col in df.columns, col
    assert "background_2" not in df.columns and len(df) == N_FRAMES
    assert df.attrs["background"] == "linear" and df.attrs["gain"] == 1
    np.testing.assert_array_equal(df["y_index"], np.repeat(np.arange(5), 8))
    np.testing.assert_array_equal(df["x_index"], np.tile(np.arange(8), 5))
    for col in ("mean", "sd", "gain", "background_1"):
        want = image_fit.to_dataframe()[col].to_numpy()
        np.testing.assert_array_equal(df[col].to_numpy(), want, err_msg=col)
    assert not (tmp_path / "r.csv.parts").exists()


def test_cli_bad_background_is_one_line_with_exit_2(tmp_path, cli_dir, capsys):
    """An unknown background name (and no such file) is a user error: status 2, one line on
    stderr naming the allowed kinds; nothing is written."""
    argv = _cli_fit(cli_dir, tmp_path / "r.csv")
    argv[argv.index("linear")] = "cubic"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesmix: error: ") and err.count("\n") == 1, err
    assert "--background must be one of none, constant, linear" in err and "'cubic'" in err
    assert not (tmp_path / "r.csv").exists()


def test_cli_resume_with_a_background_model_gives_the_same_file(tmp_path, cli_dir, monkeypatch):
    """A run with --checkpoint 7 (6 chunks) interrupted in its third chunk (Ctrl-C, raised from
    the statistics pass) leaves two chunks in OUT.parts/; without --resume that is an error;
    with --resume only the 4 missing chunks are computed and the file is byte for byte that of
    an uninterrupted run."""
    import bayesmix._runs as runs

    full = tmp_path / "full.csv"
    assert main(_cli_fit(cli_dir, full, "--checkpoint", "7")) == 0
    real = runs.basis_stats_from_stack
    calls = {"n": 0, "fail_at": 3}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "basis_stats_from_stack", flaky)
    out = tmp_path / "r.csv"
    work = tmp_path / "r.csv.parts"
    assert main(_cli_fit(cli_dir, out, "--checkpoint", "7")) == 130
    assert not out.exists()
    assert sorted(p.name for p in work.glob("chunk-*.npz")) == [
        "chunk-000000000000.npz", "chunk-000000000007.npz"
    ]  # fmt: skip
    assert main(_cli_fit(cli_dir, out, "--checkpoint", "7")) == 2  # leftover, no --resume
    calls.update(n=0, fail_at=-1)
    assert main(_cli_fit(cli_dir, out, "--checkpoint", "7", "--resume")) == 0
    assert calls["n"] == 4  # chunks 14, 21, 28, 35: the saved two are not recomputed
    assert out.read_bytes() == full.read_bytes()
    assert not work.exists()


# --- 9. dask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(7, N_E), (13, 25)])
def test_dask_gain_fit_equals_numpy(sim, gain_fit, chunks):
    """A dask array (threads scheduler) of the same frames gives the same statistics per frame
    (each frame's row is reduced the same way whatever the blocks; split pixel blocks are
    rechunked into whole frames), hence the same fit bit for bit."""
    import dask
    import dask.array as da

    with dask.config.set(scheduler="threads"):
        res = bayesmix.fit_map(da.from_array(sim.frames, chunks=chunks), sim.a, sim.b,
                               background="constant", gain=True)  # fmt: skip
    for name in ("x", "mean", "sd", "gain", "gain_sd", "background"):
        np.testing.assert_array_equal(getattr(res, name), getattr(gain_fit, name), err_msg=name)
    assert res.sigma == gain_fit.sigma


# --- 10. option errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma_method": "joint", "gain": True},
         "sigma_method='joint' is not available with gain=True"),
        ({"gain": "yes"}, "gain must be True or False, got 'yes'"),
        ({"gain": 1}, "gain must be True or False, got 1"),
        ({"background": "quadratic"},
         r"background must be one of \('none', 'constant', 'linear'\).*got 'quadratic'"),
        ({"background": np.ones((2, N_E - 1))},
         r"background basis images must have the frame shape \(50,\), got \(49,\)"),
        ({"background": np.ones(N_E)}, r"shape \(P, \*S\) with P >= 1.*basis\[None\]"),
    ],
    ids=["joint-gain", "gain-yes", "gain-int", "quadratic", "basis-shape", "basis-no-P"],
)  # fmt: skip
def test_bad_model_options_raise(sim, kwargs, match):
    """Model options are checked (ValueError naming the allowed values) before the fit."""
    with pytest.raises(ValueError, match=match) as info:
        bayesmix.fit_map(sim.frames, sim.a, sim.b, **kwargs)
    if "quadratic" in str(info.value):
        assert all(name in str(info.value) for name in ("none", "constant", "linear"))


def test_bad_model_options_raise_in_sample_and_on_statistics(sim):
    """The same checks guard sample() (before any statistics or compilation) and the
    statistics entry points: gain needs the basis statistics, not the plain FrameStats."""
    with pytest.raises(ValueError, match="gain must be True or False"):
        bayesmix.sample(sim.frames, sim.a, sim.b, gain="yes", progress=False)
    with pytest.raises(ValueError, match=r"background must be one of"):
        bayesmix.sample(sim.frames, sim.a, sim.b, background="quadratic", progress=False)
    st = bayesmix.frame_stats(sim.frames, sim.a, sim.b)
    with pytest.raises(ValueError, match="gain=True needs the statistics of the model's basis"):
        bayesmix.fit_map_stats(st, gain=True)
    with pytest.raises(ValueError, match=re.escape("sigma_method='joint'")):
        bayesmix.fit_map_stats(st, gain=True, sigma_method="joint")
