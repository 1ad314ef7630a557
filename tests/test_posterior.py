"""The exact per-frame posterior given sigma, against references that share no code with it.

Part 1, ``bayesmix._truncnorm``: moderate cases against ``scipy.stats.truncnorm``; extreme tails
(50, 500 and 5000 sd outside the bounds, narrow intervals far in a tail) against mpmath
quadrature and inversion at 50 digits; ``ndtri_log`` against ``scipy.special.log_ndtr`` and
mpmath; ``log_diff_ndtr`` against mpmath.

Part 2, ``bayesmix._posterior``: ``summary`` and ``quantiles`` for each prior family against the
unnormalised 1-D posterior ``prior(x) * exp(-dd (x - xhat)^2 / (2 sigma^2))`` integrated by
``scipy.integrate.quad``, its mode by ``scipy.optimize.minimize_scalar`` (polished on the analytic
gradient) and its quantiles by ``scipy.optimize.brentq`` on the quad CDF.

Part 3, ``posterior_quantiles`` (the unpadded public wrapper) against both.

All JAX code runs under ``jax.enable_x64(True)`` (scoped; the global configuration is untouched).
"""

from __future__ import annotations

import math
from functools import cache

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from conftest import scipy_logpdf
from quadrature import RefPosterior
from scipy import special, stats

from bayesmix import priors as P
from bayesmix._posterior import posterior_method, posterior_quantiles
from bayesmix._stats import FrameStats
from bayesmix._truncnorm import log_diff_ndtr, ndtri_log, tn_moments, tn_quantile

EPS = float(np.finfo(np.float64).eps)
QS = (0.001, 0.025, 0.25, 0.5, 0.75, 0.975, 0.999)

# One compilation per shape instead of one per eager primitive: much faster, same arithmetic.
_tn_moments = jax.jit(tn_moments)
_tn_quantile = jax.jit(tn_quantile)
_log_diff_ndtr = jax.jit(log_diff_ndtr)
_ndtri_log = jax.jit(ndtri_log)


def _lib_tn(m, s, lo, hi, qs=QS):
    """(mean, sd, quantiles) from bayesmix, float64, as numpy."""
    with jax.enable_x64(True):
        m, s, lo, hi = (jnp.asarray(v, jnp.float64) for v in (m, s, lo, hi))
        mean, sd = _tn_moments(m, s, lo, hi)
        col = (v[..., None] for v in (m, s, lo, hi))
        q = _tn_quantile(jnp.asarray(qs, jnp.float64), *col)
        return np.asarray(mean), np.asarray(sd), np.asarray(q)


# ---------------------------------------------------------------------------------------------
# Part 1a: moderate truncated normals against scipy.stats.truncnorm
# ---------------------------------------------------------------------------------------------


def _moderate_cases():
    cases = []
    for lo, hi in ((0.0, 1.0), (0.2, 0.9)):
        for s in (0.02, 0.1, 0.3, 1.0, 3.0):
            # inside, near each bound, on each bound, and 2-4 sd outside on either side
            ms = (0.5, lo + 0.05, hi - 0.01, lo, hi, lo - 0.2, hi + 0.1, lo - 3 * s, hi + 4 * s)
            cases += [(m, s, lo, hi) for m in ms]
    return np.array(cases)


def test_tn_moderate_cases_match_scipy():
    # Reference: scipy.stats.truncnorm (exact formulas, float64); checked against mpmath at
    # 50 digits while writing this test, scipy is within 3e-11 (relative) on all these cases.
    # The library is then held to 1e-9 relative (mean, sd and each quantile).
    c = _moderate_cases()
    m, s, lo, hi = c.T
    mean, sd, q = _lib_tn(m, s, lo, hi)
    ref = stats.truncnorm((lo - m) / s, (hi - m) / s, loc=m, scale=s)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.all(np.isfinite(q))
    np.testing.assert_allclose(mean, ref.mean(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(sd, ref.std(), rtol=1e-9, atol=0)
    qref = np.stack([ref.ppf(qq) for qq in QS], axis=-1)
    np.testing.assert_allclose(q, qref, rtol=1e-9, atol=0)
    # structural sanity: inside the bounds, quantiles non-decreasing
    assert np.all((q >= lo[:, None]) & (q <= hi[:, None]))
    assert np.all(np.diff(q, axis=-1) >= 0)


# ---------------------------------------------------------------------------------------------
# Part 1b: extreme tails against mpmath at 50 digits
# ---------------------------------------------------------------------------------------------


def _mp_tn_far(m, s, lo, hi, qs=QS):
    """Mean, sd and quantiles of Normal(m, s) on [lo, hi], m outside, by mpmath at 50 digits.

    In u = distance from the bound nearest m, in units of s, the density is exp(-(t u + u^2/2))
    on [0, w] (t = how many sd m lies outside, w = width in sd): moments by mp.quad split at
    k / t so that the exponential decay is resolved; quantiles by bisection on the exact CDF
    (Q(t) - Q(t + u)) / (Q(t) - Q(t + w)) with Q(y) = ncdf(-y).
    """
    with mp.workdps(50):
        m, s, lo, hi = (mp.mpf(v) for v in (m, s, lo, hi))
        a, b = (lo - m) / s, (hi - m) / s
        if a >= 0:  # m below lo: x = lo + s u
            near, sign, t = lo, 1, a
        else:
            assert b <= 0, "m must lie outside [lo, hi]"
            near, sign, t = hi, -1, -b  # m above hi: x = hi - s u
        w = b - a

        def f(u):
            return mp.exp(-(t * u + u * u / 2))

        scale = 1 / max(t, mp.mpf(1))
        pts = sorted({mp.mpf(0), w} | {k * scale for k in (1, 3, 10, 30, 100) if k * scale < w})
        z = mp.quad(f, pts)
        m1 = mp.quad(lambda u: u * f(u), pts) / z
        var = mp.quad(lambda u: (u - m1) ** 2 * f(u), pts) / z
        qt, qw = mp.ncdf(-t), mp.ncdf(-(t + w))
        quant = []
        for q in qs:
            qq = mp.mpf(q) if sign == 1 else 1 - mp.mpf(q)
            target = qt - qq * (qt - qw)
            u0, u1 = mp.mpf(0), w
            for _ in range(90):  # 2^-90 of the width: far below float64
                mid = (u0 + u1) / 2
                if mp.ncdf(-(t + mid)) > target:
                    u0 = mid
                else:
                    u1 = mid
            quant.append(float(near + sign * s * (u0 + u1) / 2))
        return float(near + sign * s * m1), float(s * mp.sqrt(var)), np.array(quant), float(t)


def _far_cases():
    """pytest params (m, s, lo, hi): m is t sd outside [0, 1], which is w sd wide; and a few more."""
    cases = []
    for t in (50, 500, 5000):
        # wide: 10 sd (the far bound is irrelevant); narrow: 25/t sd (the density decays by only
        # e^-25 across it); very narrow: 0.5/t sd (nearly flat across it)
        for label, w in (("wide", 10.0), ("narrow", 25.0 / t), ("flat", 0.5 / t)):
            s = 1.0 / w
            cases.append(pytest.param(-t * s, s, 0.0, 1.0, id=f"t{t}-{label}-below"))
            cases.append(pytest.param(1.0 + t * s, s, 0.0, 1.0, id=f"t{t}-{label}-above"))
    # a narrow interval far in the upper tail of N(0, 1), and intervals on either side of the
    # 22-sd switch of the implementation from exact formulas to tail formulas
    cases.append(pytest.param(0.0, 1.0, 30.0, 30.01, id="N01-on-[30,30.01]"))
    cases.append(pytest.param(0.0, 1.0, 21.0, 22.0, id="N01-on-[21,22]"))
    cases.append(pytest.param(0.0, 1.0, -24.0, -23.0, id="N01-on-[-24,-23]"))
    return cases


def _tail_tol(t):
    """Allowed error of the mean (in sd) and of the sd (relative), t sd outside the bounds.

    Up to 300 sd: exact, 2e-8. Below 22 sd the closed-form variance 1 + a ra - b rb - mu^2
    cancels in float64 (terms ~t^2, result ~1/t^2, the ratios ra, rb carrying eps t^2/2): a
    relative error ~1e-8 at the 22-sd switch to the tail formulas (bayesmix._truncnorm._TAIL,
    as its comment documents); beyond it the Mills-ratio series are exact to ~1e-15.
    Past 300 sd the implementation may use the exponential limit of the density, whose
    relative error is the first neglected Mills-ratio correction, ~1/t^2 (2/t^2 on the mean,
    3/t^2 on the sd): allow 5/t^2 there.
    """
    return 2e-8 if t < 300 else 5.0 / t**2


@pytest.mark.parametrize("m, s, lo, hi", _far_cases())
def test_tn_far_tails_match_mpmath(m, s, lo, hi):
    mean_ref, sd_ref, q_ref, t = _mp_tn_far(m, s, lo, hi)
    mean, sd, q = (np.asarray(v, float).ravel() for v in _lib_tn(m, s, lo, hi))
    assert np.isfinite(mean).all() and np.isfinite(sd).all() and np.isfinite(q).all()
    tol = _tail_tol(t)
    assert abs(mean[0] - mean_ref) <= tol * sd_ref, (mean[0] - mean_ref) / sd_ref
    assert abs(sd[0] / sd_ref - 1) <= tol, sd[0] / sd_ref - 1
    # Quantiles are inverted in log space, in every regime: exact up to the float64 resolution
    # of log Phi(-t) ~ -t^2/2, whose rounding eps t^2/2 moves z by eps t/2 (x by eps t s / 2);
    # 1e-9 sd plus 20x that floor.
    qtol = 1e-9 * sd_ref + 20 * EPS * t * s
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=qtol)
    assert np.all((q >= lo) & (q <= hi))


# ---------------------------------------------------------------------------------------------
# Part 1c: ndtri_log and log_diff_ndtr
# ---------------------------------------------------------------------------------------------

_LOG_PS = -np.logspace(-12, 5, 120)  # log p from -1e-12 (z ~ +7) to -1e5 (z ~ -447)


def test_ndtri_log_inverts_log_ndtr():
    # Round trip through scipy.special.log_ndtr (float64, within 6e-15 relative of mpmath over
    # this whole range, checked while writing this test). NB: jax.scipy.special.log_ndtr cannot serve as the
    # reference here: for z > ~5 (log p > -1e-6) it is itself off by up to 2e-5 relative.
    with jax.enable_x64(True):
        z = np.asarray(_ndtri_log(jnp.asarray(_LOG_PS)))
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(special.log_ndtr(z), _LOG_PS, rtol=1e-12, atol=0)
    assert np.all(np.diff(z) < 0)  # log p decreasing: z strictly decreasing


def _mp_ndtri_log(log_p):
    """z with log Phi(z) = log_p at 50 digits: bisection on mpmath's ncdf (no float64 start)."""
    with mp.workdps(50):
        lp = mp.mpf(log_p)
        lo, hi = mp.mpf(-1000), mp.mpf(40)
        for _ in range(120):
            mid = (lo + hi) / 2
            if mp.log(mp.ncdf(mid)) < lp:
                lo = mid
            else:
                hi = mid
        return float((lo + hi) / 2)


def test_ndtri_log_matches_mpmath():
    logs = _LOG_PS[::6]
    with jax.enable_x64(True):
        z = np.asarray(_ndtri_log(jnp.asarray(logs)))
    ref = np.array([_mp_ndtri_log(v) for v in logs])
    # The relative condition number (log p / z) dz/dlog p is <= ~1 except near z = 0 (log p =
    # -log 2; ~6 at the grid point closest to it); measured <= 3e-16. Allow 1e-13 relative
    # (+1e-15 absolute for z near 0).
    np.testing.assert_allclose(z, ref, rtol=1e-13, atol=1e-15)


def _mp_log_diff_ndtr(a, b):
    with mp.workdps(50):
        a, b = mp.mpf(a), mp.mpf(b)
        if a + b > 0:  # upper tail: Q(a) - Q(b), so that 50 digits resolve it
            a, b = -b, -a
        return float(mp.log(mp.ncdf(b) - mp.ncdf(a)))


@pytest.mark.parametrize(
    "a, b",
    [
        (-1.0, 2.0),
        (-0.5, 0.5),
        (-1e-3, 1e-3),
        (2.0, 2.001),
        (8.0, 9.0),
        (30.0, 30.5),
        (5.0, 1e3),
        (-5.0, 40.0),
        (-60.0, -1.0),
        (-20.0, -19.9),
        (-40.0, -39.0),
        (-30.0, -29.999),
        (-300.0, -299.99),
        (-1e3, -900.0),
        (-1e4, -9999.9),
        (-1e3, 1e3),
    ],
)
def test_log_diff_ndtr_matches_mpmath(a, b):
    # Reference: mpmath at 50 digits. Relative 1e-13 (absolute where the result is ~0).
    # The implementation takes log1mexp of the difference d of two log Phi values, so their
    # rounding, eps |log Phi|, is amplified by 1/d: very narrow intervals lose digits by design
    # (see the report). Every case here has eps |log Phi| / d < 4e-14 |result| (worst:
    # (2, 2.001)), so 1e-13 relative is a fair target.
    with jax.enable_x64(True):
        got = float(_log_diff_ndtr(jnp.float64(a), jnp.float64(b)))
    ref = _mp_log_diff_ndtr(a, b)
    assert math.isfinite(got)
    assert abs(got - ref) <= 1e-13 * max(abs(ref), 1.0), (got, ref)


# ---------------------------------------------------------------------------------------------
# Part 2: the per-frame posterior given sigma
# ---------------------------------------------------------------------------------------------

SIGMA = 0.2
SIGMA2 = SIGMA**2

# (xhat, dd / sigma^2): dd/sigma^2 is the likelihood precision of x (sd = its -1/2 power).
FRAMES = [
    (0.4, 1e6),  # narrow (sd 1e-3), interior
    (0.001, 1e6),  # narrow, one sd from the lower bound: the truncation matters
    (0.7, 10.0),  # wide (likelihood sd 0.32)
    (1.3, 10.0),  # wide, xhat above 1
    (-0.05, 1e6),  # narrow, xhat 50 sd below 0: mode on the lower bound
    (1.2, 1e4),  # xhat 20 sd above 1: mode on the upper bound
    (-0.5, 1e4),  # xhat 50 sd below 0 (a deep-tail truncated normal)
    (0.5, 0.1),  # nearly uninformative (likelihood sd 3.2): posterior ~ prior
    (0.55, 100.0),
    (0.97, 1e3),  # near the upper bound (beyond Uniform(0.2, 0.9)'s)
]

PRIORS = [
    pytest.param(P.TruncatedNormal(0.55, 0.15, 0.0, 1.0), id="TN(0.55,0.15)"),
    pytest.param(P.Uniform(0.0, 1.0), id="U(0,1)"),
    pytest.param(P.Uniform(0.2, 0.9), id="U(0.2,0.9)"),
    pytest.param(P.Beta(5.5, 4.5), id="Beta(5.5,4.5)"),
    pytest.param(P.Beta(1.0, 3.0), id="Beta(1,3)"),
    pytest.param(P.Beta(2.0, 1.0), id="Beta(2,1)"),
]


def _stats(frames):
    xhat = np.array([f[0] for f in frames], np.float64)
    dd = np.array([f[1] for f in frames], np.float64) * SIGMA2
    k = len(frames)
    # rss and n do not enter the posterior of x given sigma; any values do.
    return FrameStats(xhat=xhat, rss=np.full(k, 2.5), dd=dd, n=np.full(k, 400.0))


def _tols(prior):
    """(mean in sd, sd relative, quantile in sd) allowed against the quad reference.

    Truncated-normal family (TruncatedNormal, Uniform): closed forms, exact in float64; the
    reference (quad at epsrel 1e-11) agrees to 2e-11 sd on means, 2e-10 sd on quantiles and
    3e-9 on sds (the closed-form variance's float64 cancellation for the frame whose posterior
    sits 20 sd outside, see _tail_tol): 1e-7 sd / 1e-7 relative.
    Beta: trapezoid quadrature on a 2048-point grid over +-20 local widths (step h ~ 0.02 sd):
    mean and sd within 1e-4 (sd, relative; measured <= 2e-5); quantiles by linear interpolation
    of the grid CDF, error ~ h^2/8 |f'/f| ~ 1.5e-4 sd at 3 sd (measured <= 2.5e-4): 1e-3 sd.
    """
    return (1e-7, 1e-7, 1e-7) if not isinstance(prior, P.Beta) else (1e-4, 1e-4, 1e-3)


@cache
def _reference(prior, frames=tuple(FRAMES)):
    refs = [RefPosterior(prior, xh, lik) for xh, lik in frames]
    q = np.array([[r.quantile(qq) for qq in QS] for r in refs])
    return refs, q


# Jitted with the prior as a traced pytree, as the library calls them (bayesmix._map._map_core):
# the method is chosen by the prior's and the statistics' types at trace time.
@jax.jit
def _summary(st, sigma2, prior):
    return posterior_method(prior, st).summary(st, sigma2, prior)[:4]


@jax.jit
def _quantiles(st, sigma2, prior, qs):
    return posterior_method(prior, st).quantiles(st, sigma2, prior, qs)


@cache
def _library(prior, frames=tuple(FRAMES)):
    """summary and quantiles for `frames`, float64, as numpy."""
    st = _stats(frames)
    with jax.enable_x64(True):
        pt = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), prior)
        out = _summary(st, jnp.float64(SIGMA2), pt)
        q = _quantiles(st, jnp.float64(SIGMA2), pt, jnp.asarray(QS))
        return tuple(np.asarray(v) for v in out), np.asarray(q)


@pytest.mark.parametrize("prior", PRIORS)
def test_reference_log_prior_matches_prior_log_prob(prior):
    # The reference's hand-written log prior must equal prior.log_prob (and scipy.stats' logpdf)
    # up to an additive constant on the support.
    ref = RefPosterior(prior, 0.5, 1.0)
    lo, hi = prior.bounds
    x = np.linspace(lo, hi, 41)[1:-1]
    mine = np.array([ref.log_prior(v) for v in x])
    with jax.enable_x64(True):
        theirs = np.asarray(prior.log_prob(jnp.asarray(x)))
    for other in (theirs, scipy_logpdf(prior, x)):
        diff = other - mine
        np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("prior", PRIORS)
def test_summary_matches_quadrature(prior):
    (mode, mean, sd, at_bound), _ = _library(prior)
    refs, _ = _reference(prior)
    tol_mean, tol_sd, _ = _tols(prior)
    for i, r in enumerate(refs):
        # sanity of the reference itself: Brent's bounded search agrees with the polished mode
        # to its own resolution
        assert abs(r.mode_brent - r.mode) <= 1e-2 * r.sd + 1e-7 * abs(r.mode), i
        # Mode: the closed form (clip) and the 60-step Newton both converge to float64: within
        # 1e-9 sd, and exactly on the bound when the posterior's mode is there.
        if r.at_bound:
            assert mode[i] == r.mode, (i, mode[i], r.mode)
        else:
            assert abs(mode[i] - r.mode) <= 1e-9 * r.sd, (i, (mode[i] - r.mode) / r.sd)
        assert bool(at_bound[i]) == r.at_bound, (i, mode[i], r.mode)
        assert abs(mean[i] - r.mean) <= tol_mean * r.sd, (i, (mean[i] - r.mean) / r.sd)
        assert abs(sd[i] / r.sd - 1) <= tol_sd, (i, sd[i] / r.sd - 1)


@pytest.mark.parametrize("prior", PRIORS)
def test_quantiles_match_quadrature(prior):
    _, q = _library(prior)
    refs, q_ref = _reference(prior)
    _, _, tol_q = _tols(prior)
    sd_ref = np.array([r.sd for r in refs])
    assert q.shape == (len(FRAMES), len(QS))
    assert np.all(np.isfinite(q))
    err = np.abs(q - q_ref) / sd_ref[:, None]
    assert err.max() <= tol_q, (np.unravel_index(err.argmax(), err.shape), err.max())
    lo, hi = prior.bounds
    assert np.all((q >= lo) & (q <= hi))
    assert np.all(np.diff(q, axis=1) >= 0)


@pytest.mark.parametrize(
    "prior",
    [
        pytest.param(P.TruncatedNormal(0.55, 0.15, 0.0, 1.0), id="TN(0.55,0.15)"),
        pytest.param(P.Uniform(0.0, 1.0), id="U(0,1)"),
        pytest.param(P.Uniform(0.2, 0.9), id="U(0.2,0.9)"),
    ],
)
def test_summary_of_a_wide_frame_far_outside(prior):
    # A barely informative frame (likelihood sd 1 in x) whose xhat is 25 likelihood-sd below 0:
    # with a flat prior the posterior is N(-25, 1) on [0, 1], a truncated normal 25 sd into its
    # tail over an interval 1 sd wide (0.7 for U(0.2, 0.9)). Closed forms are exact here: same
    # tolerances as above against the quad reference.
    frames = ((-25.0, 1.0),)
    (mode, mean, sd, at_bound), q = _library(prior, frames)
    refs, q_ref = _reference(prior, frames)
    r = refs[0]
    tol_mean, tol_sd, tol_q = _tols(prior)
    assert mode[0] == r.mode and bool(at_bound[0]) == r.at_bound
    assert abs(mean[0] - r.mean) <= tol_mean * r.sd, (mean[0] - r.mean) / r.sd
    assert abs(sd[0] / r.sd - 1) <= tol_sd, sd[0] / r.sd - 1
    np.testing.assert_allclose(q[0], q_ref[0], rtol=0, atol=tol_q * r.sd)


# ---------------------------------------------------------------------------------------------
# Part 3: the public, unpadded wrapper
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", PRIORS)
def test_posterior_quantiles_public_wrapper(prior):
    frames = FRAMES[:5]  # 5 frames: padded to 16 inside, cut back to 5
    st = _stats(frames)
    st = st._replace(n=st.n.astype(np.int64))  # as frame_stats returns it
    out = posterior_quantiles(prior, st, SIGMA, QS)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out.shape == (len(frames), len(QS))
    # the library's x64 is scoped: the caller's default dtype is untouched
    assert jnp.zeros(1).dtype == jnp.float32
    # Same numbers as `quantiles` (_library uses sigma2 = SIGMA**2 too); jit vs eager may only
    # reassociate float64 operations: within 1e-9 sd.
    _, q_lib = _library(prior)
    refs, q_ref = _reference(prior)
    sd_ref = np.array([r.sd for r in refs[: len(frames)]])[:, None]
    np.testing.assert_array_less(np.abs(out - q_lib[: len(frames)]) / sd_ref, 1e-9)
    # and the quad reference, with the tolerance of the prior family (see _tols)
    _, _, tol_q = _tols(prior)
    np.testing.assert_array_less(np.abs(out - q_ref[: len(frames)]) / sd_ref, tol_q)
    # a scalar q gives one column
    one = posterior_quantiles(prior, st, SIGMA, 0.5)
    assert one.shape == (len(frames), 1)
    np.testing.assert_allclose(one[:, 0], out[:, QS.index(0.5)], rtol=0, atol=1e-15)
